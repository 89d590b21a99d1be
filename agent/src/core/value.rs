//! Attribute values as every signal records them: strings that are static,
//! owned or shared (interned), numbers, booleans and homogeneous arrays.

use std::borrow::Cow;
use std::sync::Arc;

/// A string that is static, owned, or shared with other spans (interned route
/// names): the last two avoid an allocation per request for repeated values.
#[derive(Clone, Debug, PartialEq)]
pub enum Str {
    Static(&'static str),
    Owned(String),
    Shared(Arc<str>),
}

impl Str {
    pub fn as_str(&self) -> &str {
        match self {
            Str::Static(s) => s,
            Str::Owned(s) => s,
            Str::Shared(s) => s,
        }
    }

    pub(crate) fn into_string(self) -> String {
        match self {
            Str::Static(s) => s.to_string(),
            Str::Owned(s) => s,
            Str::Shared(s) => s.to_string(),
        }
    }
}

impl From<&'static str> for Str {
    fn from(s: &'static str) -> Self {
        Str::Static(s)
    }
}

impl From<String> for Str {
    fn from(s: String) -> Self {
        Str::Owned(s)
    }
}

impl From<Arc<str>> for Str {
    fn from(s: Arc<str>) -> Self {
        Str::Shared(s)
    }
}

impl From<Cow<'static, str>> for Str {
    fn from(s: Cow<'static, str>) -> Self {
        match s {
            Cow::Borrowed(s) => Str::Static(s),
            Cow::Owned(s) => Str::Owned(s),
        }
    }
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(Str),
    I64(i64),
    F64(f64),
    Bool(bool),
    /// A homogeneous array, as OTLP and the OpenTelemetry API allow.
    Array(Array),
}

/// The element types an array attribute may hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    Str(Vec<Str>),
    I64(Vec<i64>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
}

impl From<&'static str> for Value {
    fn from(v: &'static str) -> Self {
        Value::Str(Str::Static(v))
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(Str::Owned(v))
    }
}

impl From<Arc<str>> for Value {
    fn from(v: Arc<str>) -> Self {
        Value::Str(Str::Shared(v))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::I64(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::F64(v)
    }
}

impl From<Str> for Value {
    fn from(v: Str) -> Self {
        Value::Str(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<Array> for Value {
    fn from(v: Array) -> Self {
        Value::Array(v)
    }
}

impl From<Vec<&'static str>> for Value {
    fn from(v: Vec<&'static str>) -> Self {
        Value::Array(Array::Str(v.into_iter().map(Str::Static).collect()))
    }
}

impl From<Vec<String>> for Value {
    fn from(v: Vec<String>) -> Self {
        Value::Array(Array::Str(v.into_iter().map(Str::Owned).collect()))
    }
}

impl From<Vec<Str>> for Value {
    fn from(v: Vec<Str>) -> Self {
        Value::Array(Array::Str(v))
    }
}

impl From<Vec<i64>> for Value {
    fn from(v: Vec<i64>) -> Self {
        Value::Array(Array::I64(v))
    }
}

impl From<Vec<f64>> for Value {
    fn from(v: Vec<f64>) -> Self {
        Value::Array(Array::F64(v))
    }
}

impl From<Vec<bool>> for Value {
    fn from(v: Vec<bool>) -> Self {
        Value::Array(Array::Bool(v))
    }
}

/// One attribute: a key and its value.
pub type Attribute = (Cow<'static, str>, Value);

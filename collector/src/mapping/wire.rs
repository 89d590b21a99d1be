//! The protobuf wire format, read in place: fields of a message as slices of the
//! request body, nothing allocated.
//!
//! Semantics follow prost's decoding of the same bytes: a singular field that appears
//! more than once takes its last value, and a singular message that appears more than
//! once is the merge of all of them (the caller walks every occurrence in order);
//! unknown fields, groups included, are skipped; a known field with the wrong wire
//! type, a truncated field or invalid UTF-8 in a string is an error.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Errors end the request; keeping their formatting out of line keeps the field
// reader, which runs for every field of every span, small enough to inline.
#[cold]
#[inline(never)]
fn err<T>(what: impl Into<String>) -> Result<T, WireError> {
    Err(WireError(what.into()))
}

#[cold]
#[inline(never)]
fn not_utf8<T>(field: &str) -> Result<T, WireError> {
    err(format!(
        "invalid string value in {field}: data is not UTF-8 encoded"
    ))
}

#[cold]
#[inline(never)]
fn wrong_type<T>(field: &str) -> Result<T, WireError> {
    err(format!("invalid wire type for {field}"))
}

/// One field's value as it is on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

impl<'a> Value<'a> {
    #[inline]
    pub fn bytes(self, field: &str) -> Result<&'a [u8], WireError> {
        match self {
            Value::Bytes(b) => Ok(b),
            _ => wrong_type(field),
        }
    }

    #[inline]
    pub fn str(self, field: &str) -> Result<&'a str, WireError> {
        let bytes = self.bytes(field)?;
        // Attribute keys and values are short and nearly always ASCII: a word-at-a-time
        // ASCII check is cheaper there than the general validation.
        if bytes.is_ascii() {
            // SAFETY: ASCII is valid UTF-8.
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).or_else(|_| not_utf8(field))
    }

    #[inline]
    pub fn varint(self, field: &str) -> Result<u64, WireError> {
        match self {
            Value::Varint(v) => Ok(v),
            _ => wrong_type(field),
        }
    }

    pub fn fixed32(self, field: &str) -> Result<u32, WireError> {
        match self {
            Value::Fixed32(v) => Ok(v),
            _ => wrong_type(field),
        }
    }

    pub fn fixed64(self, field: &str) -> Result<u64, WireError> {
        match self {
            Value::Fixed64(v) => Ok(v),
            _ => wrong_type(field),
        }
    }
}

/// The fields of one message, in wire order.
pub struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    pub fn new(buf: &'a [u8]) -> Fields<'a> {
        Fields { buf }
    }

    /// The next field, `None` at the end of the message.
    // Always inlined: returned through memory, the result cost a store-forwarding
    // stall in every caller's loop (a sixth of the attribute reader's time).
    #[inline(always)]
    pub fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>, WireError> {
        loop {
            if self.buf.is_empty() {
                return Ok(None);
            }
            let key = self.varint()?;
            let field = key >> 3;
            if field == 0 || field > u64::from(u32::MAX >> 3) {
                return err(format!("invalid field number {field}"));
            }
            let value = match key & 7 {
                0 => Value::Varint(self.varint()?),
                1 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().expect("8"))),
                2 => {
                    let len = self.varint()?;
                    let len = usize::try_from(len).or_else(|_| err("length out of range"))?;
                    Value::Bytes(self.take(len)?)
                }
                3 => {
                    self.skip_group(field)?;
                    continue;
                }
                5 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().expect("4"))),
                other => return err(format!("invalid wire type value: {other}")),
            };
            return Ok(Some((field as u32, value)));
        }
    }

    #[inline(always)]
    fn varint(&mut self) -> Result<u64, WireError> {
        // Tags, lengths of attributes and most enum values are one byte.
        if let Some((&b, rest)) = self.buf.split_first() {
            if b < 0x80 {
                self.buf = rest;
                return Ok(u64::from(b));
            }
        }
        self.varint_slow()
    }

    fn varint_slow(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some((&b, rest)) = self.buf.split_first() else {
                return err("buffer underflow");
            };
            self.buf = rest;
            if i == 9 && b > 1 {
                return err("invalid varint");
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        err("invalid varint")
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return err("buffer underflow");
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// Skips a (deprecated) group up to its matching end tag, as prost does for
    /// unknown fields.
    fn skip_group(&mut self, field: u64) -> Result<(), WireError> {
        let mut depth = vec![field];
        while let Some(&open) = depth.last() {
            if self.buf.is_empty() {
                return err("unexpected end of group");
            }
            let key = self.varint()?;
            let f = key >> 3;
            match key & 7 {
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.take(8)?;
                }
                2 => {
                    let len =
                        usize::try_from(self.varint()?).or_else(|_| err("length out of range"))?;
                    self.take(len)?;
                }
                3 => {
                    if depth.len() >= 100 {
                        return err("recursion limit reached");
                    }
                    depth.push(f);
                }
                4 => {
                    if f != open {
                        return err("unexpected end group tag");
                    }
                    depth.pop();
                }
                5 => {
                    self.take(4)?;
                }
                other => return err(format!("invalid wire type value: {other}")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn reads_what_prost_writes() {
        use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
        let kv = KeyValue {
            key: "k".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(-3)),
            }),
            ..Default::default()
        };
        let bytes = kv.encode_to_vec();
        let mut f = Fields::new(&bytes);
        let (n, key) = f.next_field().unwrap().unwrap();
        assert_eq!((n, key.str("key").unwrap()), (1, "k"));
        let (n, value) = f.next_field().unwrap().unwrap();
        assert_eq!(n, 2);
        let mut inner = Fields::new(value.bytes("value").unwrap());
        let (n, v) = inner.next_field().unwrap().unwrap();
        assert_eq!((n, v.varint("int").unwrap() as i64), (3, -3));
        assert_eq!(f.next_field().unwrap(), None);
    }

    #[test]
    fn rejects_truncation_and_bad_utf8_and_skips_groups() {
        assert!(Fields::new(&[0x0a, 5, b'a']).next_field().is_err());
        let bad = [0x0a, 1, 0xff];
        let (_, v) = Fields::new(&bad).next_field().unwrap().unwrap();
        assert!(v.str("name").is_err());
        // field 7 as a group holding a varint, then field 1 = 1
        let grouped = [0x3b, 0x08, 0x01, 0x3c, 0x08, 0x01];
        let mut f = Fields::new(&grouped);
        assert_eq!(f.next_field().unwrap(), Some((1, Value::Varint(1))));
        assert!(Fields::new(&[0x00]).next_field().is_err(), "field 0");
    }
}

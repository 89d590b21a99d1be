//! Spans recorded in the agent's own small structures (no SDK on the hot path):
//! a [`Span`] collects attributes while open and, when it ends, moves into the
//! export queue as one allocation.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::agent::Shared;
use crate::context::{Context, ContextGuard, SpanContext, SpanId, TraceId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub enum Status {
    #[default]
    Unset,
    Ok,
    Error(Cow<'static, str>),
}

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

pub(crate) type Attributes = Vec<(Cow<'static, str>, Value)>;

/// A finished (or finishing) span as it waits for export.
#[derive(Debug)]
pub(crate) struct SpanData {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub trace_state: Option<Arc<str>>,
    pub flags: u8,
    pub name: Str,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Attributes,
    pub status: Status,
}

pub(crate) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// An open span. It ends when [`Span::end`] is called or when it is dropped.
/// Unsampled spans carry a context (so propagation continues) but record nothing.
pub struct Span {
    context: Context,
    recording: Option<Recording>,
}

struct Recording {
    data: Box<SpanData>,
    started: Instant,
    shared: Arc<Shared>,
}

impl Span {
    pub(crate) fn start(
        shared: &Arc<Shared>,
        name: Str,
        kind: SpanKind,
        parent: Option<&Context>,
    ) -> Span {
        let parent_span = parent.and_then(|p| p.span);
        let trace_id = parent_span.map_or_else(TraceId::random, |p| p.trace_id);
        let sampled = shared.recording
            && shared
                .sampler
                .should_sample(parent_span.as_ref(), &trace_id);
        let span = SpanContext {
            trace_id,
            span_id: SpanId::random(),
            flags: if sampled { 1 } else { 0 },
            remote: false,
        };
        let context = Context {
            span: Some(span),
            trace_state: parent.and_then(|p| p.trace_state.clone()),
            baggage: parent.and_then(|p| p.baggage.clone()),
        };
        let recording = sampled.then(|| Recording {
            data: Box::new(SpanData {
                trace_id,
                span_id: span.span_id,
                parent_span_id: parent_span.map(|p| p.span_id),
                trace_state: context.trace_state.clone(),
                flags: span.flags,
                name,
                kind,
                start_unix_nanos: unix_nanos(SystemTime::now()),
                end_unix_nanos: 0,
                attributes: Vec::with_capacity(12),
                status: Status::Unset,
            }),
            started: Instant::now(),
            shared: shared.clone(),
        });
        Span { context, recording }
    }

    /// The context children of this span (and outgoing requests) should carry.
    pub fn context(&self) -> &Context {
        &self.context
    }

    pub fn trace_id(&self) -> TraceId {
        self.context.span.map(|s| s.trace_id).unwrap_or_default()
    }

    pub fn span_id(&self) -> SpanId {
        self.context.span.map(|s| s.span_id).unwrap_or_default()
    }

    /// False for unsampled spans: skip computing attributes nobody will see.
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    pub fn set_attribute(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<Value>) {
        if let Some(r) = &mut self.recording {
            r.data.attributes.push((key.into(), value.into()));
        }
    }

    pub fn set_status(&mut self, status: Status) {
        if let Some(r) = &mut self.recording {
            r.data.status = status;
        }
    }

    pub fn update_name(&mut self, name: impl Into<Str>) {
        if let Some(r) = &mut self.recording {
            r.data.name = name.into();
        }
    }

    /// Makes this span the current context for synchronous code.
    pub fn enter(&self) -> ContextGuard {
        self.context.enter()
    }

    pub fn end(mut self) {
        self.finish(Instant::now());
    }

    /// When a recording span started (monotonic), for callers that time the same
    /// interval themselves (the HTTP layer's RED duration).
    pub(crate) fn start_instant(&self) -> Option<Instant> {
        self.recording.as_ref().map(|r| r.started)
    }

    pub(crate) fn end_at(mut self, end: Instant) {
        self.finish(end);
    }

    fn finish(&mut self, end: Instant) {
        if let Some(r) = self.recording.take() {
            let mut data = r.data;
            // Wall-clock start plus a monotonic duration: immune to clock steps
            // while the span is open.
            let duration = end.saturating_duration_since(r.started);
            data.end_unix_nanos = data.start_unix_nanos + duration.as_nanos() as u64;
            // Queued boxed: a pointer moves, not the whole record.
            r.shared.spans.push(data);
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.finish(Instant::now());
    }
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Span")
            .field("context", &self.context)
            .field("recording", &self.recording.is_some())
            .finish()
    }
}

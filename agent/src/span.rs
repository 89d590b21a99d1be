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

pub(crate) type Attributes = Vec<Attribute>;

/// At most this many attributes, events and links per span (the
/// `OTEL_SPAN_*_COUNT_LIMIT` defaults); past it new ones are counted, not kept,
/// so a span in a loop cannot grow without bound.
pub(crate) const SPAN_ITEM_LIMIT: usize = 128;

/// Something that happened at one instant during a span.
#[derive(Debug)]
pub(crate) struct SpanEvent {
    pub name: Str,
    pub time_unix_nanos: u64,
    pub attributes: Attributes,
}

/// A causal relation to a span of another (or the same) trace.
#[derive(Debug)]
pub(crate) struct SpanLink {
    pub context: SpanContext,
    pub trace_state: Option<Arc<str>>,
    pub attributes: Attributes,
}

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
    pub events: Vec<SpanEvent>,
    pub links: Vec<SpanLink>,
    pub dropped_attributes: u32,
    pub dropped_events: u32,
    pub dropped_links: u32,
    pub status: Status,
}

/// Sets `key`, replacing an earlier value of the same key.
fn set_in(attributes: &mut Attributes, dropped: &mut u32, key: Cow<'static, str>, value: Value) {
    if let Some(slot) = attributes.iter_mut().find(|(k, _)| *k == key) {
        slot.1 = value;
    } else if attributes.len() < SPAN_ITEM_LIMIT {
        attributes.push((key, value));
    } else {
        *dropped += 1;
    }
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
        // Room for the HTTP layers' attribute sets without regrowing.
        Span::start_sized(shared, name, kind, parent, 12)
    }

    /// [`Span::start`] with room for `attributes` attributes (a `tracing`
    /// span knows how many fields it has).
    pub(crate) fn start_sized(
        shared: &Arc<Shared>,
        name: Str,
        kind: SpanKind,
        parent: Option<&Context>,
        attributes: usize,
    ) -> Span {
        if !shared.recording {
            // Disabled: downstream sees exactly what came in, so a disabled
            // service in the middle of a trace neither breaks nor unsamples it.
            return Span {
                context: parent.cloned().unwrap_or_default(),
                recording: None,
            };
        }
        let parent_span = parent.and_then(|p| p.span);
        let trace_id = parent_span.map_or_else(TraceId::random, |p| p.trace_id);
        let sampled = shared
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
                attributes: Vec::with_capacity(attributes),
                events: Vec::new(),
                links: Vec::new(),
                dropped_attributes: 0,
                dropped_events: 0,
                dropped_links: 0,
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

    /// Sets an attribute; a key set before gets the new value.
    pub fn set_attribute(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<Value>) {
        if let Some(r) = &mut self.recording {
            let d = &mut *r.data;
            set_in(
                &mut d.attributes,
                &mut d.dropped_attributes,
                key.into(),
                value.into(),
            );
        }
    }

    /// Appends an attribute whose key the caller knows is not set yet (the
    /// layers' fixed sets): no search for an earlier value.
    pub(crate) fn push_attribute(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(r) = &mut self.recording {
            r.data.attributes.push((Cow::Borrowed(key), value.into()));
        }
    }

    /// Records an event now.
    pub fn add_event(&mut self, name: impl Into<Str>, attributes: Vec<Attribute>) {
        if self.recording.is_some() {
            self.add_event_at(name, SystemTime::now(), attributes);
        }
    }

    /// Records an event that happened at `time`.
    pub fn add_event_at(
        &mut self,
        name: impl Into<Str>,
        time: SystemTime,
        attributes: Vec<Attribute>,
    ) {
        if let Some(r) = &mut self.recording {
            let d = &mut *r.data;
            if d.events.len() < SPAN_ITEM_LIMIT {
                d.events.push(SpanEvent {
                    name: name.into(),
                    time_unix_nanos: unix_nanos(time),
                    attributes,
                });
            } else {
                d.dropped_events += 1;
            }
        }
    }

    /// Links this span to another span (a batch's messages, a retried request);
    /// a context without a span is ignored.
    pub fn add_link(&mut self, context: &Context, attributes: Vec<Attribute>) {
        let (Some(r), Some(span)) = (&mut self.recording, context.span) else {
            return;
        };
        let d = &mut *r.data;
        if d.links.len() < SPAN_ITEM_LIMIT {
            d.links.push(SpanLink {
                context: span,
                trace_state: context.trace_state.clone(),
                attributes,
            });
        } else {
            d.dropped_links += 1;
        }
    }

    /// Records `error` as an `exception` event (`exception.type`,
    /// `exception.message`, per the semantic conventions). Like the
    /// OpenTelemetry API it leaves the status alone: call [`Span::set_status`]
    /// when the error fails the operation.
    pub fn record_error<E: std::error::Error + ?Sized>(&mut self, error: &E) {
        if self.recording.is_none() {
            return;
        }
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let _ = std::fmt::Write::write_fmt(&mut message, format_args!(": {cause}"));
            source = cause.source();
        }
        let mut attributes: Vec<Attribute> = Vec::with_capacity(2);
        let type_name = std::any::type_name::<E>();
        // A trait object's type name says nothing about the error.
        if !type_name.starts_with("dyn ") {
            attributes.push((Cow::Borrowed("exception.type"), Value::from(type_name)));
        }
        attributes.push((Cow::Borrowed("exception.message"), Value::from(message)));
        self.add_event("exception", attributes);
    }

    /// The status set so far; `None` when not recording.
    pub(crate) fn status(&self) -> Option<&Status> {
        self.recording.as_ref().map(|r| &r.data.status)
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

    /// Changes the kind chosen at start (a span whose kind is known only from
    /// its fields, as `otel.kind` on a `tracing` span).
    pub fn set_kind(&mut self, kind: SpanKind) {
        if let Some(r) = &mut self.recording {
            r.data.kind = kind;
        }
    }

    /// Moves the start time back (or forward), for spans describing work that
    /// began before the span object was made.
    pub fn set_start_time(&mut self, time: SystemTime) {
        if let Some(r) = &mut self.recording {
            let now = Instant::now();
            let wall = unix_nanos(SystemTime::now());
            let start = unix_nanos(time);
            r.data.start_unix_nanos = start;
            // Keep the monotonic reference consistent with the new start.
            r.started = if start <= wall {
                now.checked_sub(std::time::Duration::from_nanos(wall - start))
                    .unwrap_or(now)
            } else {
                now + std::time::Duration::from_nanos(start - wall)
            };
        }
    }

    /// Makes this span the current context for synchronous code.
    pub fn enter(&self) -> ContextGuard {
        self.context.enter()
    }

    pub fn end(mut self) {
        self.finish(Instant::now());
    }

    /// Ends the span at an explicit wall-clock time.
    pub fn end_with_timestamp(mut self, time: SystemTime) {
        if let Some(r) = self.recording.take() {
            let mut data = r.data;
            data.end_unix_nanos = unix_nanos(time).max(data.start_unix_nanos);
            r.shared.spans.push(data);
        }
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

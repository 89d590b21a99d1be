//! Spans recorded in the agent's own small structures (no SDK on the hot path):
//! a [`Span`] collects attributes while open and, when it ends, moves into the
//! export queue as one allocation.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::clock::unix_nanos;
use crate::context::{Context, ContextGuard, SpanContext, SpanId, TraceId};
use crate::core::span_data::{Attributes, SpanData, SpanEvent, SpanLink, SPAN_ITEM_LIMIT};
use crate::core::Shared;

// The value and record types live in the core (the export reads them too);
// `agent::span::*` keeps naming them.
pub use crate::core::span_data::{SpanKind, Status};
pub use crate::core::value::{Array, Attribute, Str, Value};

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

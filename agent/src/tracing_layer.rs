//! `tracing` spans (`#[instrument]`, `info_span!`, libraries' spans) as the
//! agent's own spans.
//!
//! A `tracing` span gets an agent [`Span`] when it is created, parented by the
//! enclosing `tracing` span or, without one, by the agent's current context (the
//! HTTP layer's SERVER span). Entering it makes its context the agent's current
//! context, so agent spans, outgoing requests and log lines inside it see it,
//! and closing it ends the span. The agent span is kept in the `tracing`
//! registry's extensions; nothing else is allocated per span beyond what a
//! recorded span needs, and an unsampled one records nothing.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context as LayerContext;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::context::{replace_current, Context};
use crate::core::log_event::{is_transport_target, on_agent_thread};
use crate::core::Shared;
use crate::span::{Attribute, Span, SpanKind, Status, Str, Value};

/// The `tracing_subscriber` layer turning `tracing` spans into OTLP spans.
/// [`crate::init`] installs it with the span filter; with
/// [`crate::AgentBuilder::start`], add [`crate::Agent::tracing_layer`] to your
/// own subscriber (with a filter of your choice:
/// `agent.tracing_layer().with_filter(EnvFilter::new("info"))`).
pub struct TracingLayer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) span_events: bool,
}

impl TracingLayer {
    /// `tracing` events inside a span also become events of that span.
    pub fn with_span_events(mut self, on: bool) -> TracingLayer {
        self.span_events = on;
        self
    }
}

/// What a `tracing` span carries for the agent.
struct Bridged {
    span: Span,
    /// `otel.status_description` may come before or after `otel.status_code`.
    status_description: Option<String>,
    /// `otel.status_code` was given: events no longer change the status.
    status_set: bool,
}

thread_local! {
    /// The bridged spans entered on this thread, each with the current context
    /// it replaced, restored on exit (entries and exits nest per thread, so the
    /// exit of a bridged span always finds it on top, without a registry lookup).
    static ENTERED: RefCell<Vec<(Id, Option<Context>)>> = const { RefCell::new(Vec::new()) };
}

fn parent_context<S>(attrs: &Attributes<'_>, ctx: &LayerContext<'_, S>) -> Option<Context>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if attrs.is_root() {
        return None;
    }
    match attrs.parent() {
        // Explicit parent: the nearest bridged span up its chain (some may be
        // filtered out), else whatever context it was created in.
        Some(parent) => ctx
            .span(parent)
            .and_then(|p| {
                p.scope().find_map(|s| {
                    s.extensions()
                        .get::<Bridged>()
                        .map(|b| b.span.context().clone())
                })
            })
            .or_else(Context::current),
        // Entering a bridged span makes it the current context, and so do the
        // agent's own spans: the current context is the innermost of both.
        None => Context::current(),
    }
}

fn kind_from(value: &str) -> Option<SpanKind> {
    const KINDS: [(&str, SpanKind); 5] = [
        ("server", SpanKind::Server),
        ("client", SpanKind::Client),
        ("producer", SpanKind::Producer),
        ("consumer", SpanKind::Consumer),
        ("internal", SpanKind::Internal),
    ];
    KINDS
        .iter()
        .find(|(name, _)| value.eq_ignore_ascii_case(name))
        .map(|(_, kind)| *kind)
}

/// Writes a `tracing` span's fields into its agent span, reading the fields the
/// ecosystem gives special meaning.
struct SpanFields<'a>(&'a mut Bridged);

impl SpanFields<'_> {
    fn special(&mut self, name: &str, value: &str) -> bool {
        let b = &mut *self.0;
        match name {
            "otel.name" => b.span.update_name(value.to_string()),
            "otel.kind" => {
                if let Some(kind) = kind_from(value) {
                    b.span.set_kind(kind);
                }
            }
            "otel.status_code" => {
                b.status_set = true;
                if value.eq_ignore_ascii_case("ok") {
                    b.span.set_status(Status::Ok);
                } else if value.eq_ignore_ascii_case("error") {
                    let message = b.status_description.clone().unwrap_or_default();
                    b.span.set_status(Status::Error(message.into()));
                } else {
                    b.span.set_status(Status::Unset);
                }
            }
            "otel.status_description" | "otel.status_message" => {
                b.status_description = Some(value.to_string());
                if let Some(Status::Error(_)) = b.span.status() {
                    b.span.set_status(Status::Error(value.to_string().into()));
                }
            }
            // A span recording its failure (`span.record("error", …)`).
            "error" => {
                if !b.status_set {
                    b.span.set_status(Status::Error(value.to_string().into()));
                }
                b.span.set_attribute("exception.message", value.to_string());
            }
            _ => return false,
        }
        true
    }

    fn set(&mut self, field: &Field, value: Value) {
        self.0.span.set_attribute(field.name(), value);
    }
}

impl Visit for SpanFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.special(field.name(), value) {
            self.set(field, Value::from(value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if !self.special(field.name(), &text) {
            self.set(field, Value::from(text));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, Value::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(v) => self.set(field, Value::I64(v)),
            Err(_) => self.set(field, Value::from(value.to_string())),
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, Value::F64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, Value::Bool(value));
    }
}

/// An event's message and fields, for a span event.
#[derive(Default)]
struct EventFields {
    message: String,
    error: Option<String>,
    attributes: Vec<Attribute>,
}

impl Visit for EventFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            name => {
                let text = format!("{value:?}");
                if name == "error" {
                    self.error = Some(text.clone());
                }
                self.attributes
                    .push((Cow::Borrowed(name), Value::from(text)));
            }
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            name => {
                if name == "error" {
                    self.error = Some(value.to_string());
                }
                self.attributes
                    .push((Cow::Borrowed(name), Value::from(value.to_string())));
            }
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.attributes
            .push((Cow::Borrowed(field.name()), Value::I64(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let value =
            i64::try_from(value).map_or_else(|_| Value::from(value.to_string()), Value::I64);
        self.attributes.push((Cow::Borrowed(field.name()), value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.attributes
            .push((Cow::Borrowed(field.name()), Value::F64(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.attributes
            .push((Cow::Borrowed(field.name()), Value::Bool(value)));
    }
}

impl<S> Layer<S> for TracingLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        // Spans of the exporter's own transport never become telemetry; the
        // transport crates' spans are left out on every thread, as their logs are.
        if on_agent_thread() || is_transport_target(attrs.metadata().target()) {
            return;
        }
        let Some(span_ref) = ctx.span(id) else {
            return;
        };
        let parent = parent_context(attrs, &ctx);
        let span = Span::start_sized(
            &self.shared,
            Str::Static(attrs.metadata().name()),
            SpanKind::Internal,
            parent.as_ref(),
            attrs.metadata().fields().len(),
        );
        let mut bridged = Bridged {
            span,
            status_description: None,
            status_set: false,
        };
        if bridged.span.is_recording() {
            attrs.record(&mut SpanFields(&mut bridged));
        }
        span_ref.extensions_mut().insert(bridged);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(b) = span.extensions_mut().get_mut::<Bridged>() {
                if b.span.is_recording() {
                    values.record(&mut SpanFields(b));
                }
            }
        }
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: LayerContext<'_, S>) {
        let Some(cause) = ctx.span(follows).and_then(|s| {
            s.extensions()
                .get::<Bridged>()
                .map(|b| b.span.context().clone())
        }) else {
            return;
        };
        if let Some(span) = ctx.span(id) {
            if let Some(b) = span.extensions_mut().get_mut::<Bridged>() {
                b.span.add_link(&cause, Vec::new());
            }
        }
    }

    fn on_enter(&self, id: &Id, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let context = span
            .extensions()
            .get::<Bridged>()
            .map(|b| b.span.context().clone());
        if let Some(context) = context {
            let previous = replace_current(Some(context));
            ENTERED.with(|e| e.borrow_mut().push((id.clone(), previous)));
        }
    }

    fn on_exit(&self, id: &Id, _ctx: LayerContext<'_, S>) {
        let previous = ENTERED.with(|e| {
            let mut entered = e.borrow_mut();
            let at = entered
                .iter()
                .rposition(|(entered_id, _)| entered_id == id)?;
            let (_, previous) = entered.remove(at);
            match entered.get_mut(at) {
                // Left out of order (guards dropped in another order): the span
                // entered after it now restores what this one replaced.
                Some(above) => {
                    above.1 = previous;
                    None
                }
                None => Some(previous),
            }
        });
        if let Some(previous) = previous {
            replace_current(previous);
        }
    }

    fn on_close(&self, id: Id, ctx: LayerContext<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            // Dropping the agent span ends it, at this instant.
            drop(span.extensions_mut().remove::<Bridged>());
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: LayerContext<'_, S>) {
        let level = *event.metadata().level();
        if !self.span_events && level != Level::ERROR {
            return;
        }
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        let Some(b) = extensions.get_mut::<Bridged>() else {
            return;
        };
        if !b.span.is_recording() {
            return;
        }
        let mut fields = EventFields::default();
        event.record(&mut fields);
        // An error logged inside a span (as `#[instrument(err)]` does) fails it,
        // unless the span set its status itself.
        if level == Level::ERROR && !b.status_set {
            let message = fields
                .error
                .clone()
                .unwrap_or_else(|| fields.message.clone());
            b.span.set_status(Status::Error(message.into()));
        }
        if self.span_events {
            let name = if fields.message.is_empty() {
                Str::Static(event.metadata().name())
            } else {
                Str::Owned(std::mem::take(&mut fields.message))
            };
            fields
                .attributes
                .push((Cow::Borrowed("level"), Value::from(level.as_str())));
            b.span.add_event(name, fields.attributes);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tracing::{info_span, Level};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::core::span_data::SpanData;
    use crate::{AgentBuilder, AgentGuard, Config, Sampler};

    /// An agent whose spans stay queued for the test to read (no export
    /// before an hour; the endpoint is never reached).
    fn agent(sampler: Sampler) -> AgentGuard {
        AgentBuilder::from_config(Config::default())
            .endpoint("http://127.0.0.1:9")
            .json_logs(false)
            .export_interval(Duration::from_secs(3600))
            .sampler(sampler)
            .start()
            .expect("agent starts")
    }

    fn finished(guard: &AgentGuard) -> Vec<SpanData> {
        let mut spans = Vec::new();
        guard.agent().shared.spans.swap(&mut spans);
        spans.into_iter().map(|s| *s).collect()
    }

    fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    #[test]
    fn nested_spans_keep_their_parents_fields_and_special_fields() {
        let guard = agent(Sampler::AlwaysOn);
        let subscriber = tracing_subscriber::registry().with(guard.agent().tracing_layer());
        tracing::subscriber::with_default(subscriber, || {
            let outer = info_span!("outer", otel.kind = "consumer", user = 7u64, ok = true);
            outer.in_scope(|| {
                let inner = info_span!(
                    "inner",
                    otel.name = "renamed",
                    otel.status_code = tracing::field::Empty,
                    otel.status_description = "bad input",
                    late = tracing::field::Empty,
                );
                inner.record("late", 1.5);
                inner.record("otel.status_code", "error");
                inner.in_scope(|| {
                    // The current context is the inner span.
                    let current = Context::current().and_then(|c| c.span);
                    assert!(current.is_some_and(|c| c.is_sampled()));
                    tracing::event!(Level::ERROR, "does not override the explicit status");
                });
            });
        });
        let spans = finished(&guard);
        assert_eq!(spans.len(), 2);
        let (inner, outer) = (&spans[0], &spans[1]);
        assert_eq!(outer.name.as_str(), "outer");
        assert_eq!(outer.kind, SpanKind::Consumer);
        assert_eq!(attr(outer, "user"), Some(&Value::I64(7)));
        assert_eq!(attr(outer, "ok"), Some(&Value::Bool(true)));
        assert_eq!(outer.parent_span_id, None);
        assert_eq!(inner.name.as_str(), "renamed");
        assert_eq!(inner.parent_span_id, Some(outer.span_id));
        assert_eq!(inner.trace_id, outer.trace_id);
        assert_eq!(attr(inner, "late"), Some(&Value::F64(1.5)));
        assert_eq!(inner.status, Status::Error("bad input".into()));
        assert!(attr(inner, "otel.name").is_none());
    }

    #[test]
    fn an_error_event_fails_its_span_and_events_can_be_recorded() {
        let guard = agent(Sampler::AlwaysOn);
        let layer = guard.agent().tracing_layer().with_span_events(true);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            info_span!("charge").in_scope(|| {
                tracing::info!(amount = 3, "charging");
                tracing::error!(error = "card declined", "charge failed");
            });
        });
        let spans = finished(&guard);
        assert_eq!(spans[0].status, Status::Error("card declined".into()));
        let names: Vec<&str> = spans[0].events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["charging", "charge failed"]);
    }

    #[test]
    fn unsampled_spans_record_nothing_but_pass_their_trace_on() {
        let guard = agent(Sampler::AlwaysOff);
        let subscriber = tracing_subscriber::registry().with(guard.agent().tracing_layer());
        let (outer_trace, inner_trace) = tracing::subscriber::with_default(subscriber, || {
            info_span!("outer").in_scope(|| {
                let outer = Context::current().and_then(|c| c.span).expect("outer ids");
                let inner = info_span!("inner")
                    .in_scope(|| Context::current().and_then(|c| c.span).expect("inner ids"));
                assert!(!outer.is_sampled() && !inner.is_sampled());
                (outer.trace_id, inner.trace_id)
            })
        });
        assert_eq!(outer_trace, inner_trace);
        assert!(finished(&guard).is_empty());
        // Leaving the spans restored the empty context.
        assert_eq!(Context::current(), None);
    }

    #[test]
    fn spans_left_out_of_order_still_restore_the_context() {
        let guard = agent(Sampler::AlwaysOn);
        let subscriber = tracing_subscriber::registry().with(guard.agent().tracing_layer());
        tracing::subscriber::with_default(subscriber, || {
            let first = info_span!("first").entered();
            let first_id = Context::current().and_then(|c| c.span_id());
            let second = info_span!("second").entered();
            drop(first);
            // The innermost entered span is still current.
            let current = Context::current().and_then(|c| c.span_id());
            assert!(current.is_some() && current != first_id);
            drop(second);
            assert_eq!(Context::current(), None);
        });
    }

    #[test]
    fn kinds_are_read_case_insensitively() {
        assert_eq!(kind_from("CLIENT"), Some(SpanKind::Client));
        assert_eq!(kind_from("producer"), Some(SpanKind::Producer));
        assert_eq!(kind_from("sideways"), None);
    }
}

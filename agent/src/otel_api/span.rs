//! `opentelemetry::trace::Span` over an agent [`Span`](crate::Span).

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace as otel;

use super::{attributes, from_otel, register, to_otel, unregister, value};
use crate::context::current_raw;
use crate::span::{Span, SpanKind, Status};
use crate::Agent;

/// A span started through the OpenTelemetry API; it ends on `end()` or drop.
pub struct OtelSpan {
    span: Option<Span>,
    context: otel::SpanContext,
}

fn kind(kind: Option<otel::SpanKind>) -> SpanKind {
    match kind {
        Some(otel::SpanKind::Server) => SpanKind::Server,
        Some(otel::SpanKind::Client) => SpanKind::Client,
        Some(otel::SpanKind::Producer) => SpanKind::Producer,
        Some(otel::SpanKind::Consumer) => SpanKind::Consumer,
        _ => SpanKind::Internal,
    }
}

impl OtelSpan {
    pub(super) fn start(
        agent: &Agent,
        builder: otel::SpanBuilder,
        parent: Option<&crate::Context>,
    ) -> OtelSpan {
        let mut span = agent.start_span_with_parent(builder.name, kind(builder.span_kind), parent);
        if span.is_recording() {
            if let Some(start) = builder.start_time {
                span.set_start_time(start);
            }
            for kv in builder.attributes.unwrap_or_default() {
                span.set_attribute(kv.key.as_str().to_string(), value(kv.value));
            }
            for event in builder.events.unwrap_or_default() {
                span.add_event_at(event.name, event.timestamp, attributes(event.attributes));
            }
            for link in builder.links.unwrap_or_default() {
                span.add_link(&from_otel(&link.span_context), attributes(link.attributes));
            }
        }
        let context = to_otel(span.context());
        register(span.span_id(), current_raw().and_then(|c| c.span_id()));
        OtelSpan {
            span: Some(span),
            context,
        }
    }

    fn with(&mut self, f: impl FnOnce(&mut Span)) {
        if let Some(span) = &mut self.span {
            f(span);
        }
    }
}

impl otel::Span for OtelSpan {
    fn add_event_with_timestamp<T>(
        &mut self,
        name: T,
        timestamp: SystemTime,
        attrs: Vec<opentelemetry::KeyValue>,
    ) where
        T: Into<Cow<'static, str>>,
    {
        self.with(|s| s.add_event_at(name.into(), timestamp, attributes(attrs)));
    }

    fn span_context(&self) -> &otel::SpanContext {
        &self.context
    }

    fn is_recording(&self) -> bool {
        self.span.as_ref().is_some_and(Span::is_recording)
    }

    fn set_attribute(&mut self, attribute: opentelemetry::KeyValue) {
        self.with(|s| s.set_attribute(attribute.key.as_str().to_string(), value(attribute.value)));
    }

    /// As the API specifies: Ok is final, Unset never overrides.
    fn set_status(&mut self, status: otel::Status) {
        self.with(|s| {
            if s.status() == Some(&Status::Ok) {
                return;
            }
            match status {
                otel::Status::Ok => s.set_status(Status::Ok),
                otel::Status::Error { description } => s.set_status(Status::Error(description)),
                otel::Status::Unset => {}
            }
        });
    }

    fn update_name<T>(&mut self, new_name: T)
    where
        T: Into<Cow<'static, str>>,
    {
        self.with(|s| s.update_name(new_name.into()));
    }

    fn add_link(&mut self, span_context: otel::SpanContext, attrs: Vec<opentelemetry::KeyValue>) {
        self.with(|s| s.add_link(&from_otel(&span_context), attributes(attrs)));
    }

    fn end_with_timestamp(&mut self, timestamp: SystemTime) {
        if let Some(span) = self.span.take() {
            unregister(span.span_id());
            span.end_with_timestamp(timestamp);
        }
    }
}

impl Drop for OtelSpan {
    fn drop(&mut self) {
        if let Some(span) = self.span.take() {
            unregister(span.span_id());
            span.end();
        }
    }
}

//! PRODUCER / CONSUMER spans around message queues, with the trace context carried
//! in the message headers (any [`Injector`] / [`Extractor`]: a `HashMap`, HTTP
//! headers, or lapin's `FieldTable` with the `lapin` feature).

use crate::propagation::{Extractor, Injector};
use crate::span::{Span, SpanKind};
use crate::Agent;

/// What is being sent or received, for the `messaging.*` attributes.
#[derive(Clone, Copy, Debug)]
pub struct Destination<'a> {
    /// `messaging.system`: `rabbitmq`, `kafka`, …
    pub system: &'static str,
    /// `messaging.destination.name`: the exchange, queue or topic.
    pub name: &'a str,
}

impl Agent {
    /// Starts a PRODUCER span (child of the current context) named
    /// `publish {destination}` and writes its context into `headers`. End the
    /// span once the broker accepted the message.
    pub fn producer_span(&self, destination: Destination<'_>, headers: &mut impl Injector) -> Span {
        let mut span = self.start_span(format!("publish {}", destination.name), SpanKind::Producer);
        set_messaging(&mut span, destination, "send", "publish");
        self.inject(span.context(), headers);
        span
    }

    /// Starts a CONSUMER span named `process {destination}` whose parent is the
    /// context found in the message headers (a new trace when there is none).
    /// Run the handler inside it: `fut.with_context(span.context().clone())`.
    pub fn consumer_span(&self, destination: Destination<'_>, headers: &impl Extractor) -> Span {
        let parent = self.extract(headers);
        let mut span = self.start_span_with_parent(
            format!("process {}", destination.name),
            SpanKind::Consumer,
            parent.as_ref(),
        );
        set_messaging(&mut span, destination, "process", "process");
        span
    }
}

fn set_messaging(
    span: &mut Span,
    d: Destination<'_>,
    op_type: &'static str,
    op_name: &'static str,
) {
    if span.is_recording() {
        span.set_attribute("messaging.system", d.system);
        span.set_attribute("messaging.destination.name", d.name.to_string());
        span.set_attribute("messaging.operation.type", op_type);
        span.set_attribute("messaging.operation.name", op_name);
    }
}

//! `opentelemetry::propagation::TextMapPropagator` with the agent's own
//! propagators, so API users inject and extract exactly what the agent does.

use opentelemetry::propagation::{text_map_propagator::FieldIter, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;

use super::{from_otel, to_otel};
use crate::propagation::{Extractor, Injector, Propagators, BAGGAGE, TRACEPARENT, TRACESTATE};

#[derive(Debug)]
pub struct AgentPropagator {
    propagators: Propagators,
    fields: Vec<String>,
}

impl AgentPropagator {
    pub fn new(propagators: Propagators) -> AgentPropagator {
        let mut fields = Vec::new();
        if propagators.trace_context {
            fields.extend([TRACEPARENT.to_string(), TRACESTATE.to_string()]);
        }
        if propagators.baggage {
            fields.push(BAGGAGE.to_string());
        }
        AgentPropagator {
            propagators,
            fields,
        }
    }
}

struct In<'a>(&'a mut dyn opentelemetry::propagation::Injector);

impl Injector for In<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.set(key, value);
    }
}

struct Out<'a>(&'a dyn opentelemetry::propagation::Extractor);

impl Extractor for Out<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }
}

impl TextMapPropagator for AgentPropagator {
    /// The context's span; for a context without one (such as the API's empty
    /// current context inside an agent-instrumented handler), the agent's
    /// current context.
    fn inject_context(
        &self,
        cx: &opentelemetry::Context,
        injector: &mut dyn opentelemetry::propagation::Injector,
    ) {
        let span = cx.span().span_context().clone();
        let mut context = if span.is_valid() {
            from_otel(&span)
        } else {
            match crate::Context::current() {
                Some(c) => c,
                None => return,
            }
        };
        if context.baggage.is_none() {
            context.baggage = crate::Context::current().and_then(|c| c.baggage);
        }
        self.propagators.inject(&context, &mut In(injector));
    }

    /// A remote span context the API can parent on (baggage stays with the agent).
    fn extract_with_context(
        &self,
        cx: &opentelemetry::Context,
        extractor: &dyn opentelemetry::propagation::Extractor,
    ) -> opentelemetry::Context {
        match self.propagators.extract(&Out(extractor)) {
            Some(context) if context.span.is_some() => {
                cx.with_remote_span_context(to_otel(&context))
            }
            _ => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

//! The OpenTelemetry API over the agent's own structures (feature `otel-api`):
//! code and crates that call `opentelemetry::global::tracer(..)` record agent
//! spans, exported with everything else, in the same traces.
//!
//! Two "current contexts" exist side by side: the agent's (set by its layers,
//! `WithContext` and `Span::enter`) and `opentelemetry::Context::current()`.
//! They are joined so that the newer one wins:
//! - an OpenTelemetry span started without an explicit parent takes the agent's
//!   current context as parent unless the OpenTelemetry context holds a span
//!   started under that very agent context (i.e. is newer);
//! - the agent's `Context::current()` (agent spans, log lines, `tracing` spans,
//!   outgoing calls) sees an OpenTelemetry span made current through
//!   `opentelemetry::Context` by the same rule.
//!
//! A span context attached by other means (extracted and attached by hand) is
//! used by the agent only where it has no context of its own.

mod propagator;
mod span;

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::trace::{self as otel, TraceContextExt};

use crate::context::{Context, SpanContext, SpanId, TraceId};
use crate::Agent;

pub use propagator::AgentPropagator;
pub use span::OtelSpan;

/// `opentelemetry::trace::TracerProvider` over an agent.
#[derive(Clone)]
pub struct AgentTracerProvider {
    agent: Agent,
}

/// The tracer every scope gets: the agent records the spans (all under the
/// agent's instrumentation scope).
#[derive(Clone)]
pub struct AgentTracer {
    agent: Agent,
}

impl Agent {
    /// The OpenTelemetry API's tracer provider recording into this agent (what
    /// `init` installs globally with the `otel-api` feature).
    pub fn tracer_provider(&self) -> AgentTracerProvider {
        AgentTracerProvider {
            agent: self.clone(),
        }
    }

    /// The OpenTelemetry API's propagator using this agent's propagators.
    pub fn text_map_propagator(&self) -> AgentPropagator {
        AgentPropagator::new(self.shared.propagators)
    }
}

/// Makes `agent` the global tracer provider and propagator of the
/// OpenTelemetry API.
pub fn install(agent: &Agent) {
    bridge_current_context();
    opentelemetry::global::set_tracer_provider(agent.tracer_provider());
    opentelemetry::global::set_text_map_propagator(agent.text_map_propagator());
}

impl otel::TracerProvider for AgentTracerProvider {
    type Tracer = AgentTracer;

    fn tracer_with_scope(&self, _scope: opentelemetry::InstrumentationScope) -> AgentTracer {
        AgentTracer {
            agent: self.agent.clone(),
        }
    }
}

impl otel::Tracer for AgentTracer {
    type Span = OtelSpan;

    fn build_with_context(
        &self,
        builder: otel::SpanBuilder,
        parent_cx: &opentelemetry::Context,
    ) -> OtelSpan {
        let parent = parent_for(parent_cx);
        OtelSpan::start(&self.agent, builder, parent.as_ref())
    }
}

/// The parent of a new OpenTelemetry-API span: an explicitly given context's
/// span as is; for the implicit current one, the newer of it and the agent's.
fn parent_for(parent_cx: &opentelemetry::Context) -> Option<Context> {
    let given = parent_cx.span().span_context().clone();
    if !given.is_valid() {
        return Context::current();
    }
    let implicit = opentelemetry::Context::map_current(|cx| cx.span().span_context().span_id())
        == given.span_id();
    if implicit {
        return Context::current();
    }
    let mut context = from_otel(&given);
    // Baggage follows the agent's context: the API's own baggage is not bridged.
    context.baggage = crate::context::current_raw().and_then(|c| c.baggage);
    Some(context)
}

/// For the agent's `Context::current()`: `raw` (the agent's own current
/// context) or, when newer, the OpenTelemetry API's current span.
/// Makes the API's current span visible to the agent's `Context::current` (done
/// when an agent starts with this feature on, and by [`install`]).
pub(crate) fn bridge_current_context() {
    crate::context::set_foreign_current(crate::context::ForeignCurrent {
        context: resolve,
        span: resolve_span,
    });
}

pub(crate) fn resolve(raw: Option<Context>) -> Option<Context> {
    let Some(otel_span) = otel_current() else {
        return raw;
    };
    match &raw {
        Some(agent) if !otel_is_newer(&otel_span, agent) => raw,
        _ => {
            let mut context = from_otel(&otel_span);
            context.baggage = raw.and_then(|r| r.baggage);
            Some(context)
        }
    }
}

/// The ids alone, for the log hot path.
pub(crate) fn resolve_span(raw: Option<SpanContext>) -> Option<SpanContext> {
    let Some(otel_span) = otel_current() else {
        return raw;
    };
    match raw {
        Some(agent) if !otel_is_newer_than_span(&otel_span, &agent) => raw,
        _ => from_otel(&otel_span).span,
    }
}

fn otel_current() -> Option<otel::SpanContext> {
    opentelemetry::Context::map_current(|cx| {
        cx.has_active_span()
            .then(|| cx.span().span_context().clone())
            .filter(|s| s.is_valid())
    })
}

fn otel_is_newer(otel_span: &otel::SpanContext, agent: &Context) -> bool {
    match agent.span {
        Some(span) => otel_is_newer_than_span(otel_span, &span),
        None => true,
    }
}

/// Newer when it is the agent's span itself (nothing to choose) or a bridge
/// span started while `agent` was the agent's current context.
fn otel_is_newer_than_span(otel_span: &otel::SpanContext, agent: &SpanContext) -> bool {
    let otel_id = otel_span.span_id().to_bytes();
    if otel_id == agent.span_id.0 {
        return true;
    }
    started_under(otel_id) == Some(Some(agent.span_id.0))
}

/// Bridge spans alive now → the agent span that was current when each started.
/// Only API spans go in (not the agent's hot path), and each leaves at its end.
type StartedUnder = Mutex<HashMap<[u8; 8], Option<[u8; 8]>>>;

fn registry() -> &'static StartedUnder {
    static REGISTRY: OnceLock<StartedUnder> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn started_under(span_id: [u8; 8]) -> Option<Option<[u8; 8]>> {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&span_id)
        .copied()
}

pub(crate) fn register(span_id: SpanId, agent_current: Option<SpanId>) {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(span_id.0, agent_current.map(|s| s.0));
}

pub(crate) fn unregister(span_id: SpanId) {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&span_id.0);
}

pub(crate) fn from_otel(span: &otel::SpanContext) -> Context {
    let state = span.trace_state().header();
    Context {
        span: Some(SpanContext {
            trace_id: TraceId(span.trace_id().to_bytes()),
            span_id: SpanId(span.span_id().to_bytes()),
            flags: span.trace_flags().to_u8(),
            remote: span.is_remote(),
        }),
        trace_state: (!state.is_empty()).then(|| Arc::from(state.as_str())),
        baggage: None,
    }
}

pub(crate) fn to_otel(context: &Context) -> otel::SpanContext {
    let Some(span) = context.span else {
        return otel::SpanContext::empty_context();
    };
    let state = context
        .trace_state
        .as_deref()
        .and_then(|s| otel::TraceState::from_str(s).ok())
        .unwrap_or_default();
    otel::SpanContext::new(
        otel::TraceId::from_bytes(span.trace_id.0),
        otel::SpanId::from_bytes(span.span_id.0),
        otel::TraceFlags::new(span.flags),
        span.remote,
        state,
    )
}

pub(crate) fn value(v: opentelemetry::Value) -> crate::Value {
    use crate::span::Array;
    use opentelemetry::{Array as OtelArray, Value as V};
    match v {
        V::Bool(b) => b.into(),
        V::I64(i) => i.into(),
        V::F64(f) => f.into(),
        V::String(s) => String::from(s).into(),
        V::Array(OtelArray::Bool(a)) => crate::Value::Array(Array::Bool(a)),
        V::Array(OtelArray::I64(a)) => crate::Value::Array(Array::I64(a)),
        V::Array(OtelArray::F64(a)) => crate::Value::Array(Array::F64(a)),
        V::Array(OtelArray::String(a)) => crate::Value::Array(Array::Str(
            a.into_iter().map(|s| String::from(s).into()).collect(),
        )),
        // Kinds a later API version adds keep their text.
        other => other.to_string().into(),
    }
}

pub(crate) fn attributes(kvs: Vec<opentelemetry::KeyValue>) -> Vec<crate::Attribute> {
    kvs.into_iter()
        .map(|kv| (Cow::Owned(kv.key.as_str().to_string()), value(kv.value)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_contexts_convert_both_ways() {
        let context = Context {
            span: Some(SpanContext {
                trace_id: TraceId([7; 16]),
                span_id: SpanId([3; 8]),
                flags: 1,
                remote: true,
            }),
            trace_state: Some(Arc::from("vendor=abc")),
            baggage: None,
        };
        let otel = to_otel(&context);
        assert!(otel.is_valid() && otel.is_sampled() && otel.is_remote());
        assert_eq!(otel.trace_state().get("vendor"), Some("abc"));
        assert_eq!(from_otel(&otel), context);
    }

    #[test]
    fn api_values_become_agent_values() {
        assert_eq!(
            value(opentelemetry::Value::Array(vec![1i64, 2].into())),
            crate::Value::Array(crate::span::Array::I64(vec![1, 2]))
        );
        assert_eq!(value("x".into()), crate::Value::from("x".to_string()));
    }
}

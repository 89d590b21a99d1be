//! The [`Agent`] handle: start spans, propagate context, record metrics, and
//! get the `tracing` layers. The integrations (`http`, `grpc`, `messaging`,
//! `otel_api`) add their own methods to it next to their code.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::context::Context;
use crate::core::Shared;
use crate::logs::{JsonLogLayer, LogLayer, OtlpLogLayer};
use crate::metrics::{Counter, Gauge, Histogram, MetricsSnapshot, UpDownCounter};
use crate::propagation::{Extractor, Injector, Propagators};
use crate::span::{Span, SpanKind, Str, Value};
use crate::stats::AgentStats;
use crate::tracing_layer::TracingLayer;

impl crate::metrics::prometheus::MetricsSource for Agent {
    fn metrics_snapshot(&self) -> MetricsSnapshot {
        self.shared.metrics_snapshot()
    }
}

/// A cheap, cloneable handle to a running agent: start spans, propagate
/// context, read metrics.
#[derive(Clone)]
pub struct Agent {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) static GLOBAL: OnceLock<Agent> = OnceLock::new();

impl Agent {
    /// The agent [`crate::init`] installed, if any.
    pub fn global() -> Option<&'static Agent> {
        GLOBAL.get()
    }

    pub fn service_name(&self) -> &str {
        &self.shared.service_name
    }

    /// The resource attributes every export carries (`service.instance.id`, …).
    pub fn resource(&self) -> &[(Cow<'static, str>, Value)] {
        &self.shared.resource
    }

    /// A span whose parent is the current context (if any).
    pub fn start_span(&self, name: impl Into<Str>, kind: SpanKind) -> Span {
        let parent = Context::current();
        Span::start(&self.shared, name.into(), kind, parent.as_ref())
    }

    /// A span with an explicit parent (`None` starts a new trace).
    pub fn start_span_with_parent(
        &self,
        name: impl Into<Str>,
        kind: SpanKind,
        parent: Option<&Context>,
    ) -> Span {
        Span::start(&self.shared, name.into(), kind, parent)
    }

    pub fn propagators(&self) -> Propagators {
        self.shared.propagators
    }

    /// Writes `context` into outgoing headers with the configured propagators.
    pub fn inject(&self, context: &Context, carrier: &mut impl Injector) {
        self.shared.propagators.inject(context, carrier);
    }

    /// Reads an incoming context with the configured propagators.
    pub fn extract(&self, carrier: &impl Extractor) -> Option<Context> {
        self.shared.propagators.extract(carrier)
    }

    /// The `tracing` layer capturing events as JSON lines and OTLP log
    /// records, both from one capture (one filter for both).
    pub fn log_layer(&self) -> LogLayer {
        LogLayer {
            shared: self.shared.clone(),
        }
    }

    /// The `tracing` layer writing events as JSON lines only: with
    /// [`Agent::otlp_log_layer`], each behind its own filter.
    pub fn json_log_layer(&self) -> JsonLogLayer {
        JsonLogLayer {
            shared: self.shared.clone(),
        }
    }

    /// The `tracing` layer exporting events as OTLP log records only.
    pub fn otlp_log_layer(&self) -> OtlpLogLayer {
        OtlpLogLayer {
            shared: self.shared.clone(),
        }
    }

    /// The `tracing` layer turning `tracing` spans (`#[instrument]`,
    /// `info_span!`, libraries' spans) into OTLP spans; [`crate::init`]
    /// installs it, behind the span filter.
    pub fn tracing_layer(&self) -> TracingLayer {
        TracingLayer {
            shared: self.shared.clone(),
            span_events: self.shared.span_events,
        }
    }

    pub fn stats(&self) -> AgentStats {
        self.shared.stats()
    }

    /// RED series, the service's counters and gauges, and the agent's own
    /// counters now.
    pub fn metrics_snapshot(&self) -> MetricsSnapshot {
        self.shared.metrics_snapshot()
    }

    /// The monotonic counter `name`, created on first use and exported with the
    /// RED metrics (OTLP Sum, cumulative); the same name gives the same
    /// instrument. Create instruments once at start and clone the handles.
    ///
    /// ```
    /// # let guard = agent::AgentBuilder::from_config(agent::Config::default())
    /// #     .disabled(true).json_logs(false).start().unwrap();
    /// # let agent = guard.agent();
    /// let lookups: agent::metrics::Counter = agent
    ///     .counter("shop.cache.requests")
    ///     .with_description("Cache lookups by layer and result")
    ///     .with_unit("{request}");
    /// lookups.add(1, &[("cache.layer", "memory"), ("cache.result", "hit")]);
    /// let state: agent::metrics::Gauge = agent.gauge("shop.breaker.state").with_unit("1");
    /// state.set(2.0, &[("dependency", "inventory")]);
    /// assert_eq!(agent.metrics_snapshot().counters[0].series[0].value, 1);
    /// ```
    pub fn counter(&self, name: &str) -> Counter {
        let (counter, warning) = self.shared.instruments.counter(name);
        self.shared.warn(warning);
        counter
    }

    /// The gauge `name` (last value per attribute set, OTLP Gauge), like
    /// [`Agent::counter`].
    pub fn gauge(&self, name: &str) -> Gauge {
        let (gauge, warning) = self.shared.instruments.gauge(name);
        self.shared.warn(warning);
        gauge
    }

    /// The up-down counter `name` (cumulative `i64` per attribute set, OTLP
    /// non-monotonic Sum), like [`Agent::counter`].
    pub fn up_down_counter(&self, name: &str) -> UpDownCounter {
        let (counter, warning) = self.shared.instruments.up_down_counter(name);
        self.shared.warn(warning);
        counter
    }

    /// The histogram `name` (exponential buckets per attribute set, OTLP
    /// ExponentialHistogram per export interval), like [`Agent::counter`].
    pub fn histogram(&self, name: &str) -> Histogram {
        let (histogram, warning) = self.shared.instruments.histogram(name);
        self.shared.warn(warning);
        histogram
    }

    /// The same snapshot as Prometheus text.
    pub fn prometheus_text(&self) -> String {
        crate::metrics::prometheus::render(&self.metrics_snapshot())
    }

    /// Records one request into the RED series (the HTTP layer calls this; use it
    /// for servers the layer does not cover).
    pub fn record_request(
        &self,
        method: &'static str,
        route: &str,
        status: u16,
        elapsed: Duration,
    ) {
        self.shared.red.record(
            &crate::metrics::RequestAttributes::new(method, route, status),
            elapsed,
            None,
        );
    }
}

impl Agent {
    /// Records one request with all its semantic-convention attributes; a
    /// recording `span` (the request's) may become the window's exemplar.
    pub fn record_http_request(
        &self,
        attributes: &crate::metrics::RequestAttributes<'_>,
        elapsed: Duration,
        span: Option<&Span>,
    ) {
        let sampled = span
            .filter(|s| s.is_recording())
            .map(|s| (s.trace_id(), s.span_id()));
        self.shared.red.record(attributes, elapsed, sampled);
    }
}

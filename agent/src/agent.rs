//! The [`Agent`] handle, its [`AgentBuilder`] and the [`AgentGuard`] whose drop
//! flushes everything within a bounded deadline.

use std::borrow::Cow;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use thiserror::Error;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;

use crate::config::{Compression, Config, ConfigError, Protocol, Signal};
use crate::context::Context;
use crate::export::{self, Worker};
use crate::logs::{LogEvent, LogLayer};
use crate::metrics::instruments::Instruments;
use crate::metrics::red::RedMetrics;
use crate::metrics::{Counter, Gauge, Histogram, MetricsSnapshot, UpDownCounter};
use crate::propagation::{Extractor, Injector, Propagators};
use crate::queue::Queue;
use crate::sampler::Sampler;
use crate::span::{Span, SpanData, SpanKind, Str, Value};

#[derive(Debug, Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("log filter {filter:?}: {reason}")]
    LogFilter { filter: String, reason: String },
    #[error("a global tracing subscriber is already installed: {0}")]
    SubscriberInstalled(String),
    #[error("export header {name:?} is not a valid header")]
    InvalidHeader { name: String },
    #[error("export TLS: {0}")]
    Tls(#[from] crate::export::tls::TlsError),
    #[error("endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("cannot start the agent's export thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("the agent's export thread stopped while starting")]
    ThreadExited,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ShutdownError {
    /// The deadline passed before every queue was flushed; what was left is lost.
    #[error("telemetry not fully flushed within the {0:?} shutdown deadline")]
    DeadlineExceeded(Duration),
}

/// Exported and dropped counts of one signal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalStats {
    pub exported: u64,
    /// Dropped because a bounded queue was full.
    pub queue_full: u64,
    /// Dropped because the export failed (collector down, rejected, timed out).
    pub export_failed: u64,
}

impl SignalStats {
    pub fn dropped(&self) -> u64 {
        self.queue_full + self.export_failed
    }
}

/// The agent's own counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentStats {
    pub spans: SignalStats,
    pub logs: SignalStats,
    pub metric_points: SignalStats,
}

impl AgentStats {
    pub fn by_signal(&self) -> [(&'static str, SignalStats); 3] {
        [
            ("spans", self.spans),
            ("logs", self.logs),
            ("metric_points", self.metric_points),
        ]
    }
}

/// What the export did with one signal's items.
#[derive(Default)]
pub(crate) struct ExportCounts {
    exported: AtomicU64,
    failed: AtomicU64,
}

impl ExportCounts {
    pub(crate) fn exported(&self, n: u64) {
        self.exported.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self, n: u64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
    }

    fn read(&self, queue_full: u64) -> SignalStats {
        SignalStats {
            exported: self.exported.load(Ordering::Relaxed),
            queue_full,
            export_failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// Distinct interned names (routes, `{method} {route}`) before new ones are
/// simply allocated per use; bounds memory against unbounded route sets.
const NAME_CACHE_CAPACITY: usize = 4096;

/// State shared by every handle, layer and span of one agent.
pub(crate) struct Shared {
    pub service_name: String,
    /// `service.name`, `service.instance.id`, host, process, … (see `resource.rs`).
    pub resource: Vec<(Cow<'static, str>, Value)>,
    pub sampler: Sampler,
    pub propagators: Propagators,
    /// False when `OTEL_SDK_DISABLED`: spans are not recorded.
    pub recording: bool,
    /// `tracing` events inside a span become span events.
    pub span_events: bool,
    pub spans: Queue<Box<SpanData>>,
    /// Route and span names shared across requests.
    pub names: crate::intern::Interner,
    pub logs: Queue<LogEvent>,
    /// Log records written to stdout and waiting for export.
    pub log_export: Queue<LogEvent>,
    pub red: RedMetrics,
    pub rpc: crate::metrics::rpc::RpcMetrics,
    pub instruments: Instruments,
    pub span_counts: ExportCounts,
    pub log_counts: ExportCounts,
    pub point_counts: ExportCounts,
    /// Set when shutdown had to cut an export at the deadline.
    pub export_cut: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(crate) fn stats(&self) -> AgentStats {
        AgentStats {
            spans: self.span_counts.read(self.spans.dropped()),
            logs: self
                .log_counts
                .read(self.logs.dropped() + self.log_export.dropped()),
            metric_points: self.point_counts.read(0),
        }
    }

    pub(crate) fn metrics_snapshot(&self) -> MetricsSnapshot {
        let (counters, gauges) = self.instruments.snapshot();
        MetricsSnapshot {
            service_name: self.service_name.clone(),
            series: self.red.snapshot(),
            rpc: self.rpc.snapshot(),
            counters,
            gauges,
            up_down_counters: self.instruments.up_down_snapshot(),
            histograms: self.instruments.histogram_snapshot(),
            stats: self.stats(),
        }
    }

    /// Ends every metric window (exact percentiles, exponential histograms,
    /// exemplars) at `now`: the metrics export does this once per interval.
    pub(crate) fn close_metric_windows(&self, now_unix_nanos: u64) {
        self.red.close_window(now_unix_nanos);
        self.rpc.close_window(now_unix_nanos);
        self.instruments.close_window(now_unix_nanos);
    }

    /// A questionable instrument name goes to the log, once, when it is created.
    fn warn(&self, warning: Option<String>) {
        if let Some(message) = warning {
            self.logs
                .push(LogEvent::agent(tracing::Level::WARN, message));
        }
    }
}

/// A cheap, cloneable handle to a running agent: start spans, propagate
/// context, read metrics.
#[derive(Clone)]
pub struct Agent {
    pub(crate) shared: Arc<Shared>,
}

static GLOBAL: OnceLock<Agent> = OnceLock::new();

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

    /// The `tracing` layer capturing events as JSON lines and OTLP log records.
    pub fn log_layer(&self) -> LogLayer {
        LogLayer {
            shared: self.shared.clone(),
        }
    }

    /// The `tracing` layer turning `tracing` spans (`#[instrument]`,
    /// `info_span!`, libraries' spans) into OTLP spans; [`crate::init`]
    /// installs it, behind the span filter.
    pub fn tracing_layer(&self) -> crate::TracingLayer {
        crate::TracingLayer {
            shared: self.shared.clone(),
            span_events: self.shared.span_events,
        }
    }

    /// The tower layer instrumenting an axum router.
    pub fn http_layer(&self) -> crate::http::server::HttpLayer {
        crate::http::server::HttpLayer::new(self.clone())
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

/// Where the JSON lines go; stdout unless a test or the host says otherwise.
pub type LogWriter = Box<dyn Write + Send>;

/// Configuration from the environment, with every setting overridable in code.
pub struct AgentBuilder {
    config: Result<Config, ConfigError>,
    log_writer: Option<LogWriter>,
}

impl Default for AgentBuilder {
    fn default() -> Self {
        AgentBuilder::from_env()
    }
}

impl AgentBuilder {
    /// Starts from `OTEL_*` (an invalid variable is reported by `init`/`start`).
    pub fn from_env() -> AgentBuilder {
        AgentBuilder {
            config: Config::from_env(),
            log_writer: None,
        }
    }

    /// Starts from an explicit configuration, ignoring the environment.
    pub fn from_config(config: Config) -> AgentBuilder {
        AgentBuilder {
            config: Ok(config),
            log_writer: None,
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        if let Ok(config) = &mut self.config {
            f(config);
        }
        self
    }

    pub fn service_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.with(|c| c.service_name = name)
    }

    pub fn resource_attribute(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let pair = (key.into(), value.into());
        self.with(|c| c.resource_attributes.push(pair))
    }

    /// The base endpoint for all signals (per-signal endpoints are cleared).
    pub fn endpoint(self, endpoint: impl Into<String>) -> Self {
        let endpoint = endpoint.into();
        self.with(|c| {
            c.endpoint = Some(endpoint);
            for s in Signal::ALL {
                c.export_mut(s).endpoint = None;
            }
        })
    }

    /// One signal's endpoint, used as is.
    pub fn signal_endpoint(self, signal: Signal, endpoint: impl Into<String>) -> Self {
        let endpoint = endpoint.into();
        self.with(|c| c.export_mut(signal).endpoint = Some(endpoint))
    }

    pub fn protocol(self, protocol: Protocol) -> Self {
        self.with(|c| {
            Signal::ALL
                .iter()
                .for_each(|s| c.export_mut(*s).protocol = protocol)
        })
    }

    pub fn header(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let pair = (name.into(), value.into());
        self.with(|c| {
            Signal::ALL
                .iter()
                .for_each(|s| c.export_mut(*s).headers.push(pair.clone()))
        })
    }

    pub fn export_timeout(self, timeout: Duration) -> Self {
        self.with(|c| {
            Signal::ALL
                .iter()
                .for_each(|s| c.export_mut(*s).timeout = timeout)
        })
    }

    pub fn compression(self, compression: Compression) -> Self {
        self.with(|c| {
            Signal::ALL
                .iter()
                .for_each(|s| c.export_mut(*s).compression = compression)
        })
    }

    pub fn sampler(self, sampler: Sampler) -> Self {
        self.with(|c| c.sampler = sampler)
    }

    pub fn propagators(self, propagators: Propagators) -> Self {
        self.with(|c| c.propagators = propagators)
    }

    pub fn disabled(self, disabled: bool) -> Self {
        self.with(|c| c.disabled = disabled)
    }

    /// An `EnvFilter` directive such as `info,my_crate=debug`.
    pub fn log_filter(self, filter: impl Into<String>) -> Self {
        let filter = filter.into();
        self.with(|c| c.log_filter = filter)
    }

    /// `EnvFilter` directives for the `tracing` spans that become OTLP spans
    /// (default: the log filter's). `off` turns the bridge off.
    pub fn span_filter(self, filter: impl Into<String>) -> Self {
        let filter = filter.into();
        self.with(|c| c.span_filter = Some(filter))
    }

    /// `tracing` events inside a span also become events of that span.
    pub fn span_events(self, on: bool) -> Self {
        self.with(|c| c.span_events = on)
    }

    /// Turns the JSON lines off (records are still exported).
    pub fn json_logs(self, on: bool) -> Self {
        self.with(|c| c.json_logs = on)
    }

    /// Writes the JSON lines somewhere other than stdout.
    pub fn log_writer(mut self, writer: impl Write + Send + 'static) -> Self {
        self.log_writer = Some(Box::new(writer));
        self
    }

    /// How often spans and log records are sent (also sent early when a batch fills).
    pub fn export_interval(self, interval: Duration) -> Self {
        self.with(|c| {
            c.span_export_interval = interval;
            c.log_export_interval = interval;
        })
    }

    pub fn metric_export_interval(self, interval: Duration) -> Self {
        self.with(|c| c.metric_export_interval = interval)
    }

    pub fn queue_capacity(self, spans: usize, logs: usize) -> Self {
        self.with(|c| {
            c.span_queue_capacity = spans;
            c.log_queue_capacity = logs;
        })
    }

    pub fn max_metric_series(self, n: usize) -> Self {
        self.with(|c| c.max_metric_series = n)
    }

    pub fn shutdown_deadline(self, deadline: Duration) -> Self {
        self.with(|c| c.shutdown_deadline = deadline)
    }

    /// Adjusts anything else in the configuration.
    pub fn configure(self, f: impl FnOnce(&mut Config)) -> Self {
        self.with(f)
    }

    /// Starts the agent and installs it globally: the `tracing` subscriber
    /// (the JSON/OTLP log layer behind the log filter, the span layer behind
    /// the span filter) and [`Agent::global`].
    pub fn init(self) -> Result<AgentGuard, InitError> {
        let env_filter = |filter: &str| {
            EnvFilter::try_new(filter).map_err(|e| InitError::LogFilter {
                filter: filter.to_string(),
                reason: e.to_string(),
            })
        };
        let (log_filter, span_filter) = match &self.config {
            Ok(c) => (env_filter(&c.log_filter)?, env_filter(c.span_filter())?),
            Err(_) => (EnvFilter::default(), EnvFilter::default()),
        };
        let guard = self.start()?;
        tracing_subscriber::registry()
            .with(guard.agent.tracing_layer().with_filter(span_filter))
            .with(guard.agent.log_layer().with_filter(log_filter))
            .try_init()
            .map_err(|e| InitError::SubscriberInstalled(e.to_string()))?;
        let _ = GLOBAL.set(guard.agent.clone());
        #[cfg(feature = "otel-api")]
        crate::otel_api::install(&guard.agent);
        Ok(guard)
    }

    /// Starts the agent without touching any global: compose
    /// [`Agent::log_layer`] and [`Agent::tracing_layer`] into your own subscriber.
    pub fn start(self) -> Result<AgentGuard, InitError> {
        let config = self.config?;
        let shared = Arc::new(Shared {
            service_name: config.service_name.clone(),
            resource: crate::resource::build(&config),
            sampler: config.sampler,
            propagators: config.propagators,
            recording: !config.disabled,
            span_events: config.span_events,
            spans: Queue::new(config.span_queue_capacity, config.max_export_batch),
            names: crate::intern::Interner::new(NAME_CACHE_CAPACITY),
            logs: Queue::new(config.log_queue_capacity, config.max_export_batch),
            log_export: Queue::new(config.log_queue_capacity, config.max_export_batch),
            red: RedMetrics::new(config.max_metric_series),
            rpc: crate::metrics::rpc::RpcMetrics::new(config.max_metric_series),
            instruments: Instruments::new(config.max_metric_series),
            span_counts: ExportCounts::default(),
            log_counts: ExportCounts::default(),
            point_counts: ExportCounts::default(),
            export_cut: Default::default(),
        });
        let writer: Option<LogWriter> = if config.json_logs {
            Some(
                self.log_writer
                    .unwrap_or_else(|| Box::new(std::io::stdout())),
            )
        } else {
            None
        };
        // Queued directly: the subscriber may not be installed yet.
        for warning in &config.warnings {
            shared
                .logs
                .push(LogEvent::agent(tracing::Level::WARN, warning.clone()));
        }
        let worker = export::spawn(shared.clone(), &config, writer)?;
        Ok(AgentGuard {
            agent: Agent { shared },
            worker: Some(worker),
        })
    }
}

/// Keeps the agent running; dropping it (or [`AgentGuard::shutdown`]) flushes
/// spans, log lines, log records and a last metrics export within the shutdown
/// deadline, collector up or down.
pub struct AgentGuard {
    agent: Agent,
    worker: Option<Worker>,
}

impl AgentGuard {
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// Flushes and stops, blocking the calling thread for at most the deadline.
    /// Safe on any thread, also inside a Tokio runtime: the export runs on the
    /// agent's own thread.
    pub fn shutdown(mut self) -> Result<(), ShutdownError> {
        match self.worker.take() {
            Some(worker) => worker.shutdown(),
            None => Ok(()),
        }
    }

    /// [`AgentGuard::shutdown`] without blocking an async worker thread (use it
    /// when the collector runs in the same runtime, as in tests).
    pub async fn shutdown_async(self) -> Result<(), ShutdownError> {
        let deadline = self
            .worker
            .as_ref()
            .map_or(Duration::ZERO, |w| w.deadline());
        match tokio::task::spawn_blocking(move || self.shutdown()).await {
            Ok(result) => result,
            Err(_) => Err(ShutdownError::DeadlineExceeded(deadline)),
        }
    }
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            // Nowhere to report from a drop; the counters already tell what was lost.
            let _ = worker.shutdown();
        }
    }
}

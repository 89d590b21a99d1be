//! [`AgentBuilder`]: configuration from the environment with every setting
//! overridable in code; `init` installs the agent globally, `start` does not.

mod subscriber;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::agent::{Agent, GLOBAL};
use crate::config::{Compression, Config, ConfigError, Protocol, Signal};
use crate::core::intern::Interner;
use crate::core::log_event::LogEvent;
use crate::core::queue::Queue;
use crate::core::{ExportCounts, Shared, NAME_CACHE_CAPACITY};
use crate::export::error::StartError;
use crate::export::{self, Exporter, LogWriter};
use crate::guard::AgentGuard;
use crate::metrics::instruments::Instruments;
use crate::metrics::red::RedMetrics;
use crate::metrics::rpc::RpcMetrics;
use crate::propagation::Propagators;
use crate::sampler::Sampler;

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
impl From<StartError> for InitError {
    fn from(e: StartError) -> InitError {
        match e {
            StartError::InvalidHeader { name } => InitError::InvalidHeader { name },
            StartError::Tls(e) => InitError::Tls(e),
            StartError::InvalidEndpoint { endpoint, reason } => {
                InitError::InvalidEndpoint { endpoint, reason }
            }
            StartError::Thread(e) => InitError::Thread(e),
            StartError::ThreadExited => InitError::ThreadExited,
        }
    }
}

/// Configuration from the environment, with every setting overridable in code.
pub struct AgentBuilder {
    config: Result<Config, ConfigError>,
    log_writer: Option<LogWriter>,
    /// Replaces the OTLP transports (the in-memory exporter of tests).
    exporter: Option<Arc<dyn Exporter>>,
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
            exporter: None,
        }
    }

    /// Starts from an explicit configuration, ignoring the environment.
    pub fn from_config(config: Config) -> AgentBuilder {
        AgentBuilder {
            config: Ok(config),
            log_writer: None,
            exporter: None,
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

    /// `EnvFilter` directives for the JSON lines only (default: the log filter's).
    pub fn json_log_filter(self, filter: impl Into<String>) -> Self {
        let filter = filter.into();
        self.with(|c| c.json_log_filter = Some(filter))
    }

    /// `EnvFilter` directives for the OTLP log records only (default: the log
    /// filter's).
    pub fn otlp_log_filter(self, filter: impl Into<String>) -> Self {
        let filter = filter.into();
        self.with(|c| c.otlp_log_filter = Some(filter))
    }

    /// Exports every signal into `exporter` instead of over OTLP (tests of
    /// instrumentation that need no collector).
    #[cfg(feature = "test-support")]
    pub fn exporter(mut self, exporter: crate::export::in_memory::InMemoryExporter) -> Self {
        self.exporter = Some(Arc::new(exporter));
        self
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
    /// (the span layer, the JSON-lines layer and the OTLP log layer, each
    /// behind its filter; see `builder/subscriber.rs`) and [`Agent::global`].
    pub fn init(self) -> Result<AgentGuard, InitError> {
        // Bad directives are reported before anything starts.
        let layers = match &self.config {
            Ok(c) => Some(subscriber::Filters::new(c)?),
            Err(_) => None,
        };
        let guard = self.start()?;
        if let Some(layers) = layers {
            layers.install(guard.agent())?;
        }
        let _ = GLOBAL.set(guard.agent().clone());
        #[cfg(feature = "otel-api")]
        crate::otel_api::install(guard.agent());
        Ok(guard)
    }

    /// Starts the agent without touching any global: compose
    /// [`Agent::log_layer`] and [`Agent::tracing_layer`] into your own subscriber.
    pub fn start(self) -> Result<AgentGuard, InitError> {
        let config = self.config?;
        #[cfg(feature = "otel-api")]
        crate::otel_api::bridge_current_context();
        let shared = Arc::new(Shared {
            service_name: config.service_name.clone(),
            resource: crate::resource::build(&config),
            sampler: config.sampler,
            propagators: config.propagators,
            recording: !config.disabled,
            span_events: config.span_events,
            log_records: !config.disabled && config.export(Signal::Logs).enabled,
            spans: Queue::new(config.span_queue_capacity, config.max_export_batch),
            names: Interner::new(NAME_CACHE_CAPACITY),
            logs: Queue::new(config.log_queue_capacity, config.max_export_batch),
            log_export: Queue::new(config.log_queue_capacity, config.max_export_batch),
            red: RedMetrics::new(config.max_metric_series),
            rpc: RpcMetrics::new(config.max_metric_series),
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
        let worker = export::spawn(shared.clone(), &config, writer, self.exporter)?;
        Ok(AgentGuard::new(Agent { shared }, worker))
    }
}

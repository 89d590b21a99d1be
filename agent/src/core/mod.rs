//! The small core every part of the agent shares: the state one agent's
//! handles, layers and spans point to ([`Shared`]), the records waiting for
//! export (spans, log events), the bounded queues between the observed code and
//! the export thread, and the interned names.
//!
//! `span`, `logs`, `tracing_layer`, the integrations and `export` depend on
//! this module, not on each other; it depends only on the leaves (`context`,
//! `propagation`, `sampler`, `stats`, `clock`) and on the metric stores it
//! holds. `agent/module-edges.txt` lists the allowed edges.

pub(crate) mod intern;
pub(crate) mod log_event;
pub(crate) mod queue;
pub(crate) mod span_data;
pub(crate) mod value;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;

use crate::metrics::instruments::Instruments;
use crate::metrics::red::RedMetrics;
use crate::metrics::rpc::RpcMetrics;
use crate::metrics::MetricsSnapshot;
use crate::propagation::Propagators;
use crate::sampler::Sampler;
use crate::stats::{AgentStats, SignalStats};
use intern::Interner;
use log_event::LogEvent;
use queue::Queue;
use span_data::SpanData;
use value::Value;

/// Distinct interned names (routes, `{method} {route}`) before new ones are
/// simply allocated per use; bounds memory against unbounded route sets.
pub(crate) const NAME_CACHE_CAPACITY: usize = 4096;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ShutdownError {
    /// The deadline passed before every queue was flushed; what was left is lost.
    #[error("telemetry not fully flushed within the {0:?} shutdown deadline")]
    DeadlineExceeded(Duration),
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
    /// Log records are exported (recording, and the logs exporter is not
    /// `none`): the OTLP log layer queues nothing otherwise.
    pub log_records: bool,
    pub spans: Queue<Box<SpanData>>,
    /// Route and span names shared across requests.
    pub names: Interner,
    /// Events for the JSON lines; those marked `export` go on to
    /// [`Shared::log_export`] once written.
    pub logs: Queue<LogEvent>,
    /// Log records waiting for export.
    pub log_export: Queue<LogEvent>,
    pub red: RedMetrics,
    pub rpc: RpcMetrics,
    pub instruments: Instruments,
    pub span_counts: ExportCounts,
    pub log_counts: ExportCounts,
    pub point_counts: ExportCounts,
    /// Set when shutdown had to cut an export at the deadline.
    pub export_cut: AtomicBool,
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

    /// A line about the agent itself (a questionable instrument name, dropped
    /// telemetry), written and exported like any event.
    pub(crate) fn warn(&self, warning: Option<String>) {
        if let Some(message) = warning {
            self.logs
                .push(LogEvent::agent(tracing::Level::WARN, message));
        }
    }
}

//! RED metrics, recorded per request by the HTTP layer, and the service's own
//! counters and gauges ([`Counter`], [`Gauge`]): read locally through
//! [`MetricsSnapshot`] or Prometheus text, and exported over OTLP by the agent.

pub mod exponential;
#[cfg(feature = "metrics-rs")]
pub mod facade;
pub mod instruments;
pub mod prometheus;
pub mod red;
pub mod rpc;
mod series_map;

pub use exponential::ExpHistogramSnapshot;
pub use instruments::{
    Counter, CounterSnapshot, Gauge, GaugeSnapshot, Histogram, HistogramSnapshot, HistogramValue,
    InstrumentSeries, InstrumentSnapshot, UpDownCounter, UpDownCounterSnapshot, OVERFLOW_ATTRIBUTE,
};
pub use red::{
    Exemplar, RequestAttributes, SeriesSnapshot, StatusClass, WindowSnapshot,
    DURATION_BUCKETS_SECONDS, QUANTILES,
};
pub use rpc::{RpcSeriesSnapshot, RpcSide};

use crate::stats::AgentStats;

/// Everything the agent measures, at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsSnapshot {
    pub service_name: String,
    pub series: Vec<SeriesSnapshot>,
    /// gRPC calls through the tonic layers, per side, method and status code.
    pub rpc: Vec<RpcSeriesSnapshot>,
    /// The service's counters and gauges that have at least one series, by name.
    pub counters: Vec<CounterSnapshot>,
    pub gauges: Vec<GaugeSnapshot>,
    pub up_down_counters: Vec<UpDownCounterSnapshot>,
    pub histograms: Vec<HistogramSnapshot>,
    pub stats: AgentStats,
}

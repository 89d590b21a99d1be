//! RED metrics: recorded per request by the HTTP layer, read locally through
//! [`MetricsSnapshot`] or Prometheus text, and exported over OTLP by the agent.

pub mod prometheus;
pub mod red;

pub use red::{SeriesSnapshot, StatusClass, DURATION_BUCKETS_SECONDS, QUANTILES};

use crate::agent::AgentStats;

/// Everything the agent measures, at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsSnapshot {
    pub service_name: String,
    pub series: Vec<SeriesSnapshot>,
    pub stats: AgentStats,
}

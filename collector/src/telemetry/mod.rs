//! The collector's own observability: JSON logs, Prometheus metrics, health, and
//! the same metrics written into its own ClickHouse tables.

mod admin;
mod logging;
mod metrics;
mod registry;
mod self_export;
mod spool_age;

pub use admin::{exposition, router as admin_router, Health, Readiness, Stages};
pub use logging::init_logging;
pub use metrics::{Metrics, Outcome};
pub use registry::{Counter, Family, Histogram, Kind, Registry, Snapshot, Value};
pub use self_export::{run as run_self_export, MetricsSink, TelemetryConfig};
pub use spool_age::SpoolAge;

//! The collector's own observability: JSON logs, Prometheus metrics, health.

mod admin;
mod logging;
mod metrics;

pub use admin::{router as admin_router, Health};
pub use logging::init_logging;
pub use metrics::{Metrics, Outcome};

//! An OTLP collector that stores traces, logs and metrics in ClickHouse in the
//! OpenTelemetry Collector's ClickHouse-exporter layout.
//!
//! Data flows one way: [`receivers`] → [`pipeline`] → [`batching`] → [`exporters`].
//! [`mapping`] turns OTLP into rows of the [`schema`] at the receiver, once.

pub mod app;
pub mod batching;
pub mod config;
pub mod embedded;
pub mod exporters;
mod lz4;
pub mod mapping;
pub mod otlp;
pub mod part;
pub mod pipeline;
pub mod receivers;
pub mod schema;
pub mod spool;
pub mod telemetry;
pub mod ui;

pub use app::Collector;
pub use config::Config;

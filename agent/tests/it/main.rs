//! Every integration test of the `agent` crate, one module per area, linked into one
//! test binary (one link instead of one per file). Run one area with
//! `cargo test -p agent --test it <module>::`.

mod common;
mod export;
mod grpc;
mod http;
mod logs;
mod messaging;
mod metrics;
#[cfg(feature = "otel-api")]
mod otel_api;
mod resilience;
mod spans;
mod tracing_spans;

#[cfg(feature = "metrics-rs")]
mod metrics_rs;
mod replica_metrics;

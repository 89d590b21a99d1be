//! One-call OpenTelemetry instrumentation for tokio/axum services.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Reads OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_ENDPOINT, RUST_LOG, …
//!     let guard = agent::init()?;
//!     let app = Router::new()
//!         .route("/hello/{name}", get(|| async { "hi" }))
//!         .route("/metrics", agent::metrics::prometheus::route(guard.agent()))
//!         .layer(guard.agent().http_layer());
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(()) // dropping `guard` flushes within 5 s
//! }
//! ```
//!
//! Spans, log events and metrics are recorded in the agent's own structures and
//! exported as OTLP by a background thread ([`export`] is private); the request
//! path never waits on the network. See `README.md` for the full picture.

// The handle, builder and guard (the facade), the small core they and every
// signal share, the signals, the integrations and the export. Allowed imports
// between these modules: `module-edges.txt`.
mod agent;
mod baggage;
mod builder;
mod clock;
pub mod config;
pub mod context;
mod core;
mod export;
pub mod grpc;
mod guard;
pub mod http;
pub mod logs;
pub mod messaging;
pub mod metrics;
#[cfg(feature = "otel-api")]
pub mod otel_api;
pub mod propagation;
pub mod resource;
pub mod sampler;
pub mod span;
mod stats;
pub mod tracing_layer;

pub use agent::Agent;
pub use builder::{AgentBuilder, InitError};
pub use config::{Compression, Config, ConfigError, Protocol, Signal, TlsConfig};
pub use context::{Context, FutureExt, SpanContext, SpanId, TraceId};
pub use core::ShutdownError;
#[cfg(feature = "test-support")]
pub use export::in_memory::InMemoryExporter;
pub use export::tls::TlsError;
pub use export::LogWriter;
pub use guard::AgentGuard;
pub use http::client::SendTraced;
pub use messaging::Destination;
pub use propagation::{Extractor, Injector, Propagators};
pub use sampler::Sampler;
pub use span::{Array, Attribute, Span, SpanKind, Status, Str, Value};
pub use stats::{AgentStats, SignalStats};
pub use tracing_layer::TracingLayer;

/// Configures from the environment and installs globally (see [`AgentBuilder::init`]).
pub fn init() -> Result<AgentGuard, InitError> {
    AgentBuilder::from_env().init()
}

/// A builder starting from the environment, to override settings in code.
pub fn builder() -> AgentBuilder {
    AgentBuilder::from_env()
}

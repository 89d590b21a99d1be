//! A shop API (catalog, orders) implementing the patterns of high-load services on
//! PostgreSQL, Redis and RabbitMQ, observed through the `agent` crate.
//!
//! Request path: `api/` (routes, problem details) → `protection/` (shedding, deadline,
//! rate limit) → `auth` → handlers, which read through `cache/` and write through
//! `idempotency/` into `store/` (order + outbox in one transaction). Background:
//! `messaging/relay` publishes the outbox, `messaging/worker` applies the events once.
//! `downstream/` simulates and calls the summary's dependencies; `faults` switches
//! protections and injected failures at run time; `metrics` names the pattern metrics.

pub mod api;
pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod downstream;
pub mod faults;
pub mod idempotency;
pub mod messaging;
pub mod metrics;
pub mod protection;
pub mod report;
pub mod store;
mod telemetry;

pub use app::{AgentFactory, Shop};
pub use config::Config;

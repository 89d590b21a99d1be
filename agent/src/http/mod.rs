//! HTTP instrumentation: [`server`] for axum services, [`client`] for reqwest.

pub mod client;
pub mod server;

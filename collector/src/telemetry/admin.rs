//! `/health/live`, `/health/ready` and `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::Metrics;
use crate::exporters::clickhouse::{InsertHealth, SchemaGate, SchemaState};
use crate::spool::Spool;

#[derive(Clone)]
pub struct Health {
    pub gate: SchemaGate,
    pub inserts: InsertHealth,
    pub spool: Arc<Spool>,
    pub metrics: Arc<Metrics>,
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn ready(State(h): State<Health>) -> impl IntoResponse {
    match h.gate.state() {
        SchemaState::Ready => (StatusCode::OK, "ready\n".to_string()),
        SchemaState::Pending(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        format!(
            "{}# TYPE collector_spool_bytes gauge\ncollector_spool_bytes {}\n# TYPE collector_spool_budget_bytes gauge\ncollector_spool_budget_bytes {}\n",
            h.metrics.render(),
            h.spool.used_bytes(),
            h.spool.budget_bytes()
        ),
    )
}

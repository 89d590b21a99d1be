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

/// 503 while the schema is not right, or while INSERTs fail (degraded: data waits in
/// the spool), so load balancers prefer another collector.
async fn ready(State(h): State<Health>) -> impl IntoResponse {
    let spooled = h.spool.used_bytes();
    match (h.gate.state(), h.inserts.failing()) {
        (SchemaState::Pending(why), _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
        (SchemaState::Ready, Some(why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("degraded: {why}; {spooled} bytes wait in the spool\n"),
        ),
        (SchemaState::Ready, None) => (StatusCode::OK, "ready\n".to_string()),
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

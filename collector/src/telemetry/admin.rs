//! `/health/live`, `/health/ready` and `/metrics`.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::spool_age::SpoolAge;
use super::Metrics;
use crate::exporters::clickhouse::{InsertHealth, SchemaGate, SchemaState};
use crate::spool::Spool;

#[derive(Clone)]
pub struct Health {
    pub gate: SchemaGate,
    pub inserts: InsertHealth,
    pub spool: Arc<Spool>,
    pub metrics: Arc<Metrics>,
    pub spool_age: Arc<SpoolAge>,
}

impl Health {
    /// Notes how far the spool's appends have gone (see [`SpoolAge`]).
    pub fn sample_spool_age(&self) {
        let oldest = self.spool.oldest_seq().ok().flatten();
        self.spool_age
            .sample(Instant::now(), self.spool.next_seq(), oldest);
    }

    fn spool_age_seconds(&self) -> f64 {
        let oldest = self.spool.oldest_seq().ok().flatten();
        self.spool_age.age(Instant::now(), oldest).as_secs_f64()
    }
}

/// What `/metrics` serves (and the collector writes into its own tables).
pub fn exposition(h: &Health) -> String {
    let mut out = h.metrics.render();
    for (name, value) in [
        ("collector_spool_bytes", h.spool.used_bytes() as f64),
        (
            "collector_spool_budget_bytes",
            h.spool.budget_bytes() as f64,
        ),
        ("collector_spool_oldest_age_seconds", h.spool_age_seconds()),
    ] {
        let _ = write!(out, "# TYPE {name} gauge\n{name} {value}\n");
    }
    out
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
        (SchemaState::Ready, None) => (StatusCode::OK, format!("ready\n{}", extras_note(&h))),
    }
}

/// Our rollups and views a database made by the upstream exporter lacks: writing
/// goes on, the dashboards reading them stay empty until they exist.
fn extras_note(h: &Health) -> String {
    let absent = h.gate.absent_extras();
    if absent.is_empty() {
        String::new()
    } else {
        format!("absent (create_schema is off): {}\n", absent.join("; "))
    }
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        exposition(&h),
    )
}

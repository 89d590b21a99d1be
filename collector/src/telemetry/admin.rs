//! `/health/live`, `/health/ready` (accepting), `/health/exporting` and `/metrics`.

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
use crate::exporters::clickhouse::{Lanes, SchemaGate, SchemaState};
use crate::spool::Spool;

#[derive(Clone)]
pub struct Health {
    pub gate: SchemaGate,
    /// Each table's export lane.
    pub inserts: Lanes,
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
        ("collector_spool_disk_bytes", h.spool.disk_bytes() as f64),
        (
            "collector_spool_quarantined_files",
            h.spool.quarantined().0 as f64,
        ),
        (
            "collector_spool_quarantined_bytes",
            h.spool.quarantined().1 as f64,
        ),
    ] {
        let _ = write!(out, "# TYPE {name} gauge\n{name} {value}\n");
    }
    out
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/health/ready", get(ready))
        .route("/health/exporting", get(exporting))
        .route("/metrics", get(metrics))
        .with_state(health)
}

/// Ready means accepting: 200 while the spool has room, whether or not ClickHouse
/// takes the rows now — a load balancer keeps sending to a collector spooling
/// through an outage, and moves on once it refuses (503, as its clients get 429).
/// The body describes the spool and each table's lane either way.
async fn ready(State(h): State<Health>) -> impl IntoResponse {
    let (disk, budget) = (h.spool.disk_bytes(), h.spool.budget_bytes());
    let (status, head) = if h.spool.has_room() {
        (
            StatusCode::OK,
            format!("ready: accepting; the spool holds {disk} of {budget} bytes on disk\n"),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the spool is full ({disk} of {budget} bytes on disk); requests are refused until ClickHouse catches up\n"),
        )
    };
    (status, head + &describe_export(&h).1)
}

/// 200 while rows flow to ClickHouse: the schema is right and no lane's INSERTs
/// are failing; else 503 saying why (data meanwhile waits in the spool).
async fn exporting(State(h): State<Health>) -> impl IntoResponse {
    let (ok, body) = describe_export(&h);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// Whether everything exports, and a line for the schema and each lane.
fn describe_export(h: &Health) -> (bool, String) {
    let spooled = h.spool.used_bytes();
    let lanes = h.inserts.report();
    let mut ok = lanes.iter().all(|l| l.failing.is_none());
    let mut out = match h.gate.state() {
        SchemaState::Pending(why) => {
            ok = false;
            format!("exporting: no, the schema is not ready: {why}; {spooled} bytes wait in the spool\n")
        }
        SchemaState::Ready if ok => "exporting: yes\n".to_string(),
        SchemaState::Ready => {
            format!("exporting: degraded; {spooled} bytes wait in the spool\n")
        }
    };
    for lane in lanes {
        out.push_str(&lane.describe());
        out.push('\n');
    }
    out.push_str(&extras_note(h));
    (ok, out)
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

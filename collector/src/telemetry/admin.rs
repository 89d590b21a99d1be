//! `/health/live`, `/health/ready` (accepting), `/health/exporting` and `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::registry::{Family, Kind, Snapshot, Value};
use super::spool_age::SpoolAge;
use super::Metrics;

/// Whether the collector can take and store data, as `/health/ready` and the web UI
/// report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// The schema is not (yet) right: nothing can be written.
    NotReady(String),
    /// INSERTs fail: data waits in the spool.
    Degraded(String),
}

/// What telemetry reads from the stages it reports on. The app implements it over
/// the schema gate, the exporter and the spool, so telemetry imports none of them.
pub trait Stages: Send + Sync {
    fn readiness(&self) -> Readiness;
    /// Bytes the spool holds, and its budget.
    fn spool_bytes(&self) -> (u64, u64);
    /// The spool's next sequence number and its oldest unconfirmed part.
    fn spool_seqs(&self) -> (u64, Option<u64>);
    /// Whether the spool has room (requests are accepted), and a line saying so.
    fn accepting(&self) -> (bool, String);
    /// Whether rows flow to ClickHouse, and a line for the schema and each
    /// table's lane.
    fn exporting(&self) -> (bool, String);
    /// The spool's gauges beyond its bytes: on disk, quarantined files and bytes.
    fn spool_gauges(&self) -> Vec<(&'static str, f64)>;
}

#[derive(Clone)]
pub struct Health {
    pub stages: Arc<dyn Stages>,
    pub metrics: Arc<Metrics>,
    pub spool_age: Arc<SpoolAge>,
}

impl Health {
    /// Notes how far the spool's appends have gone (see [`SpoolAge`]).
    pub fn sample_spool_age(&self) {
        let (next, oldest) = self.stages.spool_seqs();
        self.spool_age.sample(Instant::now(), next, oldest);
    }

    fn spool_age_seconds(&self) -> f64 {
        let (_, oldest) = self.stages.spool_seqs();
        self.spool_age.age(Instant::now(), oldest).as_secs_f64()
    }

    pub fn readiness(&self) -> Readiness {
        self.stages.readiness()
    }
}

impl Health {
    /// Every metric now: the instruments and the gauges read from the stages.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = self.metrics.snapshot();
        let (used, budget) = self.stages.spool_bytes();
        let gauge = |name, value| Family {
            name,
            kind: Kind::Gauge,
            series: vec![(Vec::new(), Value::Level(value))],
        };
        snapshot.extend(Snapshot(vec![
            gauge("collector_spool_bytes", used as f64),
            gauge("collector_spool_budget_bytes", budget as f64),
            gauge(
                "collector_spool_oldest_age_seconds",
                self.spool_age_seconds(),
            ),
        ]));
        snapshot.extend(Snapshot(
            self.stages
                .spool_gauges()
                .into_iter()
                .map(|(name, value)| gauge(name, value))
                .collect(),
        ));
        snapshot
    }
}

/// What `/metrics` serves (and the web UI shows).
pub fn exposition(h: &Health) -> String {
    h.snapshot().render_text()
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
    let (accepting, head) = h.stages.accepting();
    let status = if accepting {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, head + &h.stages.exporting().1)
}

/// 200 while rows flow to ClickHouse: the schema is right and no lane's INSERTs
/// are failing; else 503 saying why (data meanwhile waits in the spool).
async fn exporting(State(h): State<Health>) -> impl IntoResponse {
    let (ok, body) = h.stages.exporting();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        exposition(&h),
    )
}

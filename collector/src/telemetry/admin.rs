//! `/health/live`, `/health/ready` and `/metrics`.

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
        .route("/metrics", get(metrics))
        .with_state(health)
}

/// 503 while the schema is not right, or while INSERTs fail (degraded: data waits in
/// the spool), so load balancers prefer another collector.
async fn ready(State(h): State<Health>) -> impl IntoResponse {
    match h.readiness() {
        Readiness::NotReady(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
        Readiness::Degraded(why) => {
            let (spooled, _) = h.stages.spool_bytes();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("degraded: {why}; {spooled} bytes wait in the spool\n"),
            )
        }
        Readiness::Ready => (StatusCode::OK, "ready\n".to_string()),
    }
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        exposition(&h),
    )
}

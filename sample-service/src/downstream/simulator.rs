//! Simulated downstream services (inventory, shipping, recommendations): real HTTP
//! servers with their own service name in traces, whose latency and error rate are
//! set at run time, so the summary's timeouts and breakers have something to do.

use std::sync::Arc;
use std::time::Duration;

use agent::Agent;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rand::Rng;
use serde_json::json;

use crate::faults::FaultSwitch;

pub const NAMES: [&str; 3] = ["inventory", "shipping", "recommendations"];

#[derive(Clone)]
struct Sim {
    name: &'static str,
    faults: Arc<FaultSwitch>,
}

async fn answer(State(sim): State<Sim>, Path(order_id): Path<String>) -> Response {
    let fault = sim.faults.get().downstream(sim.name);
    if fault.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(fault.latency_ms)).await;
    }
    if fault.error_rate > 0.0 && rand::rng().random_bool(fault.error_rate.clamp(0.0, 1.0)) {
        tracing::warn!(service = sim.name, %order_id, "injected downstream failure");
        return (StatusCode::INTERNAL_SERVER_ERROR, "injected failure").into_response();
    }
    let body = match sim.name {
        "inventory" => json!({"order_id": order_id, "reserved": true, "warehouse": "ams-1"}),
        "shipping" => json!({"order_id": order_id, "carrier": "postnl", "eta_days": 2}),
        _ => json!({"order_id": order_id, "products": [11, 42, 97]}),
    };
    Json(body).into_response()
}

/// The router of one simulator: `GET /<name>/{order_id}`.
pub fn router(name: &'static str, faults: Arc<FaultSwitch>, agent: &Agent) -> Router {
    Router::new()
        .route(&format!("/{name}/{{order_id}}"), get(answer))
        .with_state(Sim { name, faults })
        .layer(agent.http_layer())
}

/// Serves one simulator on `listener` until `shutdown` resolves.
pub async fn serve(
    name: &'static str,
    listener: tokio::net::TcpListener,
    faults: Arc<FaultSwitch>,
    agent: Agent,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(name, faults, &agent))
        .with_graceful_shutdown(shutdown)
        .await
}

//! Liveness (the process answers) and readiness (its backends answer).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::app::AppState;

pub async fn live() -> &'static str {
    "ok\n"
}

pub async fn ready(State(s): State<AppState>) -> Response {
    let checks = s.backends.check().await;
    let ok = checks.iter().all(|(_, r)| r.is_ok());
    let body: serde_json::Map<_, _> = checks
        .into_iter()
        .map(|(name, r)| {
            (
                name.to_string(),
                json!(r.err().unwrap_or_else(|| "ok".into())),
            )
        })
        .collect();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ok, "checks": body}))).into_response()
}

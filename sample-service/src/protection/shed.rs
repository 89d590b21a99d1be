//! Load shedding and the request deadline.
//!
//! At most `max_concurrency` requests run at once; one more is answered 503 with
//! Retry-After at once rather than queued, so latency stays bounded and the client
//! (or its load balancer) can go elsewhere.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::api::problem::Problem;
use crate::app::AppState;

#[derive(Clone)]
pub struct Limits {
    pub in_flight: Arc<Semaphore>,
    pub request_timeout: Duration,
}

pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(_permit) = state.limits.in_flight.clone().try_acquire_owned() else {
        state.metrics.shed.add(1, &[]);
        return Problem::unavailable("the service is at its concurrency limit; retry shortly")
            .into_response();
    };
    match tokio::time::timeout(state.limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        // Dropping the handler's future cancels its work (and releases any
        // idempotency claim it held).
        Err(_) => Problem::unavailable(format!(
            "the request took longer than {} ms",
            state.limits.request_timeout.as_millis()
        ))
        .into_response(),
    }
}

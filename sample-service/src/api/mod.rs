//! The HTTP door: routes, and the protections every API request passes through
//! (outermost first: the agent's server span, shedding and the deadline, the rate
//! limit, then authentication in the handlers).

mod admin;
pub mod catalog;
mod health;
mod orders;
pub mod problem;

use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;

use crate::app::AppState;
use crate::protection::{rate_limit, shed};

/// The whole HTTP surface; `api: false` serves only the probes and metrics (a
/// relay- or worker-only process).
pub fn router(state: AppState, api: bool) -> Router {
    let routes = Router::new()
        .route("/categories", get(catalog::categories))
        .route("/products", post(catalog::create_product))
        .route(
            "/products/{id}",
            get(catalog::product).put(catalog::update_product),
        )
        .route("/orders", post(orders::create))
        .route("/orders/{id}", get(orders::get))
        .route("/orders/{id}/summary", get(orders::summary))
        .route(
            "/admin/faults",
            get(admin::get_faults).put(admin::put_faults),
        )
        .layer(from_fn_with_state(state.clone(), rate_limit::middleware))
        .layer(from_fn_with_state(state.clone(), shed::middleware))
        .layer(state.agent.http_layer())
        .with_state(state.clone());
    // Probes and scrapes bypass the protections and make no spans.
    let ops = Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", agent::metrics::prometheus::route(&state.agent));
    let ops = ops.with_state(state);
    if api {
        routes.merge(ops)
    } else {
        ops
    }
}

//! The built-in web UI: services, traces, logs, a service map and the collector's
//! own state, server-rendered from the ClickHouse the collector writes.
//!
//! It only reads: its ClickHouse client is a separate one (a read-only user when
//! `ui.clickhouse_user` is set, else the collector's user with `readonly=2`), and
//! every value a visitor types reaches ClickHouse as a query parameter
//! (`{name:Type}`), never as SQL text. Pages are plain HTML with inline SVG and
//! a few lines of script; nothing is fetched from the network.

mod auth;
mod charts;
mod collector_page;
mod config;
mod layout;
mod logs;
mod map;
pub mod params;
pub mod queries;
mod service;
mod services;
mod trace;
mod trace_search;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

pub use config::UiConfig;

use crate::exporters::clickhouse::ClickHouseConfig;
use crate::telemetry::Health;

/// Where OTLP clients send data: the empty states tell visitors.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

#[derive(Debug, Error)]
pub enum UiError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] auth::AuthConfigError),
    #[error("binding the web UI to {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// What every page handler gets.
#[derive(Clone)]
pub(crate) struct Ui {
    pub client: clickhouse::Client,
    pub health: Health,
    pub endpoints: Endpoints,
}

/// Starts the UI when `config.addr` is set; it stops with `stop`.
pub async fn start(
    config: &UiConfig,
    clickhouse: &ClickHouseConfig,
    url: &str,
    health: Health,
    endpoints: Endpoints,
    stop: CancellationToken,
) -> Result<Option<SocketAddr>, UiError> {
    if config.addr.is_empty() {
        return Ok(None);
    }
    let client = config.client(clickhouse, url)?;
    let auth = Arc::new(auth::UiAuth::load(config)?);
    let listener = tokio::net::TcpListener::bind(&config.addr)
        .await
        .map_err(|source| UiError::Bind {
            addr: config.addr.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| UiError::Bind {
        addr: config.addr.clone(),
        source,
    })?;
    if !addr.ip().is_loopback() && !auth.enabled() {
        tracing::warn!(%addr, "the web UI listens beyond loopback without auth (ui.auth_tokens_file / ui.basic_auth_file)");
    }
    let ui = Ui {
        client,
        health,
        endpoints,
    };
    let app = router(ui).layer(middleware::from_fn_with_state(auth, auth::require));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok(Some(addr))
}

fn router(ui: Ui) -> Router {
    Router::new()
        .route("/", get(services::page))
        .route("/service/{name}", get(service::page))
        .route("/traces", get(trace_search::page))
        .route("/trace/{id}", get(trace::page))
        .route("/logs", get(logs::page))
        .route("/map", get(map::page))
        .route("/collector", get(collector_page::page))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .fallback(not_found)
        .layer(middleware::from_fn(page_headers))
        .with_state(ui)
}

async fn not_found(State(_): State<Ui>) -> PageError {
    PageError::new(StatusCode::NOT_FOUND, "no such page")
}

/// Pages show live data: never serve them from a cache. `Server-Timing` says how
/// long the page took here (queries and rendering; the body is complete when the
/// handler returns), for browsers' developer tools and the benchmark.
async fn page_headers(req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let mut resp = next.run(req).await;
    let took = format!("page;dur={:.2}", started.elapsed().as_secs_f64() * 1000.0);
    let headers = resp.headers_mut();
    headers.insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&took) {
        headers.insert("server-timing", v);
    }
    resp
}

/// A page that could not be shown, rendered as a page with its reason.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_input(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<clickhouse::error::Error> for PageError {
    fn from(e: clickhouse::error::Error) -> PageError {
        PageError::new(
            StatusCode::BAD_GATEWAY,
            format!("the ClickHouse query failed: {e}"),
        )
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        (
            self.status,
            Html(layout::error_page(self.status, &self.message)),
        )
            .into_response()
    }
}

pub(crate) type PageResult = Result<Html<String>, PageError>;

//! A small axum service instrumented by the agent, with its own steps marked by
//! `#[instrument]`: each becomes a span under the request's SERVER span.
//!
//! ```sh
//! OTEL_SERVICE_NAME=hello OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 \
//!   cargo run -p agent --example hello
//! curl localhost:3000/hello/world; curl localhost:3000/metrics
//! ```

use std::time::Duration;

use axum::{extract::Path, routing::get, Router};
use tracing::{info, instrument, Instrument};

async fn hello(Path(name): Path<String>) -> String {
    let greeting = compose(&name).await;
    // Background work keeps the trace: `in_current_span` carries it into the task.
    tokio::spawn(remember(name).in_current_span());
    greeting
}

/// A span `compose` with the attribute `name`, child of the SERVER span.
#[instrument]
async fn compose(name: &str) -> String {
    let style = pick_style(name.len());
    info!(%name, style, "greeting"); // a JSON line and an OTLP log record with this span's ids
    format!("{style}, {name}\n")
}

/// Synchronous code is a span too; `otel.kind` and `otel.name` rename it the way
/// a database client's span would be.
#[instrument(fields(otel.kind = "client", otel.name = "SELECT styles"))]
fn pick_style(len: usize) -> &'static str {
    if len > 5 {
        "greetings"
    } else {
        "hello"
    }
}

#[instrument]
async fn remember(name: String) {
    tokio::time::sleep(Duration::from_millis(5)).await;
    info!(%name, "remembered");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let guard = agent::init()?; // OTEL_* from the environment; installs the tracing bridge
    let app = Router::new()
        .route("/hello/{name}", get(hello))
        .route("/metrics", agent::metrics::prometheus::route(guard.agent()))
        .layer(guard.agent().http_layer()); // SERVER spans + RED metrics
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    guard.shutdown()?; // flush within the deadline (also on drop)
    Ok(())
}

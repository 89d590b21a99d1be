//! A 20-line axum service instrumented by the agent.
//!
//! ```sh
//! OTEL_SERVICE_NAME=hello OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 \
//!   cargo run -p agent --example hello
//! curl localhost:3000/hello/world; curl localhost:3000/metrics
//! ```

use axum::{extract::Path, routing::get, Router};

async fn hello(Path(name): Path<String>) -> String {
    tracing::info!(%name, "greeting"); // a JSON line with trace_id, and an OTLP log record
    format!("hello, {name}\n")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let guard = agent::init()?; // OTEL_* from the environment
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

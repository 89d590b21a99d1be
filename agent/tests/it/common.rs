//! Shared by the integration tests: an agent pointed at a real collector, an
//! axum server on a free port, and typed rows of the collector's tables.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::{AgentBuilder, AgentGuard, Config};
use axum::Router;
use testkit::TestCollector;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};

/// A `Write` whose bytes the test can read back (the JSON lines).
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().expect("capture lock").clone();
        String::from_utf8(bytes)
            .expect("utf-8 lines")
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
            .collect()
    }
}

/// A builder that ignores the process environment (tests must not depend on
/// it), exporting quickly to `endpoint`.
pub fn builder(service: &str, endpoint: &str) -> AgentBuilder {
    AgentBuilder::from_config(Config::default())
        .service_name(service)
        .endpoint(endpoint)
        .export_interval(Duration::from_millis(100))
        .metric_export_interval(Duration::from_millis(200))
}

pub fn start_agent(service: &str, collector: &TestCollector) -> (AgentGuard, Captured) {
    let lines = Captured::default();
    let guard = builder(service, &collector.grpc_endpoint())
        .log_writer(lines.clone())
        .start()
        .expect("agent starts");
    (guard, lines)
}

/// The subscriber `init()` installs globally — the span layer behind the span
/// filter, the log layer behind the log filter — for one test's runtime instead
/// ([`testkit::run_with_subscriber`]): every test of the crate shares one process.
pub fn subscriber(
    agent: &agent::Agent,
    log_filter: &str,
    span_filter: &str,
) -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::registry()
        .with(
            agent
                .tracing_layer()
                .with_filter(EnvFilter::new(span_filter)),
        )
        .with(agent.log_layer().with_filter(EnvFilter::new(log_filter)))
}

/// A test collector's config with its gRPC port chosen now, so the agent (and the
/// test's subscriber) can exist before the collector starts; returns the endpoint.
pub fn collector_config(prefix: &str) -> (testkit::CollectorConfig, String) {
    let mut config = testkit::test_config(&testkit::unique_database(prefix));
    let port = testkit::free_port();
    config.receivers.grpc_addr = format!("127.0.0.1:{port}");
    (config, format!("http://127.0.0.1:{port}"))
}

/// Serves `app` (with peer addresses for `client.address`) on a free port.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("serve");
    });
    addr
}

/// A free loopback port's connections, as the stream tonic's
/// `serve_with_incoming` takes, and its address.
pub async fn incoming() -> (
    impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>>,
    SocketAddr,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let stream = futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| s);
        Some((accepted, listener))
    });
    (stream, addr)
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
pub struct SpanRow {
    #[serde(rename = "TraceId")]
    pub trace_id: String,
    #[serde(rename = "SpanId")]
    pub span_id: String,
    #[serde(rename = "ParentSpanId")]
    pub parent_span_id: String,
    #[serde(rename = "TraceState")]
    pub trace_state: String,
    #[serde(rename = "SpanName")]
    pub span_name: String,
    #[serde(rename = "SpanKind")]
    pub span_kind: String,
    #[serde(rename = "ServiceName")]
    pub service_name: String,
    #[serde(rename = "SpanAttributes")]
    pub attributes: Vec<(String, String)>,
    #[serde(rename = "Duration")]
    pub duration: u64,
    #[serde(rename = "StatusCode")]
    pub status_code: String,
}

impl SpanRow {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub const SPAN_COLUMNS: &str = "TraceId, SpanId, ParentSpanId, TraceState, SpanName, \
    SpanKind, ServiceName, SpanAttributes, Duration, StatusCode";

/// The spans matching `filter`, once at least `at_least` are stored.
pub async fn spans(collector: &TestCollector, filter: &str, at_least: u64) -> Vec<SpanRow> {
    let n = collector
        .wait_for_rows("otel_traces", filter, at_least)
        .await;
    assert!(n >= at_least, "only {n} spans match {filter}");
    collector
        .client
        .query(&format!(
            "SELECT {SPAN_COLUMNS} FROM otel_traces WHERE {filter} ORDER BY Timestamp"
        ))
        .fetch_all::<SpanRow>()
        .await
        .expect("fetch spans")
}

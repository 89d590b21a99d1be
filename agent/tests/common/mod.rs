//! Shared by the integration tests: an agent pointed at a real collector, an
//! axum server on a free port, and typed rows of the collector's tables.
#![allow(dead_code)] // each test binary uses a different part

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::{AgentBuilder, AgentGuard, Config};
use axum::Router;
use collector::testing::TestCollector;

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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP attribute value as the collector stores it in a string map.
#[cfg(feature = "test-support")]
fn any_value_text(v: &opentelemetry_proto::tonic::common::v1::AnyValue) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match &v.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// The spans an in-memory exporter received whose trace id is `trace_id`, as
/// the rows the collector would store (names of kinds and status codes as in
/// `otel_traces`), so assertions read the same with or without a collector.
#[cfg(feature = "test-support")]
pub fn memory_spans(exporter: &agent::InMemoryExporter, trace_id: &str) -> Vec<SpanRow> {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    exporter
        .trace_requests()
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(any_value_text)
                .unwrap_or_default();
            rs.scope_spans
                .iter()
                .flat_map(|s| &s.spans)
                .map(move |s| (service.clone(), s))
        })
        .filter(|(_, s)| hex(&s.trace_id) == trace_id)
        .map(|(service_name, s)| SpanRow {
            trace_id: hex(&s.trace_id),
            span_id: hex(&s.span_id),
            parent_span_id: hex(&s.parent_span_id),
            trace_state: s.trace_state.clone(),
            span_name: s.name.clone(),
            span_kind: match SpanKind::try_from(s.kind) {
                Ok(SpanKind::Server) => "Server",
                Ok(SpanKind::Client) => "Client",
                Ok(SpanKind::Producer) => "Producer",
                Ok(SpanKind::Consumer) => "Consumer",
                Ok(SpanKind::Internal) => "Internal",
                _ => "Unspecified",
            }
            .to_string(),
            service_name,
            attributes: s
                .attributes
                .iter()
                .map(|a| {
                    let value = a.value.as_ref().map(any_value_text).unwrap_or_default();
                    (a.key.clone(), value)
                })
                .collect(),
            duration: s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano),
            status_code: match s.status.as_ref().map(|st| StatusCode::try_from(st.code)) {
                Some(Ok(StatusCode::Error)) => "Error",
                Some(Ok(StatusCode::Ok)) => "Ok",
                _ => "Unset",
            }
            .to_string(),
        })
        .collect()
}

//! JSON lines and OTLP log records carry the trace of the span they were logged
//! in. The subscriber `init` would install is this test's alone
//! (`testkit::run_with_subscriber`): the crate's tests share one process.

use crate::common;

use axum::routing::get;
use axum::Router;
use testkit::TestCollector;

use common::{builder, serve, spans, Captured};

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct LogRow {
    #[serde(rename = "TraceId")]
    trace_id: String,
    #[serde(rename = "SpanId")]
    span_id: String,
    #[serde(rename = "Body")]
    body: String,
    #[serde(rename = "SeverityText")]
    severity: String,
    #[serde(rename = "ScopeName")]
    scope: String,
    #[serde(rename = "LogAttributes")]
    attributes: Vec<(String, String)>,
}

/// The transport crates at trace level: whatever they log must still never come
/// back as exported records. The collector's own logs stay quiet.
const FILTER: &str = "info,h2=trace,hyper=trace,tonic=trace,collector=warn,clickhouse=warn";

#[test]
fn log_lines_carry_the_trace_id_of_the_stored_span() {
    let (config, endpoint) = common::collector_config("agent_logs");
    let lines = Captured::default();
    let guard = builder("logging-api", &endpoint)
        .log_filter(FILTER)
        .queue_capacity(2048, 65_536)
        .log_writer(lines.clone())
        .start()
        .expect("agent starts");
    let subscriber = common::subscriber(guard.agent(), FILTER, FILTER);
    testkit::run_with_subscriber(subscriber, 2, async move {
        let collector = TestCollector::start_with(config).await;
        run(collector, guard, lines).await
    })
}

async fn run(collector: TestCollector, guard: agent::AgentGuard, lines: Captured) {
    let app = Router::new()
        .route(
            "/orders/{id}",
            get(|| async {
                tracing::info!(order_id = 17u64, paid = true, "order looked up");
                "ok"
            }),
        )
        .layer(guard.agent().http_layer());
    let addr = serve(app).await;
    reqwest::get(format!("http://{addr}/orders/17"))
        .await
        .expect("request");
    tracing::warn!("outside any span");
    guard.shutdown_async().await.expect("flushed");

    let server = spans(&collector, "ServiceName = 'logging-api'", 1).await;
    let span = &server[0];

    let lines = lines.lines();
    let line = lines
        .iter()
        .find(|l| l["message"] == "order looked up")
        .unwrap_or_else(|| panic!("no JSON line for the event among {} lines", lines.len()));
    assert_eq!(line["trace_id"], span.trace_id.as_str());
    assert_eq!(line["span_id"], span.span_id.as_str());
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["target"], module_path!());
    assert_eq!(line["service"], "logging-api");
    assert_eq!(line["fields"]["order_id"], 17);
    assert_eq!(line["fields"]["paid"], true);
    assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    let outside = lines
        .iter()
        .find(|l| l["message"] == "outside any span")
        .expect("line outside a span");
    assert!(outside.get("trace_id").is_none(), "{outside}");

    let n = collector
        .wait_for_rows("otel_logs", "ServiceName = 'logging-api'", 2)
        .await;
    assert!(n >= 2, "{n} log records");
    let records = collector
        .client
        .query(
            "SELECT TraceId, SpanId, Body, SeverityText, ScopeName, LogAttributes \
             FROM otel_logs WHERE ServiceName = 'logging-api'",
        )
        .fetch_all::<LogRow>()
        .await
        .expect("fetch logs");
    let record = records
        .iter()
        .find(|r| r.body == "order looked up")
        .expect("exported record");
    assert_eq!(record.trace_id, span.trace_id);
    assert_eq!(record.span_id, span.span_id);
    assert_eq!(record.severity, "INFO");
    assert_eq!(record.scope, module_path!());
    assert!(record
        .attributes
        .contains(&("order_id".to_string(), "17".to_string())));
    let transport: Vec<&LogRow> = records
        .iter()
        .filter(|r| {
            ["h2", "hyper", "tonic"]
                .iter()
                .any(|t| r.scope.starts_with(t))
        })
        .collect();
    assert!(
        transport.is_empty(),
        "transport logs were exported: {transport:?}"
    );
    collector.stop().await;
}

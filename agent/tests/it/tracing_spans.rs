//! `tracing` spans become OTLP spans under the HTTP layer's SERVER span, nest
//! with the agent's own spans both ways, cross `tokio::spawn` and give their ids
//! to the log lines inside them. What `init` installs globally is this test's
//! alone (`testkit::run_with_subscriber`): the crate's tests share one process.

use crate::common;

use std::time::Duration;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use testkit::TestCollector;
use tower_http::trace::TraceLayer;
use tracing::{info, info_span, instrument, trace_span, Instrument};

use common::{builder, serve, spans, Captured, SpanRow};

const TRACE: &str = "5c0ffee0000000000000000000000001";
const CALLER: &str = "00000000000000c1";

#[instrument(fields(otel.name = "SELECT orders", otel.kind = "client", db.system.name = "postgresql"))]
async fn load(id: u32) -> u32 {
    tokio::time::sleep(Duration::from_millis(20)).await;
    info!(rows = 1u64, "order loaded");
    id * 2
}

#[instrument]
async fn notify(id: u32) {
    tokio::time::sleep(Duration::from_millis(10)).await;
    info!("customer notified");
}

#[instrument(err)]
async fn charge(id: u32) -> Result<(), std::io::Error> {
    Err(std::io::Error::other("card declined"))
}

#[instrument(skip_all, fields(order.id = id, order.total))]
async fn handle(id: u32, agent: agent::Agent) -> String {
    let total = load(id).await;
    tracing::Span::current().record("order.total", total);
    // The idiom for background work: the trace follows the spawned task.
    tokio::spawn(notify(id).in_current_span())
        .await
        .expect("spawned task");
    let priced = info_span!("price", items = 3).in_scope(|| {
        std::thread::sleep(Duration::from_millis(5));
        info!("priced synchronously");
        total + 1
    });
    // Below the span filter: never becomes a span.
    trace_span!("noise").in_scope(|| {});
    let _ = charge(id).await;
    // An agent span inside a `tracing` span, and a `tracing` span inside it.
    let inner = agent.start_span("agent span", agent::SpanKind::Internal);
    {
        let _entered = inner.enter();
        info_span!("under agent span").in_scope(|| info!("deep inside"));
    }
    inner.end();
    format!("order {id}: {priced}")
}

fn by_name<'a>(rows: &'a [SpanRow], name: &str) -> &'a SpanRow {
    rows.iter()
        .find(|r| r.span_name == name)
        .unwrap_or_else(|| panic!("no span {name:?} among {rows:#?}"))
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct LogIds {
    #[serde(rename = "SpanId")]
    span_id: String,
    #[serde(rename = "Body")]
    body: String,
}

/// tower-http's TraceLayer makes its spans at debug level.
const FILTER: &str = "info,tower_http=debug,collector=warn,clickhouse=warn";

/// What `init` installs globally is this test's alone (`run_with_subscriber`): the
/// crate's tests share one process.
#[test]
fn instrumented_code_becomes_a_tree_of_spans_under_the_server_span() {
    let (config, endpoint) = common::collector_config("agent_tracing_spans");
    let lines = Captured::default();
    let guard = builder("tracing-api", &endpoint)
        .log_filter(FILTER)
        .span_events(true)
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
    let agent = guard.agent().clone();
    let app = Router::new()
        .route(
            "/orders/{id}",
            get(move |Path(id): Path<u32>| handle(id, agent.clone())),
        )
        .layer(TraceLayer::new_for_http())
        .layer(guard.agent().http_layer());
    let addr = serve(app).await;
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/orders/21"))
        .header("traceparent", format!("00-{TRACE}-{CALLER}-01"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.text().await.expect("body"), "order 21: 43");
    guard.shutdown_async().await.expect("flushed");

    let rows = spans(&collector, &format!("TraceId = '{TRACE}'"), 9).await;
    let server = by_name(&rows, "GET /orders/{id}");
    assert_eq!(server.parent_span_id, CALLER);
    assert_eq!(server.span_kind, "Server");
    // A real library's span: tower-http's TraceLayer, inside the agent's layer.
    let request = by_name(&rows, "request");
    assert_eq!(request.parent_span_id, server.span_id);
    assert_eq!(request.attr("method"), Some("GET"));
    let handler = by_name(&rows, "handle");
    assert_eq!(handler.parent_span_id, request.span_id);
    assert_eq!(handler.attr("order.id"), Some("21"));
    assert_eq!(handler.attr("order.total"), Some("42"));
    assert_eq!(handler.span_kind, "Internal");
    let load = by_name(&rows, "SELECT orders");
    assert_eq!(load.parent_span_id, handler.span_id);
    assert_eq!(load.span_kind, "Client");
    assert_eq!(load.attr("db.system.name"), Some("postgresql"));
    assert_eq!(load.attr("id"), Some("21"));
    assert!(load.duration >= 20_000_000, "{load:?}");
    let notify = by_name(&rows, "notify");
    assert_eq!(notify.parent_span_id, handler.span_id);
    assert!(notify.duration >= 10_000_000, "{notify:?}");
    let price = by_name(&rows, "price");
    assert_eq!(price.parent_span_id, handler.span_id);
    assert!(price.duration >= 5_000_000, "{price:?}");
    assert_eq!(price.attr("items"), Some("3"));
    let charge = by_name(&rows, "charge");
    assert_eq!(charge.parent_span_id, handler.span_id);
    assert_eq!(charge.status_code, "Error");
    let agent_span = by_name(&rows, "agent span");
    assert_eq!(agent_span.parent_span_id, handler.span_id);
    let under = by_name(&rows, "under agent span");
    assert_eq!(under.parent_span_id, agent_span.span_id);
    assert!(rows.iter().all(|r| r.span_name != "noise"), "{rows:#?}");
    // A parent lasts at least as long as its children.
    for child in [load, notify, price] {
        assert!(handler.duration >= child.duration, "{handler:?} {child:?}");
    }
    assert!(server.duration >= handler.duration);

    // Log lines carry the innermost span's ids, on every thread.
    let lines = lines.lines();
    let line_span = |message: &str| {
        let line = lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no line {message:?}"));
        assert_eq!(line["trace_id"], TRACE);
        line["span_id"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(line_span("order loaded"), load.span_id);
    assert_eq!(line_span("customer notified"), notify.span_id);
    assert_eq!(line_span("priced synchronously"), price.span_id);
    assert_eq!(line_span("deep inside"), under.span_id);
    // So do the exported records.
    let filter = format!("TraceId = '{TRACE}'");
    collector.wait_for_rows("otel_logs", &filter, 4).await;
    let records = collector
        .client
        .query(&format!(
            "SELECT SpanId, Body FROM otel_logs WHERE {filter}"
        ))
        .fetch_all::<LogIds>()
        .await
        .expect("fetch logs");
    let record_span = |body: &str| {
        records
            .iter()
            .find(|r| r.body == body)
            .map(|r| r.span_id.clone())
    };
    assert_eq!(record_span("order loaded"), Some(load.span_id.clone()));
    assert_eq!(
        record_span("customer notified"),
        Some(notify.span_id.clone())
    );
    // Events inside a span also became span events (span_events on).
    let events: Vec<String> = collector
        .client
        .query(&format!(
            "SELECT Events.Name FROM otel_traces WHERE SpanId = '{}'",
            load.span_id
        ))
        .fetch_one()
        .await
        .expect("events");
    assert_eq!(events, ["order loaded"]);
    collector.stop().await;
}

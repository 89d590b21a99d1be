//! The span API (events, links, errors, overwritten and array attributes) and
//! the requests that end without a response, against a real collector and
//! ClickHouse.

use crate::common;

use std::time::Duration;

use agent::{Context, SpanContext, SpanId, SpanKind, TraceId};
use axum::body::Body;
use axum::routing::get;
use axum::Router;
use testkit::TestCollector;
use tower::ServiceExt;

use common::{spans, start_agent};

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct EventsRow {
    #[serde(rename = "SpanAttributes")]
    attributes: Vec<(String, String)>,
    #[serde(rename = "Events.Name")]
    event_names: Vec<String>,
    #[serde(rename = "Events.Attributes")]
    event_attributes: Vec<Vec<(String, String)>>,
    #[serde(rename = "Links.TraceId")]
    link_traces: Vec<String>,
    #[serde(rename = "Links.SpanId")]
    link_spans: Vec<String>,
    #[serde(rename = "Links.TraceState")]
    link_states: Vec<String>,
    #[serde(rename = "Links.Attributes")]
    link_attributes: Vec<Vec<(String, String)>>,
}

fn get_attr<'a>(attributes: &'a [(String, String)], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[derive(Debug, thiserror::Error)]
#[error("stock service unreachable")]
struct Unreachable(#[source] std::io::Error);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_links_errors_and_attributes_are_stored() {
    let collector = TestCollector::start("agent_span_api").await;
    let (guard, _lines) = start_agent("span-api", &collector);
    let agent = guard.agent().clone();

    let linked = Context {
        span: Some(SpanContext {
            trace_id: TraceId([0x11; 16]),
            span_id: SpanId([0x22; 8]),
            flags: 1,
            remote: true,
        }),
        trace_state: Some("vendor=linked".into()),
        baggage: None,
    };
    let mut span = agent.start_span_with_parent("reserve stock", SpanKind::Internal, None);
    let trace = span.trace_id().to_hex();
    span.set_attribute("stock.attempt", 1i64);
    span.set_attribute("stock.attempt", 2i64);
    span.set_attribute("stock.skus", vec!["a-1", "b-2"]);
    span.set_attribute("stock.quantities", vec![3i64, 4]);
    span.add_event(
        "reservation queued",
        vec![("queue.depth".into(), 7i64.into())],
    );
    span.add_link(&linked, vec![("link.reason".into(), "batch".into())]);
    span.record_error(&Unreachable(std::io::Error::other("connection refused")));
    span.end();
    guard.shutdown_async().await.expect("flushed");

    let filter = format!("TraceId = '{trace}'");
    let rows = spans(&collector, &filter, 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = collector
        .client
        .query(&format!(
            "SELECT SpanAttributes, Events.Name, Events.Attributes, Links.TraceId, \
             Links.SpanId, Links.TraceState, Links.Attributes FROM otel_traces WHERE {filter}"
        ))
        .fetch_one::<EventsRow>()
        .await
        .expect("fetch events");
    // Set twice: one attribute with the last value.
    let attempts: Vec<_> = row
        .attributes
        .iter()
        .filter(|(k, _)| k == "stock.attempt")
        .collect();
    assert_eq!(attempts.len(), 1, "{:?}", row.attributes);
    assert_eq!(get_attr(&row.attributes, "stock.attempt"), Some("2"));
    assert_eq!(
        get_attr(&row.attributes, "stock.skus"),
        Some(r#"["a-1","b-2"]"#)
    );
    assert_eq!(get_attr(&row.attributes, "stock.quantities"), Some("[3,4]"));
    assert_eq!(row.event_names, ["reservation queued", "exception"]);
    assert_eq!(get_attr(&row.event_attributes[0], "queue.depth"), Some("7"));
    let exception = &row.event_attributes[1];
    assert_eq!(
        get_attr(exception, "exception.message"),
        Some("stock service unreachable: connection refused")
    );
    assert!(
        get_attr(exception, "exception.type").is_some_and(|t| t.ends_with("Unreachable")),
        "{exception:?}"
    );
    assert_eq!(row.link_traces, ["11".repeat(16)]);
    assert_eq!(row.link_spans, ["22".repeat(8)]);
    assert_eq!(row.link_states, ["vendor=linked"]);
    assert_eq!(
        get_attr(&row.link_attributes[0], "link.reason"),
        Some("batch")
    );
    collector.stop().await;
}

fn request(path: &str) -> http::Request<Body> {
    http::Request::get(path)
        .header(
            "traceparent",
            format!("00-{}-{}-01", "ab".repeat(16), "cd".repeat(8)),
        )
        .body(Body::empty())
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_and_panicking_requests_still_end_their_spans_and_count() {
    let collector = TestCollector::start("agent_span_unfinished").await;
    let (guard, _lines) = start_agent("unfinished-api", &collector);
    let agent = guard.agent().clone();
    let app = Router::new()
        .route("/slow", get(std::future::pending::<&'static str>))
        .route(
            "/boom",
            get(|| async {
                if true {
                    panic!("inventory invariant broken");
                }
                "unreachable"
            }),
        )
        .layer(agent.http_layer());

    // A timeout outside the layer drops the request's future, as a client
    // going away or a tower timeout does.
    let timed_out = tokio::time::timeout(
        Duration::from_millis(50),
        app.clone().oneshot(request("/slow")),
    )
    .await;
    assert!(timed_out.is_err());
    // A panicking handler: the panic still reaches the runtime.
    let panicked = tokio::spawn(app.oneshot(request("/boom"))).await;
    assert!(panicked.is_err_and(|e| e.is_panic()));

    let red = agent.metrics_snapshot().series;
    let count = |route: &str, class: &str| {
        red.iter()
            .find(|s| s.route.as_ref() == route && s.status_class.as_str() == class)
            .map(|s| (s.requests, s.errors))
    };
    assert_eq!(count("/slow", "4xx"), Some((1, 0)), "{red:?}");
    assert_eq!(count("/boom", "5xx"), Some((1, 1)), "{red:?}");
    guard.shutdown_async().await.expect("flushed");

    let rows = spans(
        &collector,
        &format!(
            "TraceId = '{}' AND ServiceName = 'unfinished-api'",
            "ab".repeat(16)
        ),
        2,
    )
    .await;
    let slow = rows
        .iter()
        .find(|r| r.span_name == "GET /slow")
        .expect("slow span");
    assert_eq!(slow.attr("error.type"), Some("cancelled"));
    assert_eq!(slow.status_code, "Error");
    assert_eq!(slow.parent_span_id, "cd".repeat(8));
    assert!(slow.duration >= 50_000_000, "{slow:?}");
    let boom = rows
        .iter()
        .find(|r| r.span_name == "GET /boom")
        .expect("panicking span");
    assert_eq!(boom.attr("error.type"), Some("panic"));
    assert_eq!(boom.status_code, "Error");
    let message: String = collector
        .client
        .query(&format!(
            "SELECT Events.Attributes[1]['exception.message'] FROM otel_traces \
             WHERE SpanId = '{}'",
            boom.span_id
        ))
        .fetch_one()
        .await
        .expect("exception event");
    assert_eq!(message, "inventory invariant broken");
    collector.stop().await;
}

#[test]
fn a_disabled_agent_passes_the_incoming_context_through() {
    let guard = common::builder("disabled", "http://127.0.0.1:1")
        .disabled(true)
        .json_logs(false)
        .start()
        .expect("agent starts");
    let agent = guard.agent();
    let incoming = format!("00-{}-{}-01", "ab".repeat(16), "cd".repeat(8));
    let mut headers = http::HeaderMap::new();
    headers.insert("traceparent", incoming.parse().expect("header"));
    headers.insert("tracestate", "vendor=x".parse().expect("header"));
    let parent = agent.extract(&headers);
    let span = agent.start_span_with_parent("GET /x", SpanKind::Server, parent.as_ref());
    assert!(!span.is_recording());
    let child = {
        let _entered = span.enter();
        agent.start_span("call", SpanKind::Client)
    };
    let mut outgoing = http::HeaderMap::new();
    agent.inject(child.context(), &mut outgoing);
    assert_eq!(outgoing["traceparent"], incoming.as_str());
    assert_eq!(outgoing["tracestate"], "vendor=x");
}

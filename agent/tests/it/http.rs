//! The server layer and the reqwest client against a real collector and ClickHouse.

use crate::common;

use agent::SendTraced;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use testkit::TestCollector;

use common::{serve, spans, start_agent};

const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_traceparent_becomes_the_parent_of_the_server_span() {
    let collector = TestCollector::start("agent_http_parent").await;
    let (guard, _lines) = start_agent("users-api", &collector);
    let app = Router::new()
        .route(
            "/users/{id}",
            get(|Path(id): Path<u32>| async move { format!("user {id}") }),
        )
        .layer(guard.agent().http_layer());
    let addr = serve(app).await;

    let response = reqwest::Client::new()
        .get(format!("http://{addr}/users/42?verbose=1"))
        .header("traceparent", format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"))
        .header("tracestate", "vendor=abc")
        .header("user-agent", "agent-test/1.0")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "user 42");
    guard.shutdown_async().await.expect("flushed");

    let rows = spans(&collector, &format!("TraceId = '{PARENT_TRACE}'"), 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let span = &rows[0];
    assert_eq!(span.parent_span_id, PARENT_SPAN);
    assert_eq!(span.trace_state, "vendor=abc");
    assert_eq!(span.span_name, "GET /users/{id}");
    assert_eq!(span.span_kind, "Server");
    assert_eq!(span.service_name, "users-api");
    assert_eq!(span.status_code, "Unset");
    assert_eq!(span.attr("http.request.method"), Some("GET"));
    assert_eq!(span.attr("http.route"), Some("/users/{id}"));
    assert_eq!(span.attr("url.path"), Some("/users/42"));
    assert_eq!(span.attr("url.query"), Some("verbose=1"));
    assert_eq!(span.attr("url.scheme"), Some("http"));
    assert_eq!(span.attr("http.response.status_code"), Some("200"));
    assert_eq!(span.attr("server.address"), Some("127.0.0.1"));
    assert_eq!(
        span.attr("server.port"),
        Some(addr.port().to_string().as_str())
    );
    assert_eq!(span.attr("client.address"), Some("127.0.0.1"));
    assert_eq!(span.attr("user_agent.original"), Some("agent-test/1.0"));
    assert_eq!(span.attr("network.protocol.version"), Some("1.1"));
    assert_eq!(span.attr("error.type"), None);
    assert!(span.duration > 0);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_5xx_marks_the_server_span_as_error() {
    let collector = TestCollector::start("agent_http_status").await;
    let (guard, _lines) = start_agent("status-api", &collector);
    let app = Router::new()
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route("/broken", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
        .route("/fine", get(|| async { "ok" }))
        .layer(guard.agent().http_layer());
    let addr = serve(app).await;
    let client = reqwest::Client::new();
    for path in ["/missing", "/broken", "/fine"] {
        client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .expect("request");
    }
    let agent = guard.agent().clone();
    guard.shutdown_async().await.expect("flushed");

    let rows = spans(&collector, "ServiceName = 'status-api'", 3).await;
    let by_route = |route: &str| {
        rows.iter()
            .find(|r| r.attr("http.route") == Some(route))
            .unwrap_or_else(|| panic!("span for {route} in {rows:?}"))
    };
    let missing = by_route("/missing");
    assert_eq!(missing.status_code, "Unset");
    assert_eq!(missing.attr("http.response.status_code"), Some("404"));
    assert_eq!(missing.attr("error.type"), None);
    let broken = by_route("/broken");
    assert_eq!(broken.status_code, "Error");
    assert_eq!(broken.attr("error.type"), Some("503"));
    assert_eq!(by_route("/fine").status_code, "Unset");

    // RED: one request per series, the 503 counted as an error.
    let snapshot = agent.metrics_snapshot();
    let broken = snapshot
        .series
        .iter()
        .find(|s| &*s.route == "/broken")
        .expect("series");
    assert_eq!((broken.requests, broken.errors), (1, 1));
    assert_eq!(broken.status_class.as_str(), "5xx");
    let missing = snapshot
        .series
        .iter()
        .find(|s| &*s.route == "/missing")
        .expect("series");
    assert_eq!((missing.requests, missing.errors), (1, 0));
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_reqwest_call_carries_the_trace() {
    let collector = TestCollector::start("agent_http_client").await;
    let (backend_guard, _l1) = start_agent("backend", &collector);
    let backend = Router::new()
        .route("/stock/{sku}", get(|| async { "7" }))
        .layer(backend_guard.agent().http_layer());
    let backend_addr = serve(backend).await;

    let (front_guard, _l2) = start_agent("frontend", &collector);
    let front_agent = front_guard.agent().clone();
    let front = Router::new()
        .route(
            "/checkout",
            get(move |State(agent): State<agent::Agent>| async move {
                let stock = reqwest::Client::new()
                    .get(format!("http://{backend_addr}/stock/sku-1"))
                    .send_traced(&agent)
                    .await
                    .expect("backend call");
                format!("stock {}", stock.text().await.expect("body"))
            }),
        )
        .with_state(front_agent)
        .layer(front_guard.agent().http_layer());
    let front_addr = serve(front).await;

    let body = reqwest::get(format!("http://{front_addr}/checkout"))
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert_eq!(body, "stock 7");
    front_guard
        .shutdown_async()
        .await
        .expect("frontend flushed");
    backend_guard
        .shutdown_async()
        .await
        .expect("backend flushed");

    let front_server = spans(
        &collector,
        "ServiceName = 'frontend' AND SpanKind = 'Server'",
        1,
    )
    .await;
    let trace = &front_server[0].trace_id;
    let all = spans(&collector, &format!("TraceId = '{trace}'"), 3).await;
    assert_eq!(all.len(), 3, "{all:?}");
    let client = all
        .iter()
        .find(|s| s.span_kind == "Client")
        .expect("client span");
    let backend_server = all
        .iter()
        .find(|s| s.service_name == "backend")
        .expect("backend span");
    assert_eq!(front_server[0].parent_span_id, "");
    assert_eq!(client.parent_span_id, front_server[0].span_id);
    assert_eq!(client.service_name, "frontend");
    assert_eq!(client.span_name, "GET");
    assert_eq!(client.attr("server.address"), Some("127.0.0.1"));
    assert_eq!(client.attr("http.response.status_code"), Some("200"));
    assert_eq!(
        client.attr("url.full"),
        Some(format!("http://{backend_addr}/stock/sku-1").as_str())
    );
    assert_eq!(backend_server.parent_span_id, client.span_id);
    assert_eq!(backend_server.span_kind, "Server");
    assert_eq!(backend_server.span_name, "GET /stock/{sku}");
    collector.stop().await;
}

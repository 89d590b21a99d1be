//! The OpenTelemetry API bridge (feature `otel-api`) against the real collector:
//! spans made through `opentelemetry::global::tracer` land in the agent's
//! traces, nest both ways with agent and `tracing` spans, and log lines inside
//! them carry their ids.

use crate::common;

use std::collections::HashMap;

use agent::SpanKind;
use axum::routing::get;
use axum::Router;
use common::{builder, serve, spans, Captured, SpanRow};
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer};
use opentelemetry::{global, KeyValue};
use testkit::TestCollector;

/// An axum handler whose library code speaks the OpenTelemetry API only.
async fn checkout() -> String {
    let tracer = global::tracer("payments-lib");
    // The API's current context is empty here; the propagator injects the
    // agent's (the SERVER span).
    let mut headers = HashMap::new();
    global::get_text_map_propagator(|p| {
        p.inject_context(&opentelemetry::Context::current(), &mut headers)
    });
    tracer.in_span("charge", |cx| {
        let span = cx.span();
        span.set_attribute(KeyValue::new(
            "payment.attempts",
            opentelemetry::Value::Array(vec![1i64, 2].into()),
        ));
        span.add_event("card checked", vec![KeyValue::new("card.brand", "visa")]);
        span.record_error(&std::io::Error::other("declined once"));
        let mut call = tracer
            .span_builder("charge.gateway")
            .with_kind(opentelemetry::trace::SpanKind::Client)
            .start(&tracer);
        call.set_status(opentelemetry::trace::Status::error("gateway timeout"));
        call.end();

        tracing::info!("inside charge");
        tracing::info_span!("tracing.under.otel").in_scope(|| {});
        let agent = agent::Agent::global().expect("installed by init");
        let agent_span = agent.start_span("agent.under.otel", SpanKind::Internal);
        {
            let _entered = agent_span.enter();
            tracing::info!("inside the agent span");
            // Entered after the API span became current: the agent's is newer.
            tracer.in_span("otel.under.agent", |_| {});
        }
    });
    headers.remove("traceparent").expect("traceparent injected")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opentelemetry_api_spans_land_in_the_agents_traces() {
    let collector = TestCollector::start("agent_otel_api").await;
    let lines = Captured::default();
    let guard = builder("otel-api-app", &collector.grpc_endpoint())
        .log_writer(lines.clone())
        .init()
        .expect("init installs the agent globally");
    let agent = guard.agent().clone();
    let addr = serve(
        Router::new()
            .route("/checkout", get(checkout))
            .layer(agent.http_layer()),
    )
    .await;
    let traceparent = reqwest::get(format!("http://{addr}/checkout"))
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    let mut parts = traceparent.split('-');
    let (trace_id, server_span_id) = (
        parts.nth(1).expect("trace id"),
        parts.next().expect("span id"),
    );
    guard.shutdown_async().await.expect("flushed");

    let rows = spans(&collector, &format!("TraceId = '{trace_id}'"), 6).await;
    let by_name: HashMap<&str, &SpanRow> = rows.iter().map(|r| (r.span_name.as_str(), r)).collect();
    assert_eq!(rows.len(), 6, "{rows:#?}");
    let parent_of = |name: &str| {
        let id = &by_name[name].parent_span_id;
        rows.iter()
            .find(|r| &r.span_id == id)
            .map_or("(none)", |r| r.span_name.as_str())
    };
    assert_eq!(by_name["GET /checkout"].span_id, server_span_id);
    assert_eq!(parent_of("charge"), "GET /checkout");
    assert_eq!(parent_of("charge.gateway"), "charge");
    assert_eq!(parent_of("tracing.under.otel"), "charge");
    assert_eq!(parent_of("agent.under.otel"), "charge");
    assert_eq!(parent_of("otel.under.agent"), "agent.under.otel");
    let gateway = by_name["charge.gateway"];
    assert_eq!(
        (gateway.span_kind.as_str(), gateway.status_code.as_str()),
        ("Client", "Error")
    );
    assert!(by_name["charge"].attr("payment.attempts").is_some());

    #[derive(Debug, clickhouse::Row, serde::Deserialize)]
    struct Events {
        #[serde(rename = "Events.Name")]
        names: Vec<String>,
    }
    let events = collector
        .client
        .query("SELECT Events.Name FROM otel_traces WHERE SpanId = ?")
        .bind(&by_name["charge"].span_id)
        .fetch_one::<Events>()
        .await
        .expect("events");
    assert_eq!(events.names, ["card checked", "exception"]);

    let lines = lines.lines();
    let line = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("{message:?} in {lines:#?}"))
            .clone()
    };
    assert_eq!(
        line("inside charge")["span_id"],
        by_name["charge"].span_id.as_str()
    );
    assert_eq!(
        line("inside the agent span")["span_id"],
        by_name["agent.under.otel"].span_id.as_str()
    );
    collector.stop().await;
}

//! Spans and logs of four services, exported with the official OpenTelemetry Rust
//! SDK to a real collector, with exact times so pages can be checked figure by
//! figure: an order trace across frontend → checkout → worker (a call, an
//! exception, a message with a link), 30 product requests of 20 ms (3 failed),
//! canary requests and a 1500-span batch trace.

// Each test crate that includes this module reads a different part of it.

use std::time::{Duration, SystemTime};

use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use testkit::TestCollector;

pub struct Fixture {
    pub order_trace: String,
    /// (name, span id, parent span id) in the waterfall's depth-first order.
    pub order_spans: Vec<(&'static str, String, String)>,
    /// (start, duration) in ms of the order trace's spans, in that order (the
    /// browser test measures the bars against them).
    pub order_times: Vec<(u64, u64)>,
    pub product_traces: Vec<String>,
    pub big_trace: String,
    pub spans: usize,
}

struct Service {
    traces: SdkTracerProvider,
    logs: SdkLoggerProvider,
    tracer: SdkTracer,
}

fn service(endpoint: &str, name: &str, version: &str) -> Service {
    let resource = Resource::builder()
        .with_service_name(name.to_string())
        .with_attribute(KeyValue::new("service.version", version.to_string()))
        .build();
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .unwrap();
    let traces = SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(resource.clone())
        .build();
    let logs = opentelemetry_otlp::LogExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .unwrap();
    let logs = SdkLoggerProvider::builder()
        .with_batch_exporter(logs)
        .with_resource(resource)
        .build();
    let tracer = traces.tracer("ui-fixture");
    Service {
        traces,
        logs,
        tracer,
    }
}

struct SpanSpec<'a> {
    name: &'static str,
    kind: SpanKind,
    start_ms: u64,
    parent: Option<&'a SpanContext>,
    attributes: Vec<KeyValue>,
    links: Vec<Link>,
}

fn span(svc: &Service, base: SystemTime, s: SpanSpec<'_>) -> opentelemetry_sdk::trace::Span {
    let cx = match s.parent {
        Some(p) => Context::new().with_remote_span_context(p.clone()),
        None => Context::new(),
    };
    svc.tracer
        .span_builder(s.name)
        .with_kind(s.kind)
        .with_start_time(base + Duration::from_millis(s.start_ms))
        .with_attributes(s.attributes)
        .with_links(s.links)
        .start_with_context(&svc.tracer, &cx)
}

fn end(mut span: opentelemetry_sdk::trace::Span, base: SystemTime, end_ms: u64) -> SpanContext {
    let sc = span.span_context().clone();
    span.end_with_timestamp(base + Duration::from_millis(end_ms));
    sc
}

fn log(
    svc: &Service,
    at: SystemTime,
    severity: Severity,
    text: &'static str,
    body: &str,
    sc: &SpanContext,
) {
    let logger = svc.logs.logger("ui-fixture");
    let mut r = logger.create_log_record();
    r.set_timestamp(at);
    r.set_severity_number(severity);
    r.set_severity_text(text);
    r.set_body(body.to_string().into());
    r.set_trace_context(sc.trace_id(), sc.span_id(), Some(sc.trace_flags()));
    logger.emit(r);
}

fn simple<'a>(
    name: &'static str,
    kind: SpanKind,
    start_ms: u64,
    parent: Option<&'a SpanContext>,
    attributes: Vec<KeyValue>,
) -> SpanSpec<'a> {
    SpanSpec {
        name,
        kind,
        start_ms,
        parent,
        attributes,
        links: vec![],
    }
}

/// Sends the data set and waits until ClickHouse holds all of it.
pub async fn load(c: &TestCollector) -> Fixture {
    let ep = c.grpc_endpoint();
    let frontend = service(&ep, "frontend", "1.0");
    let checkout = service(&ep, "checkout", "2.0");
    let canary = service(&ep, "checkout", "2.1-canary");
    let worker = service(&ep, "worker", "1.0");
    let batcher = service(&ep, "batcher", "1.0");
    let base = SystemTime::now() - Duration::from_secs(300);

    // The order: times in ms from `base`, nested as the waterfall shows them.
    let s = |name, kind, start, parent, attrs| simple(name, kind, start, parent, attrs);
    let root = span(
        &frontend,
        base,
        s(
            "GET /checkout",
            SpanKind::Server,
            0,
            None,
            vec![
                KeyValue::new("http.route", "/checkout"),
                KeyValue::new("http.response.status_code", 200),
            ],
        ),
    );
    let root_sc = root.span_context().clone();
    let call = span(
        &frontend,
        base,
        s("POST /orders", SpanKind::Client, 5, Some(&root_sc), vec![]),
    );
    let call_sc = call.span_context().clone();
    let server = span(
        &checkout,
        base,
        s(
            "POST /orders",
            SpanKind::Server,
            10,
            Some(&call_sc),
            vec![
                KeyValue::new("http.route", "/orders"),
                KeyValue::new("order.id", "42"),
            ],
        ),
    );
    let server_sc = server.span_context().clone();
    let validate = span(
        &checkout,
        base,
        s("validate", SpanKind::Internal, 12, Some(&server_sc), vec![]),
    );
    let mut charge = span(
        &checkout,
        base,
        s(
            "charge card",
            SpanKind::Internal,
            25,
            Some(&server_sc),
            vec![],
        ),
    );
    charge.add_event_with_timestamp(
        "exception",
        base + Duration::from_millis(50),
        vec![
            KeyValue::new("exception.type", "CardDeclined"),
            KeyValue::new("exception.message", "the issuer declined card 'x'"),
            KeyValue::new(
                "exception.stacktrace",
                "at charge (pay.rs:12)\nat order (orders.rs:40)",
            ),
        ],
    );
    charge.set_status(Status::error("card declined"));
    let charge_sc = charge.span_context().clone();
    let publish = span(
        &checkout,
        base,
        s(
            "orders publish",
            SpanKind::Producer,
            60,
            Some(&server_sc),
            vec![KeyValue::new("messaging.destination.name", "orders")],
        ),
    );
    let publish_sc = publish.span_context().clone();
    let process = span(
        &worker,
        base,
        SpanSpec {
            links: vec![Link::with_context(publish_sc.clone())],
            ..s(
                "orders process",
                SpanKind::Consumer,
                65,
                Some(&publish_sc),
                vec![KeyValue::new("messaging.destination.name", "orders")],
            )
        },
    );
    let process_sc = process.span_context().clone();
    log(
        &frontend,
        base + Duration::from_millis(1),
        Severity::Info,
        "INFO",
        "checkout started for cart 42",
        &root_sc,
    );
    log(
        &checkout,
        base + Duration::from_millis(52),
        Severity::Error,
        "ERROR",
        "payment declined: card 'x' \\ rejected <b>now</b>",
        &charge_sc,
    );
    log(
        &worker,
        base + Duration::from_millis(90),
        Severity::Info,
        "INFO",
        "order processed",
        &process_sc,
    );
    let order_times = vec![
        (0, 100),
        (5, 80),
        (10, 70),
        (12, 10),
        (25, 30),
        (60, 2),
        (65, 30),
    ];
    let parents = [
        String::new(),
        root_sc.span_id().to_string(),
        call_sc.span_id().to_string(),
        server_sc.span_id().to_string(),
        server_sc.span_id().to_string(),
        server_sc.span_id().to_string(),
        publish_sc.span_id().to_string(),
    ];
    let mut order_spans = Vec::new();
    for (((name, sp), (start, dur)), parent) in [
        ("GET /checkout", root),
        ("POST /orders (client)", call),
        ("POST /orders", server),
        ("validate", validate),
        ("charge card", charge),
        ("orders publish", publish),
        ("orders process", process),
    ]
    .into_iter()
    .zip(&order_times)
    .zip(parents)
    {
        let sc = end(sp, base, start + dur);
        order_spans.push((name, sc.span_id().to_string(), parent));
    }

    // 30 product requests of 20 ms, one a second; the first three fail.
    let mut product_traces = Vec::new();
    for i in 0..30u64 {
        let status = if i < 3 { 500 } else { 200 };
        let mut sp = span(
            &frontend,
            base,
            s(
                "GET /products",
                SpanKind::Server,
                1000 + i * 1000,
                None,
                vec![
                    KeyValue::new("http.route", "/products"),
                    KeyValue::new("http.response.status_code", status),
                ],
            ),
        );
        if i < 3 {
            sp.set_status(Status::error("upstream failed"));
        }
        product_traces.push(sp.span_context().trace_id().to_string());
        end(sp, base, 1000 + i * 1000 + 20);
    }
    // Canary requests of the checkout service.
    for i in 0..2u64 {
        let sp = span(
            &canary,
            base,
            s(
                "POST /orders",
                SpanKind::Server,
                2000 + i * 500,
                None,
                vec![KeyValue::new("http.route", "/orders")],
            ),
        );
        end(sp, base, 2000 + i * 500 + 40);
    }
    // A batch of 1500 spans: one root and 1499 steps of 1.5 ms, 2 ms apart.
    let batch = span(
        &batcher,
        base,
        s("batch", SpanKind::Internal, 40_000, None, vec![]),
    );
    let batch_sc = batch.span_context().clone();
    for i in 0..1499u64 {
        let sp = span(
            &batcher,
            base,
            s(
                "step",
                SpanKind::Internal,
                40_000 + i * 2,
                Some(&batch_sc),
                vec![KeyValue::new("step", i as i64)],
            ),
        );
        end(sp, base, 40_000 + i * 2 + 1);
    }
    end(batch, base, 43_000);

    let spans = 7 + 30 + 2 + 1500;
    tokio::task::spawn_blocking(move || {
        for s in [frontend, checkout, canary, worker, batcher] {
            s.traces.shutdown().unwrap();
            s.logs.shutdown().unwrap();
        }
    })
    .await
    .unwrap();
    assert_eq!(
        c.wait_for_rows("otel_traces", "", spans as u64).await,
        spans as u64
    );
    assert_eq!(c.wait_for_rows("otel_logs", "", 3).await, 3);
    Fixture {
        order_trace: root_sc.trace_id().to_string(),
        order_spans,
        order_times,
        product_traces,
        big_trace: batch_sc.trace_id().to_string(),
        spans,
    }
}

//! The official OpenTelemetry Rust SDK's OTLP exporter (a real client) against the
//! collector: its spans, logs and metrics end up in ClickHouse.

use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use testkit::TestCollector;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_exports_traces_logs_and_metrics() {
    let c = TestCollector::start("sdk").await;
    let ep = c.grpc_endpoint();
    let resource = Resource::builder().with_service_name("sdk-service").build();

    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&ep)
        .build()
        .unwrap();
    let tracer_provider = SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(resource.clone())
        .build();
    let logs = opentelemetry_otlp::LogExporter::builder()
        .with_tonic()
        .with_endpoint(&ep)
        .build()
        .unwrap();
    let logger_provider = SdkLoggerProvider::builder()
        .with_batch_exporter(logs)
        .with_resource(resource.clone())
        .build();
    let metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(&ep)
        .build()
        .unwrap();
    let meter_provider = SdkMeterProvider::builder()
        .with_periodic_exporter(metrics)
        .with_resource(resource)
        .build();

    let tracer = tracer_provider.tracer("sdk-test");
    let (trace_id, parent_id) = tracer.in_span("parent", |cx| {
        let span = cx.span();
        let ids = (
            span.span_context().trace_id(),
            span.span_context().span_id(),
        );
        let mut child = tracer.start("child");
        child.set_attribute(KeyValue::new("k", "v"));
        child.end();
        ids
    });

    let logger = logger_provider.logger("sdk-test");
    let mut record = logger.create_log_record();
    record.set_body("hello from the sdk".into());
    record.set_severity_number(Severity::Warn);
    record.set_severity_text("WARN");
    logger.emit(record);

    let meter = meter_provider.meter("sdk-test");
    let counter = meter.u64_counter("sdk.requests").build();
    counter.add(3, &[KeyValue::new("route", "/a")]);
    let histogram = meter.f64_histogram("sdk.latency").build();
    histogram.record(0.25, &[]);
    histogram.record(0.75, &[]);

    // Shutdown flushes every provider; the exporters block, so off the async workers.
    tokio::task::spawn_blocking(move || {
        tracer_provider.shutdown().unwrap();
        logger_provider.shutdown().unwrap();
        meter_provider.shutdown().unwrap();
    })
    .await
    .unwrap();

    assert_eq!(
        c.wait_for_rows("otel_traces", "ServiceName = 'sdk-service'", 2)
            .await,
        2
    );
    let (parent_of_child, attr): (String, String) = c
        .client
        .query("SELECT ParentSpanId, SpanAttributes['k'] FROM otel_traces WHERE SpanName = 'child' AND TraceId = ?")
        .bind(trace_id.to_string())
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (parent_of_child, attr),
        (parent_id.to_string(), "v".to_string())
    );

    assert_eq!(
        c.wait_for_rows("otel_logs", "ServiceName = 'sdk-service'", 1)
            .await,
        1
    );
    let (body, severity): (String, String) = c
        .client
        .query("SELECT Body, SeverityText FROM otel_logs WHERE ServiceName = 'sdk-service'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (body.as_str(), severity.as_str()),
        ("hello from the sdk", "WARN")
    );

    assert_eq!(
        c.wait_for_rows("otel_metrics_sum", "MetricName = 'sdk.requests'", 1)
            .await,
        1
    );
    let (value, route, monotonic): (f64, String, bool) = c
        .client
        .query("SELECT Value, Attributes['route'], IsMonotonic FROM otel_metrics_sum WHERE MetricName = 'sdk.requests'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!((value, route.as_str(), monotonic), (3.0, "/a", true));
    assert_eq!(
        c.wait_for_rows("otel_metrics_histogram", "MetricName = 'sdk.latency'", 1)
            .await,
        1
    );
    let (count, sum): (u64, f64) = c
        .client
        .query("SELECT Count, Sum FROM otel_metrics_histogram WHERE MetricName = 'sdk.latency'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!((count, sum), (2, 1.0));
    c.stop().await;
}

//! Databases made by the OpenTelemetry Collector's ClickHouse exporter (current and
//! earlier releases, checked in under `tests/fixtures/upstream/` with the upstream
//! commits they match) are written to as they are, with `create_schema = false`.

use crate::common;

use std::time::Duration;

use collector::schema::probe_report;
use common::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    exemplar, exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point, Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge,
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use testkit::upstream::{CURRENT, OLDER};
use testkit::{clickhouse_url, eventually, test_config, unique_database, TestCollector};

/// Seconds of the metric points (T1) and their start.
const T1: u64 = 1_700_000_100_000_000_000;
const T1_SECS: u32 = 1_700_000_100;

fn span() -> Span {
    Span {
        trace_id: TRACE.to_vec(),
        span_id: SPAN.to_vec(),
        name: "GET /items".into(),
        kind: 2,
        start_time_unix_nano: T0,
        end_time_unix_nano: T0 + 5_000_000,
        ..Default::default()
    }
}

fn logs(service: &str) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(service),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: T0,
                    body: s("written into the upstream table"),
                    trace_id: TRACE.to_vec(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn metrics(service: &str) -> ExportMetricsServiceRequest {
    let exemplars = || {
        vec![Exemplar {
            time_unix_nano: T1,
            span_id: SPAN.to_vec(),
            trace_id: TRACE.to_vec(),
            value: Some(exemplar::Value::AsDouble(42.0)),
            ..Default::default()
        }]
    };
    let number = |v| NumberDataPoint {
        attributes: vec![kv("core", s("0"))],
        start_time_unix_nano: T1 - 10_000_000_000,
        time_unix_nano: T1,
        exemplars: exemplars(),
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    };
    let metric = |name: &str, data| Metric {
        name: name.into(),
        data: Some(data),
        ..Default::default()
    };
    let all = vec![
        metric(
            "gauge",
            Data::Gauge(Gauge {
                data_points: vec![number(1.5)],
            }),
        ),
        metric(
            "sum",
            Data::Sum(Sum {
                data_points: vec![number(2.5)],
                aggregation_temporality: 2,
                is_monotonic: true,
            }),
        ),
        metric(
            "histogram",
            Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    start_time_unix_nano: T1 - 10_000_000_000,
                    time_unix_nano: T1,
                    count: 3,
                    sum: Some(3.5),
                    bucket_counts: vec![1, 2],
                    explicit_bounds: vec![1.0],
                    exemplars: exemplars(),
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            }),
        ),
        metric(
            "exponential_histogram",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    start_time_unix_nano: T1 - 10_000_000_000,
                    time_unix_nano: T1,
                    count: 2,
                    sum: Some(4.5),
                    positive: Some(Buckets {
                        offset: 0,
                        bucket_counts: vec![2],
                    }),
                    exemplars: exemplars(),
                    ..Default::default()
                }],
                aggregation_temporality: 1,
            }),
        ),
        metric(
            "summary",
            Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    start_time_unix_nano: T1 - 10_000_000_000,
                    time_unix_nano: T1,
                    count: 4,
                    sum: 5.5,
                    quantile_values: vec![summary_data_point::ValueAtQuantile {
                        quantile: 0.5,
                        value: 1.0,
                    }],
                    ..Default::default()
                }],
            }),
        ),
    ];
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(service),
            scope_metrics: vec![ScopeMetrics {
                metrics: all,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One row of a metric table, whatever its time precision: name, start and time
/// in seconds, the value column, the first exemplar's time (0 for summaries).
async fn metric_row(
    c: &TestCollector,
    kind: &str,
    value: &str,
) -> Option<(String, u32, u32, f64, u32)> {
    let exemplar = if kind == "summary" {
        "toUInt32(0)".to_string()
    } else {
        "toUInt32(toUnixTimestamp(Exemplars.TimeUnix[1]))".to_string()
    };
    c.client
        .query(&format!(
            "SELECT toString(MetricName), toUInt32(toUnixTimestamp(StartTimeUnix)), \
             toUInt32(toUnixTimestamp(TimeUnix)), toFloat64({value}), {exemplar} \
             FROM otel_metrics_{kind}"
        ))
        .fetch_optional()
        .await
        .expect("select")
}

async fn writes_into(fixture: &str, prefix: &str) {
    let database = unique_database(prefix);
    let admin = clickhouse::Client::default().with_url(clickhouse_url());
    create_fixture(&admin, fixture, &database).await;

    let mut config = test_config(&database);
    config.clickhouse.create_schema = false;
    let c = TestCollector::start_with(config).await;
    let (status, body) = c.admin_get("/health/ready").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("table otel_traces_red_1m lacks columns * (the table is absent)"),
        "our extras are reported, not blocking: {body}"
    );

    let service = "upstream-made";
    for (path, body) in [
        (
            "/v1/traces",
            traces_request(service, vec![span()]).encode_to_vec(),
        ),
        ("/v1/logs", logs(service).encode_to_vec()),
        ("/v1/metrics", metrics(service).encode_to_vec()),
    ] {
        let (status, _, text) = post(
            &c.http_endpoint(),
            path,
            "application/x-protobuf",
            body,
            false,
        )
        .await;
        assert_eq!(status, 200, "{path}: {text:?}");
    }

    let filter =
        format!("TraceId = '{TRACE_HEX}' AND SpanName = 'GET /items' AND Duration = 5000000");
    assert_eq!(c.wait_for_rows("otel_traces", &filter, 1).await, 1);
    // The view's rows land after the source table's part is visible (ClickHouse
    // writes the source first, then pushes to views), so the lookup is polled.
    let (start, end): (u32, u32) = eventually(Duration::from_secs(30), || async {
        c.client
            .query("SELECT toUInt32(min(Start)), toUInt32(max(End)) FROM otel_traces_trace_id_ts WHERE TraceId = ? HAVING count() > 0")
            .bind(TRACE_HEX)
            .fetch_optional()
            .await
            .expect("select the lookup")
    })
    .await
    .expect("the lookup row within 30 s");
    let t0_secs = (T0 / 1_000_000_000) as u32;
    assert_eq!(
        (start, end),
        (t0_secs, t0_secs),
        "the upstream view filled the lookup"
    );
    let log_filter = format!("Body = 'written into the upstream table' AND TraceId = '{TRACE_HEX}' AND toUnixTimestamp64Nano(Timestamp) = {T0}");
    assert_eq!(c.wait_for_rows("otel_logs", &log_filter, 1).await, 1);

    for (kind, value, expected) in [
        ("gauge", "Value", 1.5),
        ("sum", "Value", 2.5),
        ("histogram", "Sum", 3.5),
        ("exponential_histogram", "Sum", 4.5),
        ("summary", "Sum", 5.5),
    ] {
        let row = eventually(Duration::from_secs(30), || metric_row(&c, kind, value))
            .await
            .unwrap_or_else(|| panic!("no {kind} row"));
        let exemplar = if kind == "summary" { 0 } else { T1_SECS };
        assert_eq!(
            row,
            (kind.to_string(), T1_SECS - 10, T1_SECS, expected, exemplar),
            "{kind}"
        );
    }
    c.stop().await;
}

/// The current upstream layout: DateTime metric times, as ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_upstream_tables_are_written_as_they_are() {
    writes_into(CURRENT, "upstream_current").await;
}

/// The earlier upstream layout: DateTime64(9) metric times (rows re-encoded),
/// `MetricName String`, logs with `TimestampTime`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earlier_upstream_tables_are_written_with_re_encoded_times() {
    writes_into(OLDER, "upstream_older").await;
}

/// With `create_schema` on, our extras are added to an upstream-made database and
/// its own tables are left as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_schema_adds_our_extras_to_an_upstream_database() {
    let database = unique_database("upstream_extras");
    let admin = clickhouse::Client::default().with_url(clickhouse_url());
    create_fixture(&admin, OLDER, &database).await;
    let before = probe_report(&admin, &database).await.unwrap();
    assert_eq!(before.problems, []);
    assert!(!before.absent_extras.is_empty());
    assert_eq!(
        before.casts.len(),
        5,
        "every metric table needs its times re-encoded"
    );

    let c = TestCollector::start_with(test_config(&database)).await;
    let after = probe_report(&admin, &database).await.unwrap();
    assert_eq!(after.absent_extras, []);
    let metric_time: String = admin
        .query("SELECT type FROM system.columns WHERE database = ? AND table = 'otel_metrics_gauge' AND name = 'TimeUnix'")
        .bind(&database)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        metric_time, "DateTime64(9)",
        "upstream tables are not altered"
    );
    c.stop().await;
}

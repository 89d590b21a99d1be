//! Every signal over every transport, read back from ClickHouse column by column.

use crate::common;

use collector::schema::{
    ExponentialHistogramRow, GaugeRow, HistogramRow, LogRow, Row, SpanRow, SumRow, SummaryRow,
    EXPONENTIAL_HISTOGRAM, GAUGE, HISTOGRAM, LOGS, SUM, SUMMARY, TRACES,
};
use common::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValueList};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    exemplar, exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point, Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge,
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use std::time::Duration;
use testkit::{eventually, TestCollector};

fn traces(service: &str) -> ExportTraceServiceRequest {
    let server = Span {
        trace_id: TRACE.to_vec(),
        span_id: SPAN.to_vec(),
        trace_state: "vendor=x".into(),
        parent_span_id: PARENT.to_vec(),
        name: "GET /users/{id}".into(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: T0,
        end_time_unix_nano: T0 + 1_500_000,
        attributes: vec![
            kv("http.route", s("/users/{id}")),
            kv("http.response.status_code", int(500)),
            kv(
                "a.bool",
                Some(AnyValue {
                    value: Some(any_value::Value::BoolValue(true)),
                }),
            ),
        ],
        events: vec![span::Event {
            time_unix_nano: T0 + 1000,
            name: "exception".into(),
            attributes: vec![kv("exception.message", s("boom"))],
            ..Default::default()
        }],
        links: vec![span::Link {
            trace_id: [0x22; 16].to_vec(),
            span_id: [0x33; 8].to_vec(),
            trace_state: "k=v".into(),
            attributes: vec![kv("link.kind", s("follows"))],
            ..Default::default()
        }],
        status: Some(Status {
            message: "boom".into(),
            code: status::StatusCode::Error as i32,
        }),
        ..Default::default()
    };
    let client = Span {
        trace_id: TRACE.to_vec(),
        span_id: [0x12; 8].to_vec(),
        name: "SELECT users".into(),
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: T0 + 3_000_000_000,
        end_time_unix_nano: T0 + 3_000_000_250,
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(service),
            scope_spans: vec![ScopeSpans {
                scope: scope(),
                spans: vec![server, client],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn expected_spans(service: &str) -> Vec<SpanRow> {
    vec![
        SpanRow {
            timestamp: T0 as i64,
            trace_id: TRACE_HEX.into(),
            span_id: SPAN_HEX.into(),
            parent_span_id: PARENT_HEX.into(),
            trace_state: "vendor=x".into(),
            span_name: "GET /users/{id}".into(),
            span_kind: "Server".into(),
            service_name: service.into(),
            resource_attributes: resource_map(service),
            scope_name: "scope-a".into(),
            scope_version: "1.2.3".into(),
            span_attributes: map(&[
                ("a.bool", "true"),
                ("http.response.status_code", "500"),
                ("http.route", "/users/{id}"),
            ]),
            duration: 1_500_000,
            status_code: "Error".into(),
            status_message: "boom".into(),
            events_timestamp: vec![T0 as i64 + 1000],
            events_name: vec!["exception".into()],
            events_attributes: vec![map(&[("exception.message", "boom")])],
            links_trace_id: vec!["22".repeat(16)],
            links_span_id: vec!["33".repeat(8)],
            links_trace_state: vec!["k=v".into()],
            links_attributes: vec![map(&[("link.kind", "follows")])],
        },
        SpanRow {
            timestamp: T0 as i64 + 3_000_000_000,
            trace_id: TRACE_HEX.into(),
            span_id: "12".repeat(8),
            span_name: "SELECT users".into(),
            span_kind: "Client".into(),
            service_name: service.into(),
            resource_attributes: resource_map(service),
            scope_name: "scope-a".into(),
            scope_version: "1.2.3".into(),
            duration: 250,
            status_code: "Unset".into(),
            ..Default::default()
        },
    ]
}

fn logs(service: &str) -> ExportLogsServiceRequest {
    let with_trace = LogRecord {
        time_unix_nano: T0,
        observed_time_unix_nano: T0 + 500,
        severity_number: 9,
        severity_text: "INFO".into(),
        body: s("hello"),
        attributes: vec![kv("user.id", int(42))],
        flags: 1,
        trace_id: TRACE.to_vec(),
        span_id: SPAN.to_vec(),
        event_name: "login".into(),
        ..Default::default()
    };
    let observed_only = LogRecord {
        time_unix_nano: 0,
        observed_time_unix_nano: T0 + 7,
        severity_number: 17,
        severity_text: "ERROR".into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::KvlistValue(KeyValueList {
                values: vec![kv("a", int(1))],
            })),
        }),
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(service),
            scope_logs: vec![ScopeLogs {
                scope: scope(),
                log_records: vec![with_trace, observed_only],
                schema_url: "scope-url".into(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
        }],
    }
}

fn expected_logs(service: &str) -> Vec<LogRow> {
    let common = LogRow {
        service_name: service.into(),
        resource_schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
        resource_attributes: resource_map(service),
        scope_schema_url: "scope-url".into(),
        scope_name: "scope-a".into(),
        scope_version: "1.2.3".into(),
        scope_attributes: map(&[("scope.attr", "x")]),
        ..Default::default()
    };
    vec![
        LogRow {
            timestamp: T0 as i64,
            trace_id: TRACE_HEX.into(),
            span_id: SPAN_HEX.into(),
            trace_flags: 1,
            severity_text: "INFO".into(),
            severity_number: 9,
            body: "hello".into(),
            log_attributes: map(&[("user.id", "42")]),
            event_name: "login".into(),
            ..common.clone()
        },
        LogRow {
            timestamp: T0 as i64 + 7,
            severity_text: "ERROR".into(),
            severity_number: 17,
            body: r#"{"a":1}"#.into(),
            ..common
        },
    ]
}

const T1: u64 = 1_700_000_100_000_000_000;
const T1_SECS: u32 = 1_700_000_100;

fn point_attrs() -> Vec<opentelemetry_proto::tonic::common::v1::KeyValue> {
    vec![kv("core", s("0"))]
}

fn exemplars() -> Vec<Exemplar> {
    vec![Exemplar {
        filtered_attributes: vec![kv("f", s("1"))],
        time_unix_nano: T1,
        span_id: SPAN.to_vec(),
        trace_id: TRACE.to_vec(),
        value: Some(exemplar::Value::AsDouble(42.0)),
    }]
}

fn metric(name: &str, data: Data) -> Metric {
    Metric {
        name: name.into(),
        description: format!("{name} description"),
        unit: "ms".into(),
        data: Some(data),
        ..Default::default()
    }
}

fn metrics(service: &str) -> ExportMetricsServiceRequest {
    let number = |v| NumberDataPoint {
        attributes: point_attrs(),
        start_time_unix_nano: T1 - 10_000_000_000,
        time_unix_nano: T1,
        exemplars: exemplars(),
        flags: 1,
        value: Some(v),
    };
    let all = vec![
        metric(
            "cpu.temp",
            Data::Gauge(Gauge {
                data_points: vec![number(number_data_point::Value::AsDouble(41.5))],
            }),
        ),
        metric(
            "requests",
            Data::Sum(Sum {
                data_points: vec![number(number_data_point::Value::AsInt(7))],
                aggregation_temporality: 2,
                is_monotonic: true,
            }),
        ),
        metric(
            "latency",
            Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: point_attrs(),
                    start_time_unix_nano: T1 - 10_000_000_000,
                    time_unix_nano: T1,
                    count: 3,
                    sum: Some(6.0),
                    bucket_counts: vec![1, 1, 1],
                    explicit_bounds: vec![1.0, 2.0],
                    exemplars: exemplars(),
                    flags: 0,
                    min: Some(1.0),
                    max: Some(3.0),
                }],
                aggregation_temporality: 2,
            }),
        ),
        metric(
            "exp",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    attributes: point_attrs(),
                    start_time_unix_nano: T1 - 10_000_000_000,
                    time_unix_nano: T1,
                    count: 5,
                    sum: Some(10.0),
                    scale: 2,
                    zero_count: 1,
                    positive: Some(Buckets {
                        offset: 1,
                        bucket_counts: vec![1, 2],
                    }),
                    negative: Some(Buckets {
                        offset: -1,
                        bucket_counts: vec![1],
                    }),
                    exemplars: exemplars(),
                    min: Some(0.5),
                    max: Some(4.0),
                    ..Default::default()
                }],
                aggregation_temporality: 1,
            }),
        ),
        metric(
            "rpc",
            Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    attributes: point_attrs(),
                    start_time_unix_nano: T1 - 10_000_000_000,
                    time_unix_nano: T1,
                    count: 4,
                    sum: 8.0,
                    quantile_values: vec![
                        summary_data_point::ValueAtQuantile {
                            quantile: 0.5,
                            value: 2.0,
                        },
                        summary_data_point::ValueAtQuantile {
                            quantile: 0.99,
                            value: 3.5,
                        },
                    ],
                    flags: 0,
                }],
            }),
        ),
    ];
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(service),
            scope_metrics: vec![ScopeMetrics {
                scope: scope(),
                metrics: all,
                schema_url: "scope-url".into(),
            }],
            schema_url: "res-url".into(),
        }],
    }
}

/// The common metric columns, for a metric named `name`.
macro_rules! expected_metric {
    ($row:ident, $service:expr, $name:expr, { $($field:ident : $value:expr),* $(,)? }) => {
        $row {
            resource_attributes: resource_map($service),
            resource_schema_url: "res-url".into(),
            scope_name: "scope-a".into(),
            scope_version: "1.2.3".into(),
            scope_attributes: map(&[("scope.attr", "x")]),
            scope_dropped_attr_count: 2,
            scope_schema_url: "scope-url".into(),
            service_name: $service.into(),
            metric_name: $name.into(),
            metric_description: format!("{} description", $name),
            metric_unit: "ms".into(),
            attributes: map(&[("core", "0")]),
            start_time_unix: T1_SECS - 10,
            time_unix: T1_SECS,
            $($field: $value,)*
        }
    };
}

macro_rules! exemplar_columns {
    () => {
        (
            vec![map(&[("f", "1")])],
            vec![T1_SECS],
            vec![42.0],
            vec![SPAN_HEX.to_string()],
            vec![TRACE_HEX.to_string()],
        )
    };
}

async fn read<R: Row + clickhouse::RowOwned + for<'a> clickhouse::RowRead>(
    c: &TestCollector,
    table: &collector::schema::Table,
    service: &str,
    order: &str,
) -> Vec<R> {
    c.client
        .query(&format!(
            "SELECT {} FROM {} WHERE ServiceName = ? ORDER BY {order}",
            table.insert_columns(),
            table.name
        ))
        .bind(service)
        .fetch_all::<R>()
        .await
        .expect("select")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_over_every_transport_keep_every_column() {
    let c = TestCollector::start("rt_traces").await;
    for t in ALL_TRANSPORTS {
        let service = format!("svc-{}", t.name());
        send(&c, t, "/v1/traces", traces(&service)).await;
    }
    c.wait_for_rows("otel_traces", "", 12).await;
    for t in ALL_TRANSPORTS {
        let service = format!("svc-{}", t.name());
        let rows: Vec<SpanRow> = read(&c, &TRACES, &service, "Timestamp").await;
        assert_eq!(rows, expected_spans(&service), "{}", t.name());
    }
    // The lookup table answers the trace's time range (second precision). Its
    // view is pushed after the source part is visible, so it is polled.
    let expected = (
        (T0 / 1_000_000_000) as u32,
        ((T0 + 3_000_000_000) / 1_000_000_000) as u32,
    );
    let lookup = || async {
        c.client
            .query("SELECT min(Start), max(End) FROM otel_traces_trace_id_ts WHERE TraceId = ?")
            .bind(TRACE_HEX)
            .fetch_one::<(u32, u32)>()
            .await
            .expect("select the lookup")
    };
    let found = eventually(Duration::from_secs(30), || async {
        Some(lookup().await).filter(|found| *found == expected)
    })
    .await;
    assert_eq!(found, Some(expected), "the lookup within 30 s");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_over_every_transport_keep_every_column() {
    let c = TestCollector::start("rt_logs").await;
    for t in ALL_TRANSPORTS {
        let service = format!("svc-{}", t.name());
        send(&c, t, "/v1/logs", logs(&service)).await;
    }
    c.wait_for_rows("otel_logs", "", 12).await;
    for t in ALL_TRANSPORTS {
        let service = format!("svc-{}", t.name());
        let rows: Vec<LogRow> = read(&c, &LOGS, &service, "Timestamp").await;
        assert_eq!(rows, expected_logs(&service), "{}", t.name());
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_all_five_kinds_over_every_transport_keep_every_column() {
    let c = TestCollector::start("rt_metrics").await;
    for t in ALL_TRANSPORTS {
        let service = format!("svc-{}", t.name());
        send(&c, t, "/v1/metrics", metrics(&service)).await;
    }
    // Each kind has its own table and INSERT, landing in no fixed order.
    for table in [&GAUGE, &SUM, &HISTOGRAM, &EXPONENTIAL_HISTOGRAM, &SUMMARY] {
        c.wait_for_rows(table.name, "", 6).await;
    }
    for t in ALL_TRANSPORTS {
        let svc = format!("svc-{}", t.name());
        let svc = svc.as_str();
        let (fa, tu, v, si, ti) = exemplar_columns!();

        let gauge: Vec<GaugeRow> = read(&c, &GAUGE, svc, "MetricName").await;
        assert_eq!(
            gauge,
            [expected_metric!(GaugeRow, svc, "cpu.temp", {
                value: 41.5, flags: 1,
                exemplars_filtered_attributes: fa.clone(), exemplars_time_unix: tu.clone(),
                exemplars_value: v.clone(), exemplars_span_id: si.clone(), exemplars_trace_id: ti.clone(),
            })],
            "{svc}"
        );
        let sum: Vec<SumRow> = read(&c, &SUM, svc, "MetricName").await;
        assert_eq!(
            sum,
            [expected_metric!(SumRow, svc, "requests", {
                value: 7.0, flags: 1, aggregation_temporality: 2, is_monotonic: true,
                exemplars_filtered_attributes: fa.clone(), exemplars_time_unix: tu.clone(),
                exemplars_value: v.clone(), exemplars_span_id: si.clone(), exemplars_trace_id: ti.clone(),
            })],
            "{svc}"
        );
        let hist: Vec<HistogramRow> = read(&c, &HISTOGRAM, svc, "MetricName").await;
        assert_eq!(
            hist,
            [expected_metric!(HistogramRow, svc, "latency", {
                count: 3, sum: 6.0, bucket_counts: vec![1, 1, 1], explicit_bounds: vec![1.0, 2.0],
                flags: 0, min: 1.0, max: 3.0, aggregation_temporality: 2,
                exemplars_filtered_attributes: fa.clone(), exemplars_time_unix: tu.clone(),
                exemplars_value: v.clone(), exemplars_span_id: si.clone(), exemplars_trace_id: ti.clone(),
            })],
            "{svc}"
        );
        let exp: Vec<ExponentialHistogramRow> =
            read(&c, &EXPONENTIAL_HISTOGRAM, svc, "MetricName").await;
        assert_eq!(
            exp,
            [expected_metric!(ExponentialHistogramRow, svc, "exp", {
                count: 5, sum: 10.0, scale: 2, zero_count: 1,
                positive_offset: 1, positive_bucket_counts: vec![1, 2],
                negative_offset: -1, negative_bucket_counts: vec![1],
                flags: 0, min: 0.5, max: 4.0, aggregation_temporality: 1,
                exemplars_filtered_attributes: fa, exemplars_time_unix: tu,
                exemplars_value: v, exemplars_span_id: si, exemplars_trace_id: ti,
            })],
            "{svc}"
        );
        let summary: Vec<SummaryRow> = read(&c, &SUMMARY, svc, "MetricName").await;
        assert_eq!(
            summary,
            [expected_metric!(SummaryRow, svc, "rpc", {
                count: 4, sum: 8.0, quantiles: vec![0.5, 0.99], quantile_values: vec![2.0, 3.5], flags: 0,
            })],
            "{svc}"
        );
    }
    c.stop().await;
}

//! The agent's records turned into the generated OTLP types, off the request path.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    exemplar, exponential_histogram_data_point, metric, number_data_point, summary_data_point,
    AggregationTemporality, Exemplar as OtlpExemplar, ExponentialHistogram,
    ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};

use crate::core::log_event::{is_transport_target, severity_number, FieldValue, LogEvent};
use crate::core::span_data::{Attributes, SpanData, SpanKind, Status as SpanStatus};
use crate::core::value::{Array, Value};
use crate::metrics::{
    Exemplar, ExpHistogramSnapshot, HistogramSnapshot, InstrumentSeries, InstrumentSnapshot,
    MetricsSnapshot, RpcSeriesSnapshot, RpcSide, SeriesSnapshot, DURATION_BUCKETS_SECONDS,
    OVERFLOW_ATTRIBUTE, QUANTILES,
};

pub const SCOPE_NAME: &str = "agent";
pub const SCOPE_VERSION: &str = crate::resource::SDK_VERSION;
pub const DURATION_METRIC: &str = "http.server.request.duration";
pub const DROPPED_METRIC: &str = "agent.telemetry.dropped";

fn kv(key: impl Into<String>, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn str_kv(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

fn scope(name: &str) -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: name.to_string(),
        version: SCOPE_VERSION.to_string(),
        ..Default::default()
    })
}

/// Built once at start and cloned into each request.
pub(crate) fn resource(attributes: &[(std::borrow::Cow<'static, str>, Value)]) -> Resource {
    Resource {
        attributes: attributes
            .iter()
            .map(|(k, v)| kv(k.to_string(), value(v.clone())))
            .collect(),
        ..Default::default()
    }
}

fn value(v: Value) -> any_value::Value {
    match v {
        Value::Str(s) => any_value::Value::StringValue(s.into_string()),
        Value::I64(i) => any_value::Value::IntValue(i),
        Value::F64(f) => any_value::Value::DoubleValue(f),
        Value::Bool(b) => any_value::Value::BoolValue(b),
        Value::Array(a) => {
            fn items<T>(v: Vec<T>, f: impl Fn(T) -> any_value::Value) -> Vec<AnyValue> {
                v.into_iter()
                    .map(|x| AnyValue { value: Some(f(x)) })
                    .collect()
            }
            let values = match a {
                Array::Str(v) => items(v, |s| any_value::Value::StringValue(s.into_string())),
                Array::I64(v) => items(v, any_value::Value::IntValue),
                Array::F64(v) => items(v, any_value::Value::DoubleValue),
                Array::Bool(v) => items(v, any_value::Value::BoolValue),
            };
            any_value::Value::ArrayValue(ArrayValue { values })
        }
    }
}

fn attributes(attributes: Attributes) -> Vec<KeyValue> {
    attributes
        .into_iter()
        .map(|(k, v)| kv(k.into_owned(), value(v)))
        .collect()
}

fn kind(k: SpanKind) -> span::SpanKind {
    match k {
        SpanKind::Internal => span::SpanKind::Internal,
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
        SpanKind::Producer => span::SpanKind::Producer,
        SpanKind::Consumer => span::SpanKind::Consumer,
    }
}

pub(crate) fn traces_request(
    resource: &Resource,
    spans: impl Iterator<Item = Box<SpanData>>,
) -> ExportTraceServiceRequest {
    let spans = spans
        .map(|s| {
            let s = *s;
            let status = match s.status {
                SpanStatus::Unset => None,
                SpanStatus::Ok => Some(Status {
                    code: status::StatusCode::Ok as i32,
                    message: String::new(),
                }),
                SpanStatus::Error(message) => Some(Status {
                    code: status::StatusCode::Error as i32,
                    message: message.into_owned(),
                }),
            };
            Span {
                trace_id: s.trace_id.0.to_vec(),
                span_id: s.span_id.0.to_vec(),
                trace_state: s.trace_state.map(|t| t.to_string()).unwrap_or_default(),
                parent_span_id: s.parent_span_id.map(|p| p.0.to_vec()).unwrap_or_default(),
                flags: u32::from(s.flags),
                name: s.name.into_string(),
                kind: kind(s.kind) as i32,
                start_time_unix_nano: s.start_unix_nanos,
                end_time_unix_nano: s.end_unix_nanos,
                attributes: attributes(s.attributes),
                dropped_attributes_count: s.dropped_attributes,
                events: s
                    .events
                    .into_iter()
                    .map(|e| span::Event {
                        time_unix_nano: e.time_unix_nanos,
                        name: e.name.into_string(),
                        attributes: attributes(e.attributes),
                        dropped_attributes_count: 0,
                    })
                    .collect(),
                dropped_events_count: s.dropped_events,
                links: s
                    .links
                    .into_iter()
                    .map(|l| span::Link {
                        trace_id: l.context.trace_id.0.to_vec(),
                        span_id: l.context.span_id.0.to_vec(),
                        trace_state: l.trace_state.map(|t| t.to_string()).unwrap_or_default(),
                        attributes: attributes(l.attributes),
                        dropped_attributes_count: 0,
                        flags: u32::from(l.context.flags),
                    })
                    .collect(),
                dropped_links_count: s.dropped_links,
                status,
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: scope(SCOPE_NAME),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Log records grouped by target, which becomes the instrumentation scope (as the
/// OpenTelemetry tracing appender does). Transport crates are left out here too.
pub(crate) fn logs_request(
    resource: &Resource,
    events: impl Iterator<Item = LogEvent>,
) -> (ExportLogsServiceRequest, u64) {
    let mut by_target: BTreeMap<&'static str, Vec<LogRecord>> = BTreeMap::new();
    let mut count = 0;
    for e in events {
        if is_transport_target(e.target) {
            continue;
        }
        count += 1;
        let attributes = e
            .fields
            .into_iter()
            .map(|(name, v)| {
                let v = match v {
                    FieldValue::Str(s) => any_value::Value::StringValue(s),
                    FieldValue::I64(i) => any_value::Value::IntValue(i),
                    // OTLP has no unsigned integers; beyond i64 keep the digits.
                    FieldValue::U64(u) => i64::try_from(u)
                        .map(any_value::Value::IntValue)
                        .unwrap_or_else(|_| any_value::Value::StringValue(u.to_string())),
                    FieldValue::F64(f) => any_value::Value::DoubleValue(f),
                    FieldValue::Bool(b) => any_value::Value::BoolValue(b),
                };
                kv(name, v)
            })
            .collect();
        let (trace_id, span_id, flags) = match e.span {
            Some(s) => (
                s.trace_id.0.to_vec(),
                s.span_id.0.to_vec(),
                u32::from(s.flags),
            ),
            None => (Vec::new(), Vec::new(), 0),
        };
        by_target.entry(e.target).or_default().push(LogRecord {
            time_unix_nano: e.time_unix_nanos,
            observed_time_unix_nano: e.time_unix_nanos,
            severity_number: severity_number(e.level),
            severity_text: e.level.as_str().to_string(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(e.message)),
            }),
            attributes,
            flags,
            trace_id,
            span_id,
            ..Default::default()
        });
    }
    let scope_logs = by_target
        .into_iter()
        .map(|(target, log_records)| ScopeLogs {
            scope: scope(target),
            log_records,
            ..Default::default()
        })
        .collect();
    (
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource.clone()),
                scope_logs,
                ..Default::default()
            }],
        },
        count,
    )
}

/// The stable HTTP server metric attributes; the overflow series carries only
/// the overflow flag.
fn series_attributes(s: &SeriesSnapshot) -> Vec<KeyValue> {
    if s.is_overflow() {
        return vec![kv(OVERFLOW_ATTRIBUTE, any_value::Value::BoolValue(true))];
    }
    let mut attributes = vec![
        str_kv("http.request.method", s.method),
        kv(
            "http.response.status_code",
            any_value::Value::IntValue(i64::from(s.status_code)),
        ),
        str_kv("url.scheme", s.scheme),
        str_kv("network.protocol.version", s.protocol_version),
    ];
    if !s.route.is_empty() {
        attributes.push(str_kv("http.route", &*s.route));
    }
    if let Some(error_type) = &s.error_type {
        attributes.push(str_kv("error.type", &**error_type));
    }
    attributes
}

fn otlp_exemplar(e: &Exemplar) -> OtlpExemplar {
    OtlpExemplar {
        time_unix_nano: e.time_unix_nanos,
        value: Some(exemplar::Value::AsDouble(e.value_micros as f64 / 1e6)),
        span_id: e.span_id.0.to_vec(),
        trace_id: e.trace_id.0.to_vec(),
        ..Default::default()
    }
}

/// An exponential histogram point of one window (delta temporality).
fn exponential_point(
    attributes: Vec<KeyValue>,
    h: &ExpHistogramSnapshot,
    (start_unix_nanos, time_unix_nanos): (u64, u64),
    exemplars: Vec<OtlpExemplar>,
) -> ExponentialHistogramDataPoint {
    ExponentialHistogramDataPoint {
        attributes,
        start_time_unix_nano: start_unix_nanos,
        time_unix_nano: time_unix_nanos,
        count: h.count,
        sum: Some(h.sum),
        scale: h.scale,
        zero_count: h.zero_count,
        positive: Some(exponential_histogram_data_point::Buckets {
            offset: h.positive_offset,
            bucket_counts: h.positive_counts.clone(),
        }),
        negative: Some(exponential_histogram_data_point::Buckets {
            offset: h.negative_offset,
            bucket_counts: h.negative_counts.clone(),
        }),
        min: Some(h.min),
        max: Some(h.max),
        exemplars,
        ..Default::default()
    }
}

/// Start and end of a series' window: the export time while it is still open.
fn window_times(s: &SeriesSnapshot, now_unix_nanos: u64) -> (u64, u64) {
    (
        s.window.start_unix_nanos,
        s.window.end_unix_nanos.unwrap_or(now_unix_nanos),
    )
}

fn instrument_points<T: Copy>(
    instrument: &InstrumentSnapshot<T>,
    value: impl Fn(T) -> number_data_point::Value,
    now_unix_nanos: u64,
) -> Vec<NumberDataPoint> {
    instrument
        .series
        .iter()
        .map(|s: &InstrumentSeries<T>| NumberDataPoint {
            attributes: instrument_attributes(s),
            start_time_unix_nano: instrument.start_unix_nanos,
            time_unix_nano: now_unix_nanos,
            value: Some(value(s.value)),
            ..Default::default()
        })
        .collect()
}

/// The service's counters (cumulative monotonic Sums since each instrument was
/// created) and gauges, with the number of points.
fn instrument_metrics(snapshot: &MetricsSnapshot, now_unix_nanos: u64) -> (Vec<Metric>, u64) {
    let mut points = 0;
    let mut metrics = Vec::with_capacity(
        snapshot.counters.len()
            + snapshot.gauges.len()
            + snapshot.up_down_counters.len()
            + snapshot.histograms.len(),
    );
    for c in &snapshot.counters {
        // OTLP has no unsigned integers; a total beyond i64 stays at its maximum.
        let data_points = instrument_points(
            c,
            |v| number_data_point::Value::AsInt(i64::try_from(v).unwrap_or(i64::MAX)),
            now_unix_nanos,
        );
        points += data_points.len() as u64;
        metrics.push(Metric {
            name: c.name.to_string(),
            description: c.description.clone(),
            unit: c.unit.clone(),
            data: Some(metric::Data::Sum(Sum {
                data_points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        });
    }
    for c in &snapshot.up_down_counters {
        let data_points = instrument_points(c, number_data_point::Value::AsInt, now_unix_nanos);
        points += data_points.len() as u64;
        metrics.push(Metric {
            name: c.name.to_string(),
            description: c.description.clone(),
            unit: c.unit.clone(),
            data: Some(metric::Data::Sum(Sum {
                data_points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: false,
            })),
            ..Default::default()
        });
    }
    for h in &snapshot.histograms {
        let metric = histogram_metric(h, now_unix_nanos);
        if data_points(&metric) > 0 {
            points += data_points(&metric);
            metrics.push(metric);
        }
    }
    for g in &snapshot.gauges {
        let data_points = instrument_points(g, number_data_point::Value::AsDouble, now_unix_nanos);
        points += data_points.len() as u64;
        metrics.push(Metric {
            name: g.name.to_string(),
            description: g.description.clone(),
            unit: g.unit.clone(),
            data: Some(metric::Data::Gauge(Gauge { data_points })),
            ..Default::default()
        });
    }
    (metrics, points)
}

/// How many data points `metric` carries.
fn data_points(metric: &Metric) -> u64 {
    (match &metric.data {
        Some(metric::Data::Histogram(h)) => h.data_points.len(),
        Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(metric::Data::Summary(s)) => s.data_points.len(),
        Some(metric::Data::Sum(s)) => s.data_points.len(),
        Some(metric::Data::Gauge(g)) => g.data_points.len(),
        None => 0,
    }) as u64
}

fn instrument_attributes<T>(s: &InstrumentSeries<T>) -> Vec<KeyValue> {
    let mut attributes: Vec<KeyValue> =
        s.attributes.iter().map(|(k, v)| str_kv(*k, &**v)).collect();
    if s.overflow {
        attributes.push(kv(OVERFLOW_ATTRIBUTE, any_value::Value::BoolValue(true)));
    }
    attributes
}

/// A histogram instrument's windows as exponential histogram points (delta);
/// series without values in the window are left out.
fn histogram_metric(h: &HistogramSnapshot, now_unix_nanos: u64) -> Metric {
    let data_points = h
        .series
        .iter()
        .filter(|s| s.value.window.count > 0)
        .map(|s| {
            exponential_point(
                instrument_attributes(s),
                &s.value.window,
                (
                    s.value.window_start_unix_nanos,
                    s.value.window_end_unix_nanos.unwrap_or(now_unix_nanos),
                ),
                Vec::new(),
            )
        })
        .collect();
    Metric {
        name: h.name.to_string(),
        description: h.description.clone(),
        unit: h.unit.clone(),
        data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
            data_points,
            aggregation_temporality: AggregationTemporality::Delta as i32,
        })),
        ..Default::default()
    }
}

/// One RED series as a point of the duration histogram (seconds).
fn histogram_point(
    attributes: Vec<KeyValue>,
    s: &SeriesSnapshot,
    (start_unix_nanos, now_unix_nanos): (u64, u64),
) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: start_unix_nanos,
        time_unix_nano: now_unix_nanos,
        count: s.requests,
        sum: Some(s.sum_seconds),
        bucket_counts: s.bucket_counts.clone(),
        explicit_bounds: DURATION_BUCKETS_SECONDS.to_vec(),
        min: Some(s.min_seconds),
        max: Some(s.max_seconds),
        exemplars: s.window.exemplar.iter().map(otlp_exemplar).collect(),
        ..Default::default()
    }
}

/// The same series' exact quantiles over its window (start time the window's
/// start); count and sum stay cumulative since the series was created.
fn summary_point(
    attributes: Vec<KeyValue>,
    s: &SeriesSnapshot,
    (_, now_unix_nanos): (u64, u64),
) -> SummaryDataPoint {
    let (start, end) = window_times(s, now_unix_nanos);
    SummaryDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: end,
        count: s.requests,
        sum: s.sum_seconds,
        quantile_values: QUANTILES
            .iter()
            .enumerate()
            .map(|(i, q)| summary_data_point::ValueAtQuantile {
                quantile: *q,
                value: s.quantile_seconds(i),
            })
            .collect(),
        ..Default::default()
    }
}

fn rpc_attributes(s: &RpcSeriesSnapshot) -> Vec<KeyValue> {
    if s.is_overflow() {
        return vec![
            str_kv("rpc.system", "grpc"),
            kv(OVERFLOW_ATTRIBUTE, any_value::Value::BoolValue(true)),
        ];
    }
    vec![
        str_kv("rpc.system", "grpc"),
        str_kv("rpc.service", s.service.to_string()),
        str_kv("rpc.method", s.method.to_string()),
        kv(
            "rpc.grpc.status_code",
            any_value::Value::IntValue(i64::from(s.code)),
        ),
    ]
}

/// `rpc.{server,client}.call.duration` and their summaries, as for HTTP.
fn rpc_metrics(series: &[RpcSeriesSnapshot], times: (u64, u64)) -> (Vec<Metric>, u64) {
    let mut metrics = Vec::new();
    let mut points = 0;
    for side in [RpcSide::Server, RpcSide::Client] {
        let side_series: Vec<(Vec<KeyValue>, &SeriesSnapshot)> = series
            .iter()
            .filter(|s| s.side == side)
            .map(|s| (rpc_attributes(s), &s.durations))
            .collect();
        if side_series.is_empty() {
            continue;
        }
        let side_metrics = duration_metrics(
            &format!("rpc.{}.call.duration", side.as_str()),
            &format!("Duration of gRPC calls ({} side).", side.as_str()),
            side_series,
            times,
        );
        points += side_metrics.iter().map(data_points).sum::<u64>();
        metrics.extend(side_metrics);
    }
    (metrics, points)
}

/// RED series as the duration histogram (seconds, the HTTP buckets) named
/// `name`, the summary of their exact quantiles, `{name}.summary`, and the
/// same name again as an exponential histogram of the window (delta, with the
/// window's exemplar), which lands in its own table.
fn duration_metrics(
    name: &str,
    description: &str,
    series: Vec<(Vec<KeyValue>, &SeriesSnapshot)>,
    times: (u64, u64),
) -> Vec<Metric> {
    let summary_points: Vec<SummaryDataPoint> = series
        .iter()
        .map(|(attributes, s)| summary_point(attributes.clone(), s, times))
        .collect();
    let exponential_points: Vec<ExponentialHistogramDataPoint> = series
        .iter()
        .filter(|(_, s)| s.window.exponential.count > 0)
        .map(|(attributes, s)| {
            exponential_point(
                attributes.clone(),
                &s.window.exponential,
                window_times(s, times.1),
                s.window.exemplar.iter().map(otlp_exemplar).collect(),
            )
        })
        .collect();
    let histogram_points: Vec<HistogramDataPoint> = series
        .into_iter()
        .map(|(attributes, s)| histogram_point(attributes, s, times))
        .collect();
    let mut metrics = vec![
        Metric {
            name: name.to_string(),
            description: description.to_string(),
            unit: "s".into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: histogram_points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        },
        Metric {
            name: format!("{name}.summary"),
            description:
                "Quantiles of the same durations over the last export interval (hdrhistogram, 3 significant digits; StartTimeUnix is the interval start); quantile 1 is the maximum. Count and Sum are cumulative since start."
                    .into(),
            unit: "s".into(),
            data: Some(metric::Data::Summary(Summary {
                data_points: summary_points,
            })),
            ..Default::default()
        },
    ];
    if !exponential_points.is_empty() {
        metrics.push(Metric {
            name: name.to_string(),
            description: format!(
                "{description} Per export interval, base-2 exponential buckets (scale 6: under 0.55 % error at the bucket midpoint)."
            ),
            unit: "s".into(),
            data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
                data_points: exponential_points,
                aggregation_temporality: AggregationTemporality::Delta as i32,
            })),
            ..Default::default()
        });
    }
    metrics
}

/// Cumulative since `start`: each export carries everything since the agent
/// started, so a lost export loses nothing but freshness. The service's own
/// instruments go in a scope named after the service.
pub(crate) fn metrics_request(
    resource: &Resource,
    snapshot: &MetricsSnapshot,
    start_unix_nanos: u64,
    now_unix_nanos: u64,
) -> (ExportMetricsServiceRequest, u64) {
    let series = &snapshot.series;
    let stats = &snapshot.stats;
    let times = (start_unix_nanos, now_unix_nanos);
    let dropped_points: Vec<NumberDataPoint> = stats
        .by_signal()
        .iter()
        .flat_map(|(signal, s)| {
            [
                ("queue_full", s.queue_full),
                ("export_failed", s.export_failed),
            ]
            .map(|(reason, n)| NumberDataPoint {
                attributes: vec![str_kv("signal", *signal), str_kv("reason", reason)],
                start_time_unix_nano: start_unix_nanos,
                time_unix_nano: now_unix_nanos,
                value: Some(number_data_point::Value::AsInt(n as i64)),
                ..Default::default()
            })
        })
        .collect();
    let (instrument_metrics, instrument_points) = instrument_metrics(snapshot, now_unix_nanos);
    let (rpc_metrics, rpc_points) = rpc_metrics(&snapshot.rpc, times);
    let mut metrics = Vec::new();
    if !series.is_empty() {
        metrics.extend(duration_metrics(
            DURATION_METRIC,
            "Duration of HTTP server requests.",
            series.iter().map(|s| (series_attributes(s), s)).collect(),
            times,
        ));
    }
    let points = metrics.iter().map(data_points).sum::<u64>()
        + dropped_points.len() as u64
        + instrument_points
        + rpc_points;
    metrics.extend(rpc_metrics);
    metrics.push(Metric {
        name: DROPPED_METRIC.into(),
        description: "Spans, log records and metric points the agent dropped.".into(),
        unit: "{item}".into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: dropped_points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    });
    let mut scope_metrics = vec![ScopeMetrics {
        scope: scope(SCOPE_NAME),
        metrics,
        ..Default::default()
    }];
    if !instrument_metrics.is_empty() {
        scope_metrics.push(ScopeMetrics {
            scope: Some(InstrumentationScope {
                name: snapshot.service_name.clone(),
                ..Default::default()
            }),
            metrics: instrument_metrics,
            ..Default::default()
        });
    }
    (
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics,
                ..Default::default()
            }],
        },
        points,
    )
}

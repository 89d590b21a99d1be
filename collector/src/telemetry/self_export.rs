//! The collector's own metrics, written into its own tables.
//!
//! Every `telemetry.export_interval_ms` the exposition `/metrics` serves is turned
//! into one OTLP metrics request (counters → cumulative monotonic Sums, gauges →
//! Gauges, histograms → Histograms; names and labels as `/metrics` shows them) and
//! handed to the pipeline like a client's request, so it is spooled, batched and
//! inserted into `otel_metrics_*` with `service.name` = `telemetry.service_name`.
//! Deriving it from the exposition text keeps one source for both views of the
//! same counters. The request is counted in `collector_requests_total{signal="metrics"}`
//! like any other (a few hundred points per interval).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::admin::{exposition, Health};
use crate::otlp::IngestError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// How often the collector writes its own metrics into ClickHouse (0: never).
    pub export_interval_ms: u64,
    /// `service.name` of those rows.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            export_interval_ms: 15_000,
            service_name: "collector".into(),
        }
    }
}

/// Where the collector's own metrics go: the pipeline implements it, mapping the
/// request and accepting it like a client's, so telemetry needs no import of either.
pub trait MetricsSink: Send + Sync + 'static {
    fn send(
        &self,
        request: ExportMetricsServiceRequest,
    ) -> impl std::future::Future<Output = Result<(), IngestError>> + Send;
}

/// How often the spool's age is sampled (its resolution).
const SPOOL_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Samples the spool's age and exports the metrics until `stop`.
pub async fn run<S: MetricsSink>(
    health: Health,
    sink: Arc<S>,
    config: TelemetryConfig,
    stop: CancellationToken,
) {
    let started_unix_nanos = unix_nanos(SystemTime::now());
    let resource = resource(&config.service_name);
    let export_every = Duration::from_millis(config.export_interval_ms);
    let mut next_export = Instant::now() + export_every;
    let period = if export_every.is_zero() {
        SPOOL_SAMPLE_EVERY
    } else {
        SPOOL_SAMPLE_EVERY.min(export_every)
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        health.sample_spool_age();
        if export_every.is_zero() || Instant::now() < next_export {
            continue;
        }
        next_export = Instant::now() + export_every;
        let request = to_otlp(
            &exposition(&health),
            resource.clone(),
            started_unix_nanos,
            unix_nanos(SystemTime::now()),
        );
        let accepted = sink.send(request).await;
        if let Err(e) = accepted {
            // The spool is full or shutting down: this sample is dropped, the next
            // one carries the same cumulative totals.
            tracing::warn!(error = %e, "writing the collector's own metrics failed");
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn resource(service_name: &str) -> Resource {
    let instance = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| format!("pid-{}", std::process::id()));
    Resource {
        attributes: vec![
            string_kv("service.name", service_name),
            string_kv("service.version", env!("CARGO_PKG_VERSION")),
            string_kv("service.instance.id", &instance),
        ],
        ..Default::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

type Labels = Vec<(String, String)>;

#[derive(Default)]
struct HistogramSeries {
    /// (upper bound, cumulative count), in exposition order.
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

/// Prometheus text exposition (as [`exposition`] renders it) → one OTLP request.
/// Samples without a `# TYPE` line are gauges; malformed lines are skipped.
pub fn to_otlp(
    text: &str,
    resource: Resource,
    start_unix_nanos: u64,
    now_unix_nanos: u64,
) -> ExportMetricsServiceRequest {
    let mut kinds: BTreeMap<String, Kind> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut numbers: BTreeMap<String, Vec<(Labels, f64)>> = BTreeMap::new();
    let mut histograms: BTreeMap<String, BTreeMap<Labels, HistogramSeries>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                let kind = match kind {
                    "counter" => Kind::Counter,
                    "histogram" => Kind::Histogram,
                    _ => Kind::Gauge,
                };
                if kinds.insert(name.to_string(), kind).is_none() {
                    order.push(name.to_string());
                }
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        let histogram = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            (kinds.get(base) == Some(&Kind::Histogram)).then(|| (base.to_string(), *suffix))
        });
        match histogram {
            Some((base, suffix)) => {
                let mut labels = labels;
                let le = labels
                    .iter()
                    .position(|(k, _)| k == "le")
                    .map(|i| labels.remove(i).1);
                let series = histograms
                    .entry(base)
                    .or_default()
                    .entry(labels)
                    .or_default();
                match (suffix, le) {
                    ("_bucket", Some(le)) => {
                        let bound = if le == "+Inf" {
                            f64::INFINITY
                        } else {
                            le.parse().unwrap_or(f64::INFINITY)
                        };
                        series.buckets.push((bound, value as u64));
                    }
                    ("_sum", _) => series.sum = value,
                    ("_count", _) => series.count = value as u64,
                    _ => {}
                }
            }
            None => {
                if !kinds.contains_key(&name) {
                    kinds.insert(name.clone(), Kind::Gauge);
                    order.push(name.clone());
                }
                numbers.entry(name).or_default().push((labels, value));
            }
        }
    }

    let attributes = |labels: &Labels| -> Vec<KeyValue> {
        labels.iter().map(|(k, v)| string_kv(k, v)).collect()
    };
    let number_points = |samples: &[(Labels, f64)]| -> Vec<NumberDataPoint> {
        samples
            .iter()
            .map(|(labels, v)| NumberDataPoint {
                attributes: attributes(labels),
                start_time_unix_nano: start_unix_nanos,
                time_unix_nano: now_unix_nanos,
                value: Some(number_data_point::Value::AsDouble(*v)),
                ..Default::default()
            })
            .collect()
    };
    let mut metrics = Vec::new();
    for name in order {
        let data = match kinds[&name] {
            Kind::Counter => numbers.get(&name).map(|s| {
                metric::Data::Sum(Sum {
                    data_points: number_points(s),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })
            }),
            Kind::Gauge => numbers.get(&name).map(|s| {
                metric::Data::Gauge(Gauge {
                    data_points: number_points(s),
                })
            }),
            Kind::Histogram => histograms.get(&name).map(|series| {
                metric::Data::Histogram(Histogram {
                    data_points: series
                        .iter()
                        .map(|(labels, h)| histogram_point(h, attributes(labels)))
                        .map(|mut p| {
                            p.start_time_unix_nano = start_unix_nanos;
                            p.time_unix_nano = now_unix_nanos;
                            p
                        })
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })
            }),
        };
        if let Some(data) = data {
            metrics.push(Metric {
                name,
                data: Some(data),
                ..Default::default()
            });
        }
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "collector".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Cumulative `le` buckets → OTLP's per-bucket counts over the finite bounds.
fn histogram_point(h: &HistogramSeries, attrs: Vec<KeyValue>) -> HistogramDataPoint {
    let mut buckets = h.buckets.clone();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let explicit_bounds: Vec<f64> = buckets
        .iter()
        .map(|(b, _)| *b)
        .filter(|b| b.is_finite())
        .collect();
    let mut bucket_counts = Vec::with_capacity(explicit_bounds.len() + 1);
    let mut previous = 0u64;
    for (bound, cumulative) in &buckets {
        if bound.is_finite() {
            bucket_counts.push(cumulative.saturating_sub(previous));
            previous = *cumulative;
        }
    }
    bucket_counts.push(h.count.saturating_sub(previous));
    HistogramDataPoint {
        attributes: attrs,
        count: h.count,
        sum: Some(h.sum),
        bucket_counts,
        explicit_bounds,
        ..Default::default()
    }
}

/// `name{a="x",b="y"} 1.5` → (name, labels, value).
fn parse_sample(line: &str) -> Option<(String, Labels, f64)> {
    let (head, value) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            let labels = parse_labels(&line[open + 1..close])?;
            let value = line[close + 1..].split_whitespace().next()?;
            ((line[..open].to_string(), labels), value)
        }
        None => {
            let mut it = line.split_whitespace();
            ((it.next()?.to_string(), Vec::new()), it.next()?)
        }
    };
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((head.0, head.1, value))
}

fn parse_labels(s: &str) -> Option<Labels> {
    let mut labels = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(labels);
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_string(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE collector_items_accepted_total counter\n\
collector_items_accepted_total{signal=\"traces\"} 12\n\
collector_items_accepted_total{signal=\"logs\"} 0\n\
# TYPE collector_insert_duration_seconds histogram\n\
collector_insert_duration_seconds_bucket{table=\"otel_traces\",le=\"0.01\"} 3\n\
collector_insert_duration_seconds_bucket{table=\"otel_traces\",le=\"0.1\"} 5\n\
collector_insert_duration_seconds_bucket{table=\"otel_traces\",le=\"+Inf\"} 6\n\
collector_insert_duration_seconds_sum{table=\"otel_traces\"} 0.75\n\
collector_insert_duration_seconds_count{table=\"otel_traces\"} 6\n\
# TYPE collector_spool_bytes gauge\n\
collector_spool_bytes 4096\n\
untyped_thing{quote=\"a\\\"b\"} 1.5\n";

    fn metrics() -> Vec<Metric> {
        let r = to_otlp(TEXT, resource("collector"), 1, 2);
        r.resource_metrics[0].scope_metrics[0].metrics.clone()
    }

    fn attr(p: &[KeyValue], key: &str) -> String {
        match p
            .iter()
            .find(|k| k.key == key)
            .and_then(|k| k.value.clone())
        {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) => s,
            _ => String::new(),
        }
    }

    #[test]
    fn counters_become_cumulative_monotonic_sums() {
        let m = metrics();
        assert_eq!(m[0].name, "collector_items_accepted_total");
        let Some(metric::Data::Sum(sum)) = &m[0].data else {
            panic!("{:?}", m[0].data)
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(sum.data_points.len(), 2);
        assert_eq!(attr(&sum.data_points[0].attributes, "signal"), "traces");
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsDouble(12.0))
        );
        assert_eq!(sum.data_points[0].start_time_unix_nano, 1);
        assert_eq!(sum.data_points[0].time_unix_nano, 2);
    }

    #[test]
    fn histograms_get_per_bucket_counts() {
        let m = metrics();
        let h = m
            .iter()
            .find(|m| m.name == "collector_insert_duration_seconds")
            .expect("histogram");
        let Some(metric::Data::Histogram(h)) = &h.data else {
            panic!()
        };
        let p = &h.data_points[0];
        assert_eq!(attr(&p.attributes, "table"), "otel_traces");
        assert!(p.attributes.iter().all(|a| a.key != "le"));
        assert_eq!(p.explicit_bounds, [0.01, 0.1]);
        assert_eq!(p.bucket_counts, [3, 2, 1]);
        assert_eq!((p.count, p.sum), (6, Some(0.75)));
    }

    #[test]
    fn gauges_and_untyped_samples_become_gauges() {
        let m = metrics();
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "collector_items_accepted_total",
                "collector_insert_duration_seconds",
                "collector_spool_bytes",
                "untyped_thing"
            ]
        );
        let Some(metric::Data::Gauge(g)) = &m[3].data else {
            panic!()
        };
        assert_eq!(attr(&g.data_points[0].attributes, "quote"), "a\"b");
    }

    #[test]
    fn resource_names_the_collector() {
        let r = resource("edge-collector");
        assert_eq!(attr(&r.attributes, "service.name"), "edge-collector");
        assert!(!attr(&r.attributes, "service.instance.id").is_empty());
    }
}

//! The collector's one metrics model: typed instruments in a [`Registry`], read at
//! once into a [`Snapshot`] that is rendered as Prometheus text (`/metrics`, the web
//! UI) and converted directly into an OTLP request (self-export) — no text round trip.
//!
//! A new metric is one line where its stage gets its handles, e.g.
//! `let dropped = metrics.registry().counter("collector_things_dropped_total", &[("table", name)]);`
//! then `dropped.inc()`; it shows on `/metrics` and in `otel_metrics_sum` at once.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram as OtlpHistogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

/// A monotonic count.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.inc_by(1);
    }

    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Observations in fixed buckets (upper bounds, ascending), with their sum and count.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    sum_bits: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        let _ = self.sum_bits.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + v).to_bits())
        });
    }

    fn read(&self) -> HistogramValue {
        HistogramValue {
            bounds: self.bounds,
            counts: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum: f64::from_bits(self.sum_bits.load(Relaxed)),
            count: self.count.load(Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn prometheus(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A histogram's state at a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramValue {
    pub bounds: &'static [f64],
    /// Observations per bucket (not cumulative); those above the last bound are
    /// `count` minus their sum.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

/// One series' value at a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Count(u64),
    Level(f64),
    Histogram(HistogramValue),
}

pub type Labels = Vec<(&'static str, String)>;

/// Every series of one metric name.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub series: Vec<(Labels, Value)>,
}

type GaugeFn = Box<dyn Fn() -> f64 + Send + Sync>;

enum Instrument {
    Counter(Arc<Counter>),
    Gauge(GaugeFn),
    Histogram(Arc<Histogram>),
}

struct Registered {
    name: &'static str,
    kind: Kind,
    series: Vec<(Labels, Instrument)>,
}

/// The instruments, grouped by name in the order they were first registered (the
/// order `/metrics` shows them).
#[derive(Default)]
pub struct Registry {
    families: RwLock<Vec<Registered>>,
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

impl Registry {
    /// A new counter series `name{labels}`.
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Arc<Counter> {
        let counter = Arc::new(Counter::default());
        self.add_counter(name, labels, counter.clone());
        counter
    }

    /// Shows an existing counter under another name too.
    pub fn add_counter(&self, name: &'static str, l: &[(&'static str, &str)], c: Arc<Counter>) {
        self.add(name, Kind::Counter, labels(l), Instrument::Counter(c));
    }

    /// A new histogram series with the given bucket bounds.
    pub fn histogram(
        &self,
        name: &'static str,
        labels_: &[(&'static str, &str)],
        bounds: &'static [f64],
    ) -> Arc<Histogram> {
        let h = Arc::new(Histogram::new(bounds));
        self.add(
            name,
            Kind::Histogram,
            labels(labels_),
            Instrument::Histogram(h.clone()),
        );
        h
    }

    /// A gauge read when a snapshot is taken (e.g. the spool's size).
    pub fn gauge_fn(
        &self,
        name: &'static str,
        labels_: &[(&'static str, &str)],
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        self.add(
            name,
            Kind::Gauge,
            labels(labels_),
            Instrument::Gauge(Box::new(read)),
        );
    }

    fn add(&self, name: &'static str, kind: Kind, labels: Labels, instrument: Instrument) {
        let mut families = self.families.write().unwrap_or_else(|e| e.into_inner());
        match families.iter_mut().find(|f| f.name == name) {
            Some(f) => {
                assert_eq!(f.kind, kind, "metric {name} registered with two kinds");
                f.series.push((labels, instrument));
            }
            None => families.push(Registered {
                name,
                kind,
                series: vec![(labels, instrument)],
            }),
        }
    }

    /// Every series' value now.
    pub fn snapshot(&self) -> Snapshot {
        let families = self.families.read().unwrap_or_else(|e| e.into_inner());
        Snapshot(
            families
                .iter()
                .map(|f| Family {
                    name: f.name,
                    kind: f.kind,
                    series: f
                        .series
                        .iter()
                        .map(|(labels, i)| {
                            let value = match i {
                                Instrument::Counter(c) => Value::Count(c.get()),
                                Instrument::Gauge(read) => Value::Level(read()),
                                Instrument::Histogram(h) => Value::Histogram(h.read()),
                            };
                            (labels.clone(), value)
                        })
                        .collect(),
                })
                .collect(),
        )
    }
}

/// The metrics at one instant: what `/metrics` serves and self-export writes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot(pub Vec<Family>);

fn label_text(labels: &Labels, extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

impl Snapshot {
    /// Appends another snapshot's families (e.g. gauges read from the stages).
    pub fn extend(&mut self, other: Snapshot) {
        self.0.extend(other.0);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for f in &self.0 {
            let name = f.name;
            let _ = writeln!(out, "# TYPE {name} {}", f.kind.prometheus());
            for (labels, value) in &f.series {
                match value {
                    Value::Count(n) => {
                        let _ = writeln!(out, "{name}{} {n}", label_text(labels, None));
                    }
                    Value::Level(v) => {
                        let _ = writeln!(out, "{name}{} {v}", label_text(labels, None));
                    }
                    Value::Histogram(h) => {
                        let mut cumulative = 0;
                        for (b, c) in h.bounds.iter().zip(&h.counts) {
                            cumulative += c;
                            let le = b.to_string();
                            let l = label_text(labels, Some(("le", &le)));
                            let _ = writeln!(out, "{name}_bucket{l} {cumulative}");
                        }
                        let l = label_text(labels, Some(("le", "+Inf")));
                        let _ = writeln!(out, "{name}_bucket{l} {}", h.count);
                        let l = label_text(labels, None);
                        let _ = writeln!(out, "{name}_sum{l} {}", h.sum);
                        let _ = writeln!(out, "{name}_count{l} {}", h.count);
                    }
                }
            }
        }
        out
    }

    /// One OTLP request: counters → cumulative monotonic Sums, gauges → Gauges,
    /// histograms → cumulative Histograms; names and labels as `/metrics` shows them.
    pub fn to_otlp(
        &self,
        resource: Resource,
        start_unix_nanos: u64,
        now_unix_nanos: u64,
    ) -> ExportMetricsServiceRequest {
        let attributes = |labels: &Labels| -> Vec<KeyValue> {
            labels.iter().map(|(k, v)| string_kv(k, v)).collect()
        };
        let number = |labels: &Labels, v: f64| NumberDataPoint {
            attributes: attributes(labels),
            start_time_unix_nano: start_unix_nanos,
            time_unix_nano: now_unix_nanos,
            value: Some(number_data_point::Value::AsDouble(v)),
            ..Default::default()
        };
        let numbers = |f: &Family| -> Vec<NumberDataPoint> {
            f.series
                .iter()
                .filter_map(|(labels, value)| match value {
                    Value::Count(n) => Some(number(labels, *n as f64)),
                    Value::Level(v) => Some(number(labels, *v)),
                    Value::Histogram(_) => None,
                })
                .collect()
        };
        let metrics = self
            .0
            .iter()
            .map(|f| {
                let data = match f.kind {
                    Kind::Counter => metric::Data::Sum(Sum {
                        data_points: numbers(f),
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    }),
                    Kind::Gauge => metric::Data::Gauge(Gauge {
                        data_points: numbers(f),
                    }),
                    Kind::Histogram => metric::Data::Histogram(OtlpHistogram {
                        data_points: f
                            .series
                            .iter()
                            .filter_map(|(labels, value)| match value {
                                Value::Histogram(h) => Some(HistogramDataPoint {
                                    attributes: attributes(labels),
                                    start_time_unix_nano: start_unix_nanos,
                                    time_unix_nano: now_unix_nanos,
                                    count: h.count,
                                    sum: Some(h.sum),
                                    bucket_counts: h
                                        .counts
                                        .iter()
                                        .copied()
                                        .chain([h.count.saturating_sub(h.counts.iter().sum())])
                                        .collect(),
                                    explicit_bounds: h.bounds.to_vec(),
                                    ..Default::default()
                                }),
                                _ => None,
                            })
                            .collect(),
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    }),
                };
                Metric {
                    name: f.name.to_string(),
                    data: Some(data),
                    ..Default::default()
                }
            })
            .collect();
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
}

pub(super) fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

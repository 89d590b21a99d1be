//! The collector's own metrics, written into its own tables.
//!
//! Every `telemetry.export_interval_ms` the snapshot `/metrics` renders is converted
//! into one OTLP metrics request ([`Snapshot::to_otlp`](super::Snapshot::to_otlp):
//! counters → cumulative monotonic Sums, gauges → Gauges, histograms → Histograms;
//! names and labels as `/metrics` shows them) and handed to the [`MetricsSink`] (the
//! pipeline) like a client's request, so it is spooled, batched and inserted into
//! `otel_metrics_*` with `service.name` = `telemetry.service_name`. One snapshot
//! feeds both views of the same instruments. The request is counted in `collector_requests_total{signal="metrics"}`
//! like any other (a few hundred points per interval).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::admin::Health;
use super::registry::string_kv;
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
        let request = health.snapshot().to_otlp(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::registry::Registry;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::metrics::v1::{
        metric, number_data_point, AggregationTemporality, Metric,
    };

    const BOUNDS: &[f64] = &[0.01, 0.1];

    fn metrics() -> (Vec<Metric>, String) {
        let r = Registry::default();
        r.counter("collector_items_accepted_total", &[("signal", "traces")])
            .inc_by(12);
        r.counter("collector_items_accepted_total", &[("signal", "logs")]);
        let h = r.histogram(
            "collector_insert_duration_seconds",
            &[("table", "otel_traces")],
            BOUNDS,
        );
        for v in [0.005, 0.005, 0.005, 0.05, 0.05, 0.5] {
            h.observe(v);
        }
        r.gauge_fn("collector_spool_bytes", &[], || 4096.0);
        let snapshot = r.snapshot();
        let request = snapshot.to_otlp(resource("collector"), 1, 2);
        (
            request.resource_metrics[0].scope_metrics[0].metrics.clone(),
            snapshot.render_text(),
        )
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
        let (m, _) = metrics();
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
        let (m, _) = metrics();
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
        assert_eq!(p.count, 6);
        assert!((p.sum.unwrap() - 0.615).abs() < 1e-9);
    }

    #[test]
    fn gauges_become_gauges_and_the_text_shows_the_same_series() {
        let (m, text) = metrics();
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "collector_items_accepted_total",
                "collector_insert_duration_seconds",
                "collector_spool_bytes",
            ]
        );
        assert!(matches!(&m[2].data, Some(metric::Data::Gauge(_))));
        let typed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(typed, names);
        assert!(text.contains("collector_items_accepted_total{signal=\"traces\"} 12\n"));
        assert!(text.contains(
            "collector_insert_duration_seconds_bucket{table=\"otel_traces\",le=\"0.1\"} 5\n"
        ));
        assert!(text.contains(
            "collector_insert_duration_seconds_bucket{table=\"otel_traces\",le=\"+Inf\"} 6\n"
        ));
        assert!(text.contains("# TYPE collector_spool_bytes gauge\ncollector_spool_bytes 4096\n"));
    }

    #[test]
    fn resource_names_the_collector() {
        let r = resource("edge-collector");
        assert_eq!(attr(&r.attributes, "service.name"), "edge-collector");
        assert!(!attr(&r.attributes, "service.instance.id").is_empty());
    }
}

//! Prometheus text exposition (format 0.0.4) of a [`MetricsSnapshot`], so a
//! service can serve its own `/metrics`.

use std::fmt::Write as _;

use axum::http::header::CONTENT_TYPE;
use axum::routing::{get, MethodRouter};

use super::{
    HistogramSnapshot, InstrumentSnapshot, MetricsSnapshot, RpcSeriesSnapshot, RpcSide,
    SeriesSnapshot, DURATION_BUCKETS_SECONDS, QUANTILES,
};

pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What [`route`] renders: the [`crate::Agent`] (the metrics stores know
/// nothing of the handle holding them).
pub trait MetricsSource: Clone + Send + Sync + 'static {
    fn metrics_snapshot(&self) -> MetricsSnapshot;
}

/// A `GET` route answering with the agent's metrics:
/// `Router::new().route("/metrics", agent::metrics::prometheus::route(&agent))`.
pub fn route<S: Clone + Send + Sync + 'static>(agent: &impl MetricsSource) -> MethodRouter<S> {
    let agent = agent.clone();
    get(move || {
        let agent = agent.clone();
        async move {
            (
                [(CONTENT_TYPE, CONTENT_TYPE_TEXT)],
                render(&agent.metrics_snapshot()),
            )
        }
    })
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `# HELP` text escapes only backslashes and line feeds.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// An OpenTelemetry name as a Prometheus metric or label name: every character
/// outside `[a-zA-Z0-9_]` becomes `_`, and a leading digit gets a `_` before it.
fn prometheus_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
    );
    out
}

/// Prometheus spells the non-finite values its own way.
fn sample_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

/// One family per instrument: `# HELP` (when described), `# TYPE`, and a sample
/// per series with the service and the attributes as labels.
fn render_instrument<T: Copy>(
    out: &mut String,
    service: &str,
    instrument: &InstrumentSnapshot<T>,
    kind: &str,
    suffix: &str,
    value: impl Fn(T) -> String,
) {
    let mut name = prometheus_name(&instrument.name);
    if !name.ends_with(suffix) {
        name.push_str(suffix);
    }
    if !instrument.description.is_empty() {
        let _ = writeln!(
            out,
            "# HELP {name} {}",
            escape_help(&instrument.description)
        );
    }
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for s in &instrument.series {
        let _ = write!(out, "{name}{{service_name=\"{service}\"");
        for (k, v) in s.attributes.iter() {
            let label = prometheus_name(k);
            // Prometheus' own way out of a clash with a label it sets itself.
            let prefix = if label == "service_name" {
                "exported_"
            } else {
                ""
            };
            let _ = write!(out, ",{prefix}{label}=\"{}\"", escape(v));
        }
        if s.overflow {
            out.push_str(",otel_metric_overflow=\"true\"");
        }
        let _ = writeln!(out, "}} {}", value(s.value));
    }
}

/// The label set of one series, the same in the histogram and the summary:
/// the OTLP attributes, `.` as `_`.
fn series_labels(service: &str, s: &SeriesSnapshot) -> String {
    if s.is_overflow() {
        return format!("service_name=\"{service}\",otel_metric_overflow=\"true\"");
    }
    let mut labels = format!(
        "service_name=\"{service}\",http_request_method=\"{}\",http_route=\"{}\",http_response_status_code=\"{}\",url_scheme=\"{}\",network_protocol_version=\"{}\"",
        escape(s.method),
        escape(&s.route),
        s.status_code,
        s.scheme,
        s.protocol_version,
    );
    if let Some(error_type) = &s.error_type {
        let _ = write!(labels, ",error_type=\"{}\"", escape(error_type));
    }
    labels
}

/// Quantiles of an application histogram in the Prometheus text (its window).
const HISTOGRAM_QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// A histogram instrument as a summary: quantiles of the last window (read
/// from the exponential buckets), `_sum` and `_count` cumulative.
fn render_histogram(out: &mut String, service: &str, h: &HistogramSnapshot) {
    let name = prometheus_name(&h.name);
    if !h.description.is_empty() {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(&h.description));
    }
    let _ = writeln!(out, "# TYPE {name} summary");
    for s in &h.series {
        let mut labels = format!("service_name=\"{service}\"");
        for (k, v) in s.attributes.iter() {
            let label = prometheus_name(k);
            let prefix = if label == "service_name" {
                "exported_"
            } else {
                ""
            };
            let _ = write!(labels, ",{prefix}{label}=\"{}\"", escape(v));
        }
        if s.overflow {
            labels.push_str(",otel_metric_overflow=\"true\"");
        }
        for q in HISTOGRAM_QUANTILES {
            let _ = writeln!(
                out,
                "{name}{{{labels},quantile=\"{q}\"}} {}",
                sample_value(s.value.window.quantile(q))
            );
        }
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}\n{name}_count{{{labels}}} {}",
            sample_value(s.value.sum),
            s.value.count
        );
    }
}

/// One duration family as a Prometheus histogram `{base}_seconds` and a summary
/// of the exact quantiles `{base}_quantiles_seconds`, each series with its labels.
fn write_durations(out: &mut String, base: &str, help: &str, series: &[(String, &SeriesSnapshot)]) {
    let _ = writeln!(
        out,
        "# HELP {base}_seconds {help}\n\
         # TYPE {base}_seconds histogram"
    );
    for (labels, s) in series {
        let mut cumulative = 0;
        for (bound, count) in DURATION_BUCKETS_SECONDS.iter().zip(&s.bucket_counts) {
            cumulative += count;
            let _ = writeln!(
                out,
                "{base}_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{base}_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
             {base}_seconds_sum{{{labels}}} {}\n\
             {base}_seconds_count{{{labels}}} {}",
            s.requests, s.sum_seconds, s.requests
        );
    }
    let _ = writeln!(
        out,
        "# HELP {base}_quantiles_seconds Exact duration quantiles over the last export interval (hdrhistogram, 3 significant digits); quantile 1 is the maximum; sum and count are cumulative.\n\
         # TYPE {base}_quantiles_seconds summary"
    );
    for (labels, s) in series {
        for (i, q) in QUANTILES.iter().enumerate() {
            let _ = writeln!(
                out,
                "{base}_quantiles_seconds{{{labels},quantile=\"{q}\"}} {}",
                s.quantile_seconds(i)
            );
        }
        let _ = writeln!(
            out,
            "{base}_quantiles_seconds_sum{{{labels}}} {}\n\
             {base}_quantiles_seconds_count{{{labels}}} {}",
            s.sum_seconds, s.requests
        );
    }
}

/// The labels of one gRPC series (the OTLP attributes, `.` as `_`).
fn rpc_labels(service: &str, s: &RpcSeriesSnapshot) -> String {
    if s.is_overflow() {
        return format!(
            "service_name=\"{service}\",rpc_system=\"grpc\",otel_metric_overflow=\"true\""
        );
    }
    format!(
        "service_name=\"{service}\",rpc_system=\"grpc\",rpc_service=\"{}\",rpc_method=\"{}\",rpc_grpc_status_code=\"{}\"",
        escape(&s.service),
        escape(&s.method),
        s.code
    )
}

pub fn render(snapshot: &MetricsSnapshot) -> String {
    let mut out = String::new();
    let service = escape(&snapshot.service_name);
    let http: Vec<(String, &SeriesSnapshot)> = snapshot
        .series
        .iter()
        .map(|s| (series_labels(&service, s), s))
        .collect();
    write_durations(
        &mut out,
        "http_server_request_duration",
        "Duration of HTTP server requests.",
        &http,
    );
    for side in [RpcSide::Server, RpcSide::Client] {
        let rpc: Vec<(String, &SeriesSnapshot)> = snapshot
            .rpc
            .iter()
            .filter(|s| s.side == side)
            .map(|s| (rpc_labels(&service, s), &s.durations))
            .collect();
        if !rpc.is_empty() {
            write_durations(
                &mut out,
                &format!("rpc_{}_call_duration", side.as_str()),
                &format!("Duration of gRPC calls ({} side).", side.as_str()),
                &rpc,
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP http_server_request_errors_total HTTP server requests answered 5xx.\n\
         # TYPE http_server_request_errors_total counter"
    );
    for (labels, s) in &http {
        let _ = writeln!(
            out,
            "http_server_request_errors_total{{{labels}}} {}",
            s.errors
        );
    }
    for c in &snapshot.counters {
        render_instrument(&mut out, &service, c, "counter", "_total", |v| {
            v.to_string()
        });
    }
    for g in &snapshot.gauges {
        render_instrument(&mut out, &service, g, "gauge", "", sample_value);
    }
    for c in &snapshot.up_down_counters {
        render_instrument(&mut out, &service, c, "gauge", "", |v| v.to_string());
    }
    for h in &snapshot.histograms {
        render_histogram(&mut out, &service, h);
    }
    let _ = writeln!(
        out,
        "# HELP agent_dropped_total Telemetry the agent dropped (queue full or export failed).\n\
         # TYPE agent_dropped_total counter"
    );
    for (signal, stats) in snapshot.stats.by_signal() {
        let _ = writeln!(
            out,
            "agent_dropped_total{{service_name=\"{service}\",signal=\"{signal}\",reason=\"queue_full\"}} {}\n\
             agent_dropped_total{{service_name=\"{service}\",signal=\"{signal}\",reason=\"export_failed\"}} {}",
            stats.queue_full, stats.export_failed
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::{AgentBuilder, Config};

    #[test]
    fn counters_and_gauges_render_as_prometheus_families() {
        // Disabled: nothing is exported, the local view still works.
        let guard = AgentBuilder::from_config(Config::default())
            .service_name("shop")
            .disabled(true)
            .json_logs(false)
            .start()
            .expect("agent starts");
        let agent = guard.agent();
        let lookups = agent
            .counter("shop.cache.requests")
            .with_description("Cache lookups by layer and result\nper \\ layer")
            .with_unit("{request}");
        lookups.add(2, &[("cache.result", "hit"), ("cache.layer", "memory")]);
        lookups.add(
            1,
            &[("cache.layer", "a\"b\\c\nd"), ("cache.result", "miss")],
        );
        agent.counter("shop.shed").add(0, &[]);
        let state = agent.gauge("shop.breaker.state").with_unit("1");
        state.set(2.0, &[("dependency", "inventory")]);
        state.set(0.5, &[("dependency", "shipping")]);
        agent
            .gauge("2xx.ratio")
            .set(f64::NAN, &[("service.name", "x")]);
        agent.gauge("shop.outbox.lag").set(f64::INFINITY, &[]);

        let text = agent.prometheus_text();
        let expected = [
            "# HELP shop_cache_requests_total Cache lookups by layer and result\\nper \\\\ layer",
            "# TYPE shop_cache_requests_total counter",
            "shop_cache_requests_total{service_name=\"shop\",cache_layer=\"a\\\"b\\\\c\\nd\",cache_result=\"miss\"} 1",
            "shop_cache_requests_total{service_name=\"shop\",cache_layer=\"memory\",cache_result=\"hit\"} 2",
            "# TYPE shop_shed_total counter",
            "shop_shed_total{service_name=\"shop\"} 0",
            "# TYPE _2xx_ratio gauge",
            "_2xx_ratio{service_name=\"shop\",exported_service_name=\"x\"} NaN",
            "# TYPE shop_breaker_state gauge",
            "shop_breaker_state{service_name=\"shop\",dependency=\"inventory\"} 2",
            "shop_breaker_state{service_name=\"shop\",dependency=\"shipping\"} 0.5",
            "# TYPE shop_outbox_lag gauge",
            "shop_outbox_lag{service_name=\"shop\"} +Inf",
        ];
        let lines: Vec<&str> = text.lines().collect();
        let start = lines
            .iter()
            .position(|l| l.starts_with("# HELP shop_cache_requests_total"))
            .unwrap_or_else(|| panic!("no counter family in\n{text}"));
        assert_eq!(&lines[start..start + expected.len()], expected, "{text}");
        assert!(
            !text.contains("# HELP shop_breaker_state"),
            "no description, no HELP"
        );
        guard.shutdown().expect("shut down");
    }

    #[test]
    fn overflow_series_carry_the_overflow_label() {
        let guard = AgentBuilder::from_config(Config::default())
            .service_name("shop")
            .disabled(true)
            .json_logs(false)
            .max_metric_series(1)
            .start()
            .expect("agent starts");
        let c = guard.agent().counter("jobs");
        for queue in ["a", "b", "c"] {
            c.add(1, &[("queue", queue)]);
        }
        let text = guard.agent().prometheus_text();
        assert!(
            text.contains("jobs_total{service_name=\"shop\",queue=\"a\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("jobs_total{service_name=\"shop\",otel_metric_overflow=\"true\"} 2\n"),
            "{text}"
        );
        guard.shutdown().expect("shut down");
    }
}

//! Prometheus text exposition (format 0.0.4) of a [`MetricsSnapshot`], so a
//! service can serve its own `/metrics`.

use std::fmt::Write as _;

use axum::http::header::CONTENT_TYPE;
use axum::routing::{get, MethodRouter};

use super::{MetricsSnapshot, SeriesSnapshot, DURATION_BUCKETS_SECONDS, QUANTILES};
use crate::Agent;

pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A `GET` route answering with the agent's metrics:
/// `Router::new().route("/metrics", agent::metrics::prometheus::route(&agent))`.
pub fn route<S: Clone + Send + Sync + 'static>(agent: &Agent) -> MethodRouter<S> {
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

/// The label set of one series, the same in the histogram and the summary.
fn series_labels(service: &str, s: &SeriesSnapshot) -> String {
    format!(
        "service_name=\"{service}\",http_request_method=\"{}\",http_route=\"{}\",http_response_status_class=\"{}\"",
        escape(s.method),
        escape(&s.route),
        s.status_class.as_str()
    )
}

pub fn render(snapshot: &MetricsSnapshot) -> String {
    let mut out = String::new();
    let service = escape(&snapshot.service_name);
    let _ = writeln!(
        out,
        "# HELP http_server_request_duration_seconds Duration of HTTP server requests.\n\
         # TYPE http_server_request_duration_seconds histogram"
    );
    for s in &snapshot.series {
        let labels = series_labels(&service, s);
        let mut cumulative = 0;
        for (bound, count) in DURATION_BUCKETS_SECONDS.iter().zip(&s.bucket_counts) {
            cumulative += count;
            let _ = writeln!(
                out,
                "http_server_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "http_server_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
             http_server_request_duration_seconds_sum{{{labels}}} {}\n\
             http_server_request_duration_seconds_count{{{labels}}} {}",
            s.requests, s.sum_seconds, s.requests
        );
    }
    let _ = writeln!(
        out,
        "# HELP http_server_request_duration_quantiles_seconds Exact request duration quantiles (hdrhistogram, 3 significant digits); quantile 1 is the maximum.\n\
         # TYPE http_server_request_duration_quantiles_seconds summary"
    );
    for s in &snapshot.series {
        let labels = series_labels(&service, s);
        for (i, q) in QUANTILES.iter().enumerate() {
            let _ = writeln!(
                out,
                "http_server_request_duration_quantiles_seconds{{{labels},quantile=\"{q}\"}} {}",
                s.quantile_seconds(i)
            );
        }
        let _ = writeln!(
            out,
            "http_server_request_duration_quantiles_seconds_sum{{{labels}}} {}\n\
             http_server_request_duration_quantiles_seconds_count{{{labels}}} {}",
            s.sum_seconds, s.requests
        );
    }
    let _ = writeln!(
        out,
        "# HELP http_server_request_errors_total HTTP server requests answered 5xx.\n\
         # TYPE http_server_request_errors_total counter"
    );
    for s in &snapshot.series {
        let _ = writeln!(
            out,
            "http_server_request_errors_total{{service_name=\"{service}\",http_request_method=\"{}\",http_route=\"{}\",http_response_status_class=\"{}\"}} {}",
            escape(s.method),
            escape(&s.route),
            s.status_class.as_str(),
            s.errors
        );
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

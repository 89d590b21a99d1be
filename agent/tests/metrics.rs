//! RED metrics after a known request mix, as stored by the collector.

mod common;

use std::time::Duration;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use collector::testing::TestCollector;
use futures::StreamExt;

use common::{serve, spans, start_agent};

const REQUESTS: u64 = 1000;
/// Sleeps spread over the first buckets of the semantic-convention bounds.
const SLEEPS_MS: [u64; 10] = [1, 2, 6, 7, 12, 15, 20, 30, 38, 45];
const BOUNDS_MS: [u64; 14] = [
    5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000,
];

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct SummaryRow {
    #[serde(rename = "Count")]
    count: u64,
    #[serde(rename = "Sum")]
    sum: f64,
    #[serde(rename = "ValueAtQuantiles.Quantile")]
    quantiles: Vec<f64>,
    #[serde(rename = "ValueAtQuantiles.Value")]
    values: Vec<f64>,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct HistogramRow {
    #[serde(rename = "Count")]
    count: u64,
    #[serde(rename = "BucketCounts")]
    bucket_counts: Vec<u64>,
    #[serde(rename = "ExplicitBounds")]
    bounds: Vec<f64>,
    #[serde(rename = "MetricUnit")]
    unit: String,
}

/// hdrhistogram's rank rule: the ceil(q·n)-th smallest value.
fn true_quantile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_holds_exact_percentiles_and_histogram_the_right_counts() {
    let collector = TestCollector::start("agent_metrics").await;
    let (guard, _lines) = start_agent("metrics-api", &collector);
    let app = Router::new()
        .route(
            "/work/{ms}",
            get(|Path(ms): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "done"
            }),
        )
        .route("/metrics", agent::metrics::prometheus::route(guard.agent()))
        .layer(guard.agent().http_layer());
    let addr = serve(app).await;
    let client = reqwest::Client::new();
    let sleeps: Vec<u64> = (0..REQUESTS)
        .map(|i| SLEEPS_MS[(i as usize * 7) % SLEEPS_MS.len()])
        .collect();
    let statuses: Vec<u16> = futures::stream::iter(sleeps)
        .map(|ms| {
            let client = client.clone();
            async move {
                client
                    .get(format!("http://{addr}/work/{ms}"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "all requests answered");

    // Local views first: snapshot and Prometheus text.
    let snapshot = guard.agent().metrics_snapshot();
    let work = snapshot
        .series
        .iter()
        .find(|s| &*s.route == "/work/{ms}")
        .expect("series");
    assert_eq!(work.requests, REQUESTS);
    let prometheus = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(prometheus.contains(&format!(
        "http_server_request_duration_seconds_count{{service_name=\"metrics-api\",http_request_method=\"GET\",http_route=\"/work/{{ms}}\",http_response_status_class=\"2xx\"}} {REQUESTS}"
    )), "{prometheus}");
    assert!(prometheus.contains("quantile=\"0.999\""));
    guard.shutdown_async().await.expect("flushed");

    // The true durations: the server spans of the same requests.
    let rows = spans(
        &collector,
        "ServiceName = 'metrics-api' AND SpanAttributes['http.route'] = '/work/{ms}'",
        REQUESTS,
    )
    .await;
    let mut durations_us: Vec<u64> = rows.iter().map(|r| r.duration / 1000).collect();
    durations_us.sort_unstable();
    assert_eq!(durations_us.len() as u64, REQUESTS);

    let filter = "ServiceName = 'metrics-api' AND Attributes['http.route'] = '/work/{ms}' \
                  AND Attributes['http.response.status_class'] = '2xx'";
    let n = collector
        .wait_for_rows(
            "otel_metrics_summary",
            &format!("{filter} AND MetricName = 'http.server.request.duration.summary' AND Count = {REQUESTS}"),
            1,
        )
        .await;
    assert!(n >= 1, "no summary row with all {REQUESTS} requests");
    let summary: SummaryRow = collector
        .client
        .query(&format!(
            "SELECT Count, Sum, ValueAtQuantiles.Quantile, ValueAtQuantiles.Value \
             FROM otel_metrics_summary WHERE {filter} \
             AND MetricName = 'http.server.request.duration.summary' \
             ORDER BY Count DESC, TimeUnix DESC LIMIT 1"
        ))
        .fetch_one()
        .await
        .expect("summary row");
    assert_eq!(summary.count, REQUESTS);
    assert_eq!(summary.quantiles, vec![0.5, 0.95, 0.99, 0.999, 1.0]);
    let true_sum: f64 = durations_us.iter().sum::<u64>() as f64 / 1e6;
    assert!(
        (summary.sum - true_sum).abs() < 1e-6 * true_sum,
        "sum {} vs {true_sum}",
        summary.sum
    );
    for (q, got_seconds) in summary.quantiles.iter().zip(&summary.values) {
        let want = true_quantile(&durations_us, *q) as f64;
        let got = got_seconds * 1e6;
        // 3 significant digits: within 0.1% (plus the µs rounding).
        let tolerance = want * 0.001 + 1.0;
        assert!(
            (got - want).abs() <= tolerance,
            "q{q}: summary {got} µs, true {want} µs (±{tolerance})"
        );
    }

    let histogram: HistogramRow = collector
        .client
        .query(&format!(
            "SELECT Count, BucketCounts, ExplicitBounds, MetricUnit \
             FROM otel_metrics_histogram WHERE {filter} \
             AND MetricName = 'http.server.request.duration' \
             ORDER BY Count DESC, TimeUnix DESC LIMIT 1"
        ))
        .fetch_one()
        .await
        .expect("histogram row");
    assert_eq!(histogram.count, REQUESTS);
    assert_eq!(histogram.unit, "s");
    assert_eq!(
        histogram.bounds,
        BOUNDS_MS
            .iter()
            .map(|b| *b as f64 / 1000.0)
            .collect::<Vec<_>>()
    );
    // The right counts are those of the stored span durations (the layer times
    // the span and the RED record over the same interval).
    let mut want = vec![0u64; BOUNDS_MS.len() + 1];
    for us in &durations_us {
        let bucket = BOUNDS_MS
            .iter()
            .position(|b| *us <= b * 1000)
            .unwrap_or(BOUNDS_MS.len());
        want[bucket] += 1;
    }
    assert_eq!(histogram.bucket_counts, want);
    assert_eq!(histogram.bucket_counts.iter().sum::<u64>(), REQUESTS);
    // The mix really spreads over the first buckets (1 to 45 ms sleeps).
    assert!(want[..4].iter().all(|n| *n >= 50), "{want:?}");
    collector.stop().await;
}

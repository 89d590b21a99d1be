//! RED metrics after a known request mix, and the service's own counters and
//! gauges, as stored by the collector.

use crate::common;

use std::time::Duration;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use testkit::TestCollector;

use common::{builder, serve, spans};

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
    // One window for the whole run (exported at shutdown), so the summary's
    // quantiles cover every request.
    let guard = builder("metrics-api", &collector.grpc_endpoint())
        .json_logs(false)
        .metric_export_interval(Duration::from_secs(600))
        .start()
        .expect("agent starts");
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
        "http_server_request_duration_seconds_count{{service_name=\"metrics-api\",http_request_method=\"GET\",http_route=\"/work/{{ms}}\",http_response_status_code=\"200\",url_scheme=\"http\",network_protocol_version=\"1.1\"}} {REQUESTS}"
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
                  AND Attributes['http.response.status_code'] = '200'";
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
    // The mix really spreads over several buckets (1 to 45 ms sleeps; on a busy machine
    // the shortest may land a bucket higher, so which buckets is not fixed).
    assert!(want.iter().filter(|n| **n >= 50).count() >= 3, "{want:?}");
    collector.stop().await;
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct SumRow {
    #[serde(rename = "ScopeName")]
    scope: String,
    #[serde(rename = "MetricDescription")]
    description: String,
    #[serde(rename = "MetricUnit")]
    unit: String,
    #[serde(rename = "Attributes")]
    attributes: Vec<(String, String)>,
    #[serde(rename = "StartTimeUnix")]
    start: u32,
    #[serde(rename = "TimeUnix")]
    time: u32,
    #[serde(rename = "Value")]
    value: f64,
    #[serde(rename = "AggregationTemporality")]
    temporality: i32,
    #[serde(rename = "IsMonotonic")]
    is_monotonic: bool,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct GaugeRow {
    #[serde(rename = "MetricUnit")]
    unit: String,
    #[serde(rename = "Attributes")]
    attributes: Vec<(String, String)>,
    #[serde(rename = "TimeUnix")]
    time: u32,
    #[serde(rename = "Value")]
    value: f64,
}

/// OTLP `AGGREGATION_TEMPORALITY_CUMULATIVE`.
const CUMULATIVE: i32 = 2;
const THREADS: u64 = 4;
const ADDS_PER_THREAD: u64 = 2_500;

fn sorted(mut attributes: Vec<(String, String)>) -> Vec<(String, String)> {
    attributes.sort();
    attributes
}

fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    sorted(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

async fn sum_rows(collector: &TestCollector, metric: &str) -> Vec<SumRow> {
    collector
        .client
        .query(
            "SELECT ScopeName, MetricDescription, MetricUnit, Attributes, StartTimeUnix, \
             TimeUnix, Value, AggregationTemporality, IsMonotonic \
             FROM otel_metrics_sum WHERE ServiceName = 'metrics-app' AND MetricName = ?",
        )
        .bind(metric)
        .fetch_all::<SumRow>()
        .await
        .expect("sum rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_gauges_reach_clickhouse_as_sums_and_gauges() {
    let collector = TestCollector::start("agent_app_metrics").await;
    let started_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as u32;
    // Three series per instrument, so the fourth attribute set overflows.
    let guard = builder("metrics-app", &collector.grpc_endpoint())
        .json_logs(false)
        .max_metric_series(3)
        .start()
        .expect("agent starts");
    let agent = guard.agent().clone();
    let lookups = agent
        .counter("shop.cache.requests")
        .with_description("Cache lookups by layer and result")
        .with_unit("{request}");
    let combos = [
        ("memory", "hit"),
        ("memory", "miss"),
        ("redis", "hit"),
        ("redis", "stale"),
    ];
    // Seen once in this order first, so the series kept are known.
    for (layer, result) in combos {
        lookups.add(1, &[("cache.layer", layer), ("cache.result", result)]);
    }
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let agent = agent.clone();
            scope.spawn(move || {
                // A handle from the agent again: the same instrument.
                let lookups = agent.counter("shop.cache.requests");
                for i in 0..ADDS_PER_THREAD {
                    let (layer, result) = combos[((i + t) % 4) as usize];
                    lookups.add(1, &[("cache.result", result), ("cache.layer", layer)]);
                }
            });
        }
    });
    agent.counter("shop.shed").add(7, &[]);
    let state = agent.gauge("shop.breaker.state").with_unit("1");
    state.set(1.0, &[("dependency", "inventory")]);
    state.set(2.0, &[("dependency", "shipping")]);

    // The first values are exported on the interval, while the agent runs.
    let gauge_filter = "ServiceName = 'metrics-app' AND MetricName = 'shop.breaker.state' \
                        AND Attributes['dependency'] = 'inventory'";
    let n = collector
        .wait_for_rows(
            "otel_metrics_gauge",
            &format!("{gauge_filter} AND Value = 1"),
            1,
        )
        .await;
    assert!(n >= 1, "the first gauge value was never exported");
    state.set(0.0, &[("dependency", "inventory")]);
    let local = agent.metrics_snapshot();
    guard.shutdown_async().await.expect("flushed");

    let per_combo = 1 + THREADS * ADDS_PER_THREAD / 4;
    let local_lookups = local
        .counters
        .iter()
        .find(|c| &*c.name == "shop.cache.requests")
        .expect("counter in the snapshot");
    assert_eq!(
        local_lookups
            .series_with(&[("cache.layer", "memory"), ("cache.result", "hit")])
            .map(|s| s.value),
        Some(per_combo)
    );
    let want = [
        (
            attrs(&[("cache.layer", "memory"), ("cache.result", "hit")]),
            per_combo,
        ),
        (
            attrs(&[("cache.layer", "memory"), ("cache.result", "miss")]),
            per_combo,
        ),
        (
            attrs(&[("cache.layer", "redis"), ("cache.result", "hit")]),
            per_combo,
        ),
        (attrs(&[("otel.metric.overflow", "true")]), per_combo),
    ];
    for (attributes, total) in &want {
        let conditions: Vec<String> = attributes
            .iter()
            .map(|(k, v)| format!("Attributes['{k}'] = '{v}'"))
            .collect();
        let n = collector
            .wait_for_rows(
                "otel_metrics_sum",
                &format!(
                    "ServiceName = 'metrics-app' AND MetricName = 'shop.cache.requests' \
                     AND {} AND Value = {total}",
                    conditions.join(" AND ")
                ),
                1,
            )
            .await;
        assert!(
            n >= 1,
            "no row with the final total {total} for {attributes:?}"
        );
    }
    let rows = sum_rows(&collector, "shop.cache.requests").await;
    for (attributes, total) in &want {
        let series: Vec<&SumRow> = rows
            .iter()
            .filter(|r| sorted(r.attributes.clone()) == *attributes)
            .collect();
        // Cumulative: the largest value is the final total, never exceeded.
        let max = series.iter().map(|r| r.value).fold(0.0, f64::max);
        assert_eq!(max, *total as f64, "{attributes:?}");
    }
    assert!(
        rows.iter()
            .all(|r| want.iter().any(|(a, _)| sorted(r.attributes.clone()) == *a)),
        "only the capped series and the overflow: {rows:?}"
    );
    let first = &rows[0];
    for r in &rows {
        assert!(r.is_monotonic, "{r:?}");
        assert_eq!(r.temporality, CUMULATIVE, "{r:?}");
        assert_eq!(r.description, "Cache lookups by layer and result");
        assert_eq!(r.unit, "{request}");
        assert_eq!(r.scope, "metrics-app");
        // One start for every point: the instrument's creation.
        assert_eq!(r.start, first.start);
        assert!(r.start >= started_secs && r.start <= r.time, "{r:?}");
    }

    let n = collector
        .wait_for_rows(
            "otel_metrics_sum",
            "ServiceName = 'metrics-app' AND MetricName = 'shop.shed' AND Value = 7",
            1,
        )
        .await;
    assert!(n >= 1, "shop.shed never reached 7");
    let shed = sum_rows(&collector, "shop.shed").await;
    assert!(shed
        .iter()
        .all(|r| r.attributes.is_empty() && r.value == 7.0 && r.is_monotonic));

    let n = collector
        .wait_for_rows(
            "otel_metrics_gauge",
            &format!("{gauge_filter} AND Value = 0"),
            1,
        )
        .await;
    assert!(n >= 1, "the last gauge value was never exported");
    let gauges: Vec<GaugeRow> = collector
        .client
        .query(
            "SELECT MetricUnit, Attributes, TimeUnix, Value FROM otel_metrics_gauge \
             WHERE ServiceName = 'metrics-app' AND MetricName = 'shop.breaker.state'",
        )
        .fetch_all()
        .await
        .expect("gauge rows");
    let values = |dependency: &str| -> Vec<(u32, f64)> {
        gauges
            .iter()
            .filter(|g| g.attributes == attrs(&[("dependency", dependency)]))
            .map(|g| (g.time, g.value))
            .collect()
    };
    assert!(gauges.iter().all(|g| g.unit == "1"));
    assert!(values("shipping").iter().all(|(_, v)| *v == 2.0));
    let inventory = values("inventory");
    assert!(
        inventory.iter().all(|(_, v)| *v == 1.0 || *v == 0.0),
        "{inventory:?}"
    );
    // Last value: once 0 was exported, 1 never comes back.
    let last_one = inventory
        .iter()
        .filter(|(_, v)| *v == 1.0)
        .map(|(t, _)| *t)
        .max();
    let first_zero = inventory
        .iter()
        .filter(|(_, v)| *v == 0.0)
        .map(|(t, _)| *t)
        .min();
    assert!(last_one <= first_zero, "{inventory:?}");
    collector.stop().await;
}

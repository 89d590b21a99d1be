//! RED metrics "across all replicas, now": exponential histograms of two
//! agents merged by the overview dashboard's SQL in ClickHouse, windowed exact
//! percentiles after a step change, and exemplars that resolve to stored spans.

use crate::common;

use std::time::Duration;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use testkit::dashboards::{load_dir, run_dashboard, workspace_dashboards, RunOptions, TimeRange};
use testkit::{eventually, TestCollector};

use common::{builder, serve, spans};

/// hdrhistogram's and the exact rank rule: the ⌈q·n⌉-th smallest value.
fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn f64_of(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) => s.parse().unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}

/// Log-uniform durations from 300 µs to about 3 s, deterministic per seed.
fn durations_us(seed: u64, n: usize) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            (300.0 * 10f64.powf(4.0 * u)) as u64
        })
        .collect()
}

async fn sum_u64(collector: &TestCollector, sql: &str) -> u64 {
    collector.client.query(sql).fetch_one().await.unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_merge_into_quantiles_within_a_percent_of_the_exact_ones() {
    let collector = TestCollector::start("agent_replicas").await;
    let replica = || {
        builder("checkout", &collector.grpc_endpoint())
            .json_logs(false)
            .start()
            .expect("agent starts")
    };
    let (a, b) = (replica(), replica());
    let instance = |g: &agent::AgentGuard| {
        g.agent()
            .resource()
            .iter()
            .find(|(k, _)| k == "service.instance.id")
            .map(|(_, v)| format!("{v:?}"))
    };
    assert!(instance(&a).is_some());
    assert_ne!(instance(&a), instance(&b), "distinct service.instance.id");
    let (from_a, from_b) = (durations_us(1, 6000), durations_us(2, 4000));
    for (guard, values) in [(&a, &from_a), (&b, &from_b)] {
        for us in values {
            guard
                .agent()
                .record_request("GET", "/pay", 200, Duration::from_micros(*us));
        }
    }
    a.shutdown_async().await.expect("a flushed");
    b.shutdown_async().await.expect("b flushed");
    let total = (from_a.len() + from_b.len()) as u64;
    let stored = eventually(Duration::from_secs(30), || async {
        let n = sum_u64(
            &collector,
            "SELECT sum(Count) FROM otel_metrics_exponential_histogram \
             WHERE ServiceName = 'checkout' AND MetricName = 'http.server.request.duration'",
        )
        .await;
        (n >= total).then_some(n)
    })
    .await;
    assert_eq!(
        stored,
        Some(total),
        "every duration in an exponential histogram"
    );

    // The overview dashboard's panels, as Grafana would run them.
    let overview = load_dir(&workspace_dashboards())
        .expect("dashboards")
        .into_iter()
        .find(|d| d.uid == "otel-service-overview")
        .expect("overview dashboard");
    let run = run_dashboard(
        &collector.client,
        &overview,
        &RunOptions::new(TimeRange::last(Duration::from_secs(3600))),
    )
    .await
    .expect("dashboard runs");
    let table = run
        .panel("Latency across replicas (exponential histogram)")
        .expect("replica-merged latency panel");
    let result = table
        .result
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}\n{}", table.sql));
    let column = |name: &str| {
        result
            .columns
            .iter()
            .position(|(c, _)| c == name)
            .unwrap_or_else(|| panic!("column {name} in {:?}", result.columns))
    };
    let row = result
        .rows
        .iter()
        .find(|r| r[column("service")] == Value::String("checkout".into()))
        .unwrap_or_else(|| panic!("no checkout row in {:?}", result.rows));
    assert_eq!(f64_of(&row[column("replicas")]), 2.0);
    assert_eq!(f64_of(&row[column("requests")]), total as f64);
    let mut all: Vec<u64> = from_a.iter().chain(&from_b).copied().collect();
    all.sort_unstable();
    for (q, name) in [(0.5, "p50_ms"), (0.99, "p99_ms"), (0.999, "p999_ms")] {
        let exact_ms = exact_quantile(&all, q) as f64 / 1e3;
        let merged_ms = f64_of(&row[column(name)]);
        assert!(
            (merged_ms - exact_ms).abs() <= exact_ms * 0.01,
            "{name}: merged {merged_ms} ms, exact {exact_ms} ms"
        );
    }
    for title in [
        "p99 across replicas (exponential histogram)",
        "Exemplars: slowest sampled request per series and interval",
    ] {
        let panel = run.panel(title).expect(title);
        assert!(
            panel.result.is_ok(),
            "{title}: {:?}\n{}",
            panel.result,
            panel.sql
        );
    }
    let series = run
        .panel("p99 across replicas (exponential histogram)")
        .and_then(|p| p.result.as_ref().ok())
        .expect("p99 series");
    assert!(!series.rows.is_empty(), "p99 across replicas has points");
    collector.stop().await;
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct SummaryRow {
    #[serde(rename = "Count")]
    count: u64,
    #[serde(rename = "StartTimeUnix")]
    start: u32,
    #[serde(rename = "TimeUnix")]
    time: u32,
    #[serde(rename = "ValueAtQuantiles.Value")]
    values: Vec<f64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_step_change_the_next_summary_holds_only_the_new_latency() {
    let collector = TestCollector::start("agent_step").await;
    let guard = builder("step", &collector.grpc_endpoint())
        .json_logs(false)
        .start()
        .expect("agent starts");
    let agent = guard.agent().clone();
    const N: u64 = 1000;
    for _ in 0..N {
        agent.record_request("GET", "/slow", 200, Duration::from_millis(200));
    }
    let summaries = "SELECT Count, toUnixTimestamp(StartTimeUnix) AS StartTimeUnix, \
                     toUnixTimestamp(TimeUnix) AS TimeUnix, ValueAtQuantiles.Value \
                     FROM otel_metrics_summary WHERE ServiceName = 'step' \
                     AND MetricName = 'http.server.request.duration.summary'";
    // The slow interval is closed and exported before the latency drops.
    let n = collector
        .wait_for_rows(
            "otel_metrics_summary",
            &format!("ServiceName = 'step' AND Count = {N}"),
            1,
        )
        .await;
    assert!(n >= 1, "the slow interval was exported");
    for _ in 0..N {
        agent.record_request("GET", "/slow", 200, Duration::from_millis(10));
    }
    guard.shutdown_async().await.expect("flushed");
    let n = collector
        .wait_for_rows(
            "otel_metrics_summary",
            &format!("ServiceName = 'step' AND Count = {}", 2 * N),
            1,
        )
        .await;
    assert!(n >= 1, "the fast interval was exported");
    let rows: Vec<SummaryRow> = collector
        .client
        .query(&format!("{summaries} ORDER BY TimeUnix"))
        .fetch_all()
        .await
        .expect("summary rows");
    // The first interval that holds every fast request: its quantiles are the
    // new latency, not a blend with the 200 ms before.
    let after = rows
        .iter()
        .find(|r| r.count == 2 * N)
        .expect("a summary after the step");
    let p99_ms = after.values[2] * 1e3;
    let p50_ms = after.values[0] * 1e3;
    assert!((p99_ms - 10.0).abs() <= 0.01, "p99 {p99_ms} ms: {rows:?}");
    assert!((p50_ms - 10.0).abs() <= 0.01, "p50 {p50_ms} ms: {rows:?}");
    // Its start is the interval's start, after the slow interval ended (the
    // table keeps whole seconds).
    let slow = rows.iter().find(|r| r.count == N).expect("slow interval");
    assert!(after.start >= slow.time, "{rows:?}");
    assert!(after.start <= after.time, "{rows:?}");
    collector.stop().await;
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct ExemplarRow {
    #[serde(rename = "Attributes")]
    attributes: Vec<(String, String)>,
    #[serde(rename = "Exemplars.Value")]
    values: Vec<f64>,
    #[serde(rename = "Exemplars.TraceId")]
    trace_ids: Vec<String>,
    #[serde(rename = "Exemplars.SpanId")]
    span_ids: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exemplar_resolves_to_the_span_with_its_duration() {
    let collector = TestCollector::start("agent_exemplars").await;
    let guard = builder("exemplars", &collector.grpc_endpoint())
        .json_logs(false)
        .start()
        .expect("agent starts");
    let app = Router::new()
        .route(
            "/sleep/{ms}",
            get(|Path(ms): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "done"
            }),
        )
        .layer(guard.agent().http_layer());
    let addr = serve(app).await;
    let client = reqwest::Client::new();
    for ms in [3, 40, 7, 90, 12] {
        let status = client
            .get(format!("http://{addr}/sleep/{ms}"))
            .send()
            .await
            .expect("answered")
            .status();
        assert_eq!(status, 200);
    }
    guard.shutdown_async().await.expect("flushed");

    let filter = "ServiceName = 'exemplars' AND MetricName = 'http.server.request.duration' \
                  AND length(Exemplars.TraceId) > 0";
    let n = collector
        .wait_for_rows("otel_metrics_exponential_histogram", filter, 1)
        .await;
    assert!(n >= 1, "no exponential histogram point with an exemplar");
    let rows: Vec<ExemplarRow> = collector
        .client
        .query(&format!(
            "SELECT Attributes, Exemplars.Value, Exemplars.TraceId, Exemplars.SpanId \
             FROM otel_metrics_exponential_histogram WHERE {filter}"
        ))
        .fetch_all()
        .await
        .expect("exemplar rows");
    let (row, i) = rows
        .iter()
        .flat_map(|r| (0..r.values.len()).map(move |i| (r, i)))
        .max_by(|(a, i), (b, j)| a.values[*i].total_cmp(&b.values[*j]))
        .expect("an exemplar");
    let attribute = |key: &str| {
        row.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    // The semantic-convention attributes of the series.
    assert_eq!(attribute("http.route"), Some("/sleep/{ms}"));
    assert_eq!(attribute("http.request.method"), Some("GET"));
    assert_eq!(attribute("http.response.status_code"), Some("200"));
    assert_eq!(attribute("url.scheme"), Some("http"));
    assert_eq!(attribute("network.protocol.version"), Some("1.1"));
    assert_eq!(attribute("error.type"), None);

    let span = spans(
        &collector,
        &format!(
            "TraceId = '{}' AND SpanId = '{}'",
            row.trace_ids[i], row.span_ids[i]
        ),
        1,
    )
    .await;
    let span_us = span[0].duration as f64 / 1e3;
    let exemplar_us = row.values[i] * 1e6;
    // The layer times the span and the RED record over the same interval; RED
    // keeps whole microseconds.
    assert!(
        (span_us - exemplar_us).abs() <= 1.0,
        "span {span_us} µs, exemplar {exemplar_us} µs"
    );
    assert!(
        exemplar_us >= 90_000.0,
        "the slowest request: {exemplar_us} µs"
    );
    collector.stop().await;
}

//! The `metrics` crate facade (feature `metrics-rs`): `counter!` and
//! `histogram!` recorded through the agent's recorder reach ClickHouse and the
//! Prometheus text.

use crate::common;

use std::time::Duration;

use testkit::{eventually, TestCollector};

use common::builder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facade_counters_and_histograms_reach_clickhouse_and_prometheus() {
    let collector = TestCollector::start("agent_metrics_rs").await;
    let guard = builder("facade-app", &collector.grpc_endpoint())
        .json_logs(false)
        .start()
        .expect("agent starts");
    agent::metrics::facade::install(guard.agent()).expect("the only recorder");
    metrics::describe_histogram!("jobs.duration", metrics::Unit::Seconds, "Job durations");
    for i in 0..100u32 {
        let queue = if i % 4 == 0 { "email" } else { "sms" };
        metrics::counter!("jobs.done", "queue" => queue).increment(1);
        metrics::histogram!("jobs.duration", "queue" => queue).record(f64::from(i + 1) / 100.0);
    }
    metrics::gauge!("jobs.running").set(3.0);

    let text = guard.agent().prometheus_text();
    for line in [
        "jobs_done_total{service_name=\"facade-app\",queue=\"email\"} 25",
        "jobs_done_total{service_name=\"facade-app\",queue=\"sms\"} 75",
        "jobs_duration_count{service_name=\"facade-app\",queue=\"sms\"} 75",
        "jobs_running{service_name=\"facade-app\"} 3",
        "# TYPE jobs_duration summary",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    guard.shutdown_async().await.expect("flushed");

    let counted = collector
        .wait_for_rows(
            "otel_metrics_sum",
            "ServiceName = 'facade-app' AND MetricName = 'jobs.done' \
             AND Attributes['queue'] = 'sms' AND Value = 75",
            1,
        )
        .await;
    assert!(
        counted >= 1,
        "jobs.done{{queue=sms}} = 75 in otel_metrics_sum"
    );
    let histogram_count = eventually(Duration::from_secs(30), || async {
        let n: u64 = collector
            .client
            .query(
                "SELECT sum(Count) FROM otel_metrics_exponential_histogram \
                 WHERE ServiceName = 'facade-app' AND MetricName = 'jobs.duration' \
                 AND MetricUnit = 's'",
            )
            .fetch_one()
            .await
            .unwrap_or(0);
        (n >= 100).then_some(n)
    })
    .await;
    assert_eq!(histogram_count, Some(100), "every recorded value, once");
    let sum: f64 = collector
        .client
        .query(
            "SELECT sum(Sum) FROM otel_metrics_exponential_histogram \
             WHERE ServiceName = 'facade-app' AND MetricName = 'jobs.duration'",
        )
        .fetch_one()
        .await
        .expect("sum");
    assert!((sum - 50.5).abs() < 1e-9, "sum {sum}");
    collector.stop().await;
}

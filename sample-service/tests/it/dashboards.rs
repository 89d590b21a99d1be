//! The Grafana dashboards after a real load run: the shop on the real PostgreSQL,
//! Redis and RabbitMQ, driven by the load generator, exporting through the agent to a
//! real collector; then every panel's SQL (macros and variables substituted) runs
//! against ClickHouse, and the rollup's p99 is checked against raw spans.

use crate::common;

use std::time::Duration;

use collector::schema::DURATION_RELATIVE_ACCURACY;
use common::*;
use serde_json::Value;
use testkit::dashboards::{
    load_dir, run_dashboard, run_sql, workspace_dashboards, RunOptions, TimeRange,
};
use testkit::{test_config, unique_database, TestCollector};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{reload, Layer, Registry};

/// The shop agent's log layer, added to the test's subscriber once the shop runs.
type LateLayer = Option<Box<dyn Layer<Registry> + Send + Sync>>;

fn number(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) => s.parse().unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}

/// The shop's log lines become OTLP log records (the logs dashboard) through a
/// subscriber that is this test's alone (`run_with_subscriber`): the crate's tests
/// share one process.
#[test]
fn every_panel_has_data_after_a_load_run() {
    let (log_layer, set_log_layer) = reload::Layer::new(LateLayer::None);
    let subscriber = tracing_subscriber::registry().with(log_layer);
    testkit::run_with_subscriber(subscriber, 4, run(set_log_layer))
}

async fn run(set_log_layer: reload::Handle<LateLayer, Registry>) {
    let mut config = test_config(&unique_database("shop_dashboards"));
    // The collector-health dashboard reads the collector's own metrics.
    config.telemetry.export_interval_ms = 1000;
    let collector = TestCollector::start_with(config).await;
    let env = Env::new("dashboards").await;
    let mut shop_config = env.config();
    shop_config.rate_limit_per_second = 50.0;
    shop_config.rate_limit_burst = 100;
    shop_config.max_attempts = 2;
    shop_config.retry_base = Duration::from_millis(100);
    let shop = RunningShop::start(shop_config, Some(&collector.grpc_endpoint())).await;
    set_log_layer
        .reload(LateLayer::Some(Box::new(shop.agent.agent().log_layer())))
        .expect("the shop's log layer joins the test's subscriber");

    let report = run_loadgen(&shop.base, 1500, 11).await;
    let trace_id = report["sample_order_traces"][0]["trace_id"]
        .as_str()
        .expect("a sampled order trace")
        .to_string();

    // The workers finish: every event published and either applied or dead-lettered.
    let db = env.db().await;
    let finished = eventually(Duration::from_secs(60), || async {
        let (events, settled): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM outbox), \
                    (SELECT count(*) FROM processed_messages) + (SELECT count(*) FROM dead_letters)",
        )
        .fetch_one(&db)
        .await
        .ok()?;
        (events > 0 && events == settled).then_some(())
    })
    .await;
    assert!(finished.is_some(), "the workers settled every event");
    db.close().await;
    // Stopping flushes the agent; the collector's writes are waited for below.
    shop.stop().await;
    for (table, filter) in [
        (
            "otel_traces",
            format!("TraceId = '{trace_id}' AND SpanKind = 'Consumer'"),
        ),
        ("otel_logs", String::new()),
        (
            "otel_metrics_sum",
            "MetricName = 'shop.queue.processed'".to_string(),
        ),
        ("otel_metrics_sum", "ServiceName = 'collector'".to_string()),
        ("otel_traces_red_1m", String::new()),
    ] {
        assert!(
            collector.wait_for_rows(table, &filter, 1).await >= 1,
            "{table} {filter}"
        );
    }

    let dashboards = load_dir(&workspace_dashboards()).expect("the dashboards parse");
    assert_eq!(dashboards.len(), 5);
    let range = TimeRange::last(Duration::from_secs(30 * 60));
    let mut problems = Vec::new();
    for d in &dashboards {
        let mut opts = RunOptions::new(range);
        if d.uid == "otel-traces" {
            opts = opts.with_variable("trace_id", &[&trace_id]);
        }
        let run = run_dashboard(&collector.client, d, &opts)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", d.title));
        let with_rows = run
            .panels
            .iter()
            .filter(|p| p.result.as_ref().is_ok_and(|r| !r.rows.is_empty()))
            .count();
        eprintln!(
            "{}: {} queries, {with_rows} with rows",
            d.title,
            run.panels.len()
        );
        // No breaker opened and no 5xx happened in this run, so these stay empty.
        problems.extend(run.problems(&["Breaker rejections per second", "Recent errors"]));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The rollup's p99 per route agrees with the raw spans' within the sketch's accuracy.
    let rollup = run_sql(
        &collector.client,
        "SELECT Route, toUInt64(sum(Requests)) AS n, quantilesDDMerge(0.01, 0.99)(DurationQuantiles)[1] AS p99 \
         FROM otel_traces_red_1m WHERE ServiceName = 'shop' GROUP BY Route ORDER BY Route",
    )
    .await
    .unwrap();
    let raw = run_sql(
        &collector.client,
        "SELECT if(SpanAttributes['http.route'] != '', SpanAttributes['http.route'], SpanName) AS route, count() AS n, \
                toFloat64(arraySort(groupArray(Duration))[toUInt64(floor(0.99 * (count() - 1))) + 1]) AS p99 \
         FROM otel_traces WHERE SpanKind = 'Server' AND ServiceName = 'shop' GROUP BY route ORDER BY route",
    )
    .await
    .unwrap();
    assert_eq!(rollup.rows.len(), raw.rows.len());
    assert!(rollup.rows.len() >= 5, "{:?}", raw.rows);
    for (v, r) in rollup.rows.iter().zip(&raw.rows) {
        assert_eq!(v[0], r[0]);
        assert_eq!(number(&v[1]), number(&r[1]), "requests of {}", v[0]);
        let error = (number(&v[2]) - number(&r[2])).abs() / number(&r[2]);
        eprintln!(
            "p99 {}: rollup {:.3} ms, raw {:.3} ms ({:.3} % apart, {} requests)",
            v[0],
            number(&v[2]) / 1e6,
            number(&r[2]) / 1e6,
            100.0 * error,
            number(&v[1])
        );
        assert!(
            error <= DURATION_RELATIVE_ACCURACY * (1.0 + 1e-9),
            "{v:?} vs {r:?}"
        );
    }
    env.cleanup().await;
    collector.stop().await;
}

//! The Grafana dashboards after a real load run: the shop on the real PostgreSQL,
//! Redis and RabbitMQ, driven by the load generator, exporting through the agent to a
//! real collector; then every panel's SQL (macros and variables substituted) runs
//! against ClickHouse, and the rollup's p99 is checked against raw spans. The new
//! panels must show what the run did: the service map's edges to the three
//! downstream services, outbound RED rows for PostgreSQL and Redis, an injected
//! exception as one group; and every provisioned alert rule's query runs.

use crate::common;

use std::time::Duration;

use collector::schema::DURATION_RELATIVE_ACCURACY;
use common::*;
use serde_json::Value;
use testkit::alert_rules::{load_alert_queries, run_alert_query, workspace_alert_rules};
use testkit::dashboards::{
    interpolate, load_dir, run_dashboard, run_sql, workspace_dashboards, QueryContext, RunOptions,
    TimeRange,
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
    // As RunningShop::start, with a service.version (the canary panels and the
    // new-version annotation key on it).
    let endpoint = collector.grpc_endpoint();
    let guard = agent_builder("shop", Some(&endpoint))
        .resource_attribute("service.version", "2.0.0-dashboards")
        .start()
        .expect("agent starts");
    let factory_endpoint = endpoint.clone();
    let factory: sample_service::AgentFactory =
        std::sync::Arc::new(move |name| agent_builder(name, Some(&factory_endpoint)));
    let started = sample_service::Shop::start(shop_config, guard.agent().clone(), factory)
        .await
        .expect("the shop starts on the local backends");
    let shop = RunningShop {
        base: format!("http://{}", started.addr),
        shop: started,
        agent: guard,
    };
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
    // An exception, twice with different numbers in the message: one group.
    for order in [1041, 1042] {
        let mut span = shop
            .agent
            .agent()
            .start_span("reconcile payment", agent::SpanKind::Internal);
        span.record_error(&std::io::Error::other(format!(
            "payment {order} rejected by the provider"
        )));
        span.end();
    }
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
        ("otel_traces_exceptions_1m", String::new()),
    ] {
        assert!(
            collector.wait_for_rows(table, &filter, 1).await >= 1,
            "{table} {filter}"
        );
    }

    let dashboards = load_dir(&workspace_dashboards()).expect("the dashboards parse");
    assert_eq!(dashboards.len(), 6);
    let range = TimeRange::last(Duration::from_secs(30 * 60));
    let mut problems = Vec::new();
    let mut runs = std::collections::BTreeMap::new();
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
        // No breaker opened and no 5xx happened in this run, so these stay empty;
        // one shop version runs here, so there is no other version to compare with.
        problems.extend(run.problems(&[
            "Breaker rejections per second",
            "Recent errors",
            "Canary verdict: each version against the rest",
        ]));
        runs.insert(d.uid.clone(), run);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let rows = |uid: &str, panel: &str, ref_id: &str| {
        runs[uid]
            .panels
            .iter()
            .find(|p| p.panel == panel && p.ref_id == ref_id)
            .unwrap_or_else(|| panic!("{uid} / {panel} [{ref_id}]"))
            .result
            .as_ref()
            .unwrap()
            .clone()
    };
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    // The map: shop → each downstream, from the shop's CLIENT spans (peer.service),
    // and each downstream is a node of its own; the parent/child drill-down agrees.
    let edges = rows("otel-service-map", "Service map", "edges");
    let pairs: Vec<(String, String)> = edges
        .rows
        .iter()
        .map(|r| (text(&r[1]), text(&r[2])))
        .collect();
    for callee in [
        "inventory",
        "recommendations",
        "shipping",
        "postgresql",
        "redis",
    ] {
        assert!(
            pairs.contains(&("shop".into(), callee.into())),
            "{callee}: {pairs:?}"
        );
    }
    let nodes = rows("otel-service-map", "Service map", "nodes");
    let node_ids: Vec<String> = nodes.rows.iter().map(|r| text(&r[0])).collect();
    for node in [
        "shop",
        "inventory",
        "recommendations",
        "shipping",
        "postgresql",
        "redis",
    ] {
        assert!(node_ids.contains(&node.to_string()), "{node}: {node_ids:?}");
    }
    let raw = rows(
        "otel-service-map",
        "Calls between services from parent/child spans",
        "A",
    );
    let raw_pairs: Vec<(String, String)> = raw
        .rows
        .iter()
        .map(|r| (text(&r[0]), text(&r[1])))
        .collect();
    for callee in ["inventory", "recommendations", "shipping"] {
        assert!(
            raw_pairs.contains(&("shop".into(), callee.into())),
            "{callee}: {raw_pairs:?}"
        );
    }
    // Outbound RED: PostgreSQL and Redis calls with a plausible rate and latency.
    let outbound = rows("otel-service-map", "Outbound RED", "A");
    let col = |r: &testkit::dashboards::QueryResult, name: &str| {
        r.columns
            .iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    for system in ["postgresql", "redis"] {
        let found: Vec<&Vec<Value>> = outbound
            .rows
            .iter()
            .filter(|r| text(&r[col(&outbound, "system")]) == system)
            .collect();
        assert!(!found.is_empty(), "{system}: {:?}", outbound.rows);
        for r in found {
            let p99 = number(&r[col(&outbound, "p99_ms")]);
            assert!(p99 > 0.0 && p99 < 10_000.0, "{system} {r:?}");
            assert!(number(&r[col(&outbound, "calls")]) >= 1.0, "{r:?}");
        }
    }
    // The injected exception: one group of two, the numbers normalised away.
    let groups = rows("otel-service-map", "Exception groups", "A");
    let group = groups
        .rows
        .iter()
        .find(|r| text(&r[col(&groups, "message")]) == "payment <n> rejected by the provider")
        .unwrap_or_else(|| panic!("{:?}", groups.rows));
    assert_eq!(number(&group[col(&groups, "count")]), 2.0, "{group:?}");
    assert_eq!(text(&group[col(&groups, "type")]), "std::io::error::Error");
    assert_eq!(text(&group[col(&groups, "trace")]).len(), 32, "{group:?}");
    // The trace panel carries events (and links): the sampled order trace's
    // spans come back, none cut off.
    let trace = rows("otel-traces", "Trace", "A");
    assert!(trace.columns.iter().any(|(n, _)| n == "logs"));
    assert!(trace.columns.iter().any(|(n, _)| n == "references"));
    let raw_spans = run_sql(
        &collector.client,
        &format!("SELECT count() FROM otel_traces WHERE TraceId = '{trace_id}'"),
    )
    .await
    .unwrap();
    assert_eq!(trace.rows.len() as f64, number(&raw_spans.rows[0][0]));

    // The new-version annotation marks the shop's version.
    let overview: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_dashboards().join("service-overview.json")).unwrap(),
    )
    .unwrap();
    let vars = std::collections::BTreeMap::new();
    let ctx = QueryContext {
        range,
        interval: Duration::from_secs(60),
        variables: &vars,
    };
    for a in overview["annotations"]["list"].as_array().unwrap() {
        let sql = interpolate(a["target"]["rawSql"].as_str().unwrap(), &ctx).unwrap();
        let r = run_sql(&collector.client, &sql).await.unwrap();
        assert!(
            r.rows
                .iter()
                .any(|row| text(&row[1]) == "shop 2.0.0-dashboards first seen"),
            "{:?}",
            r.rows
        );
    }

    // Every alert rule's query runs on this data and gives plausible values.
    let now_ms = range.to_ms;
    let queries = load_alert_queries(&workspace_alert_rules()).unwrap();
    assert!(queries.len() >= 5);
    for q in &queries {
        let (sql, result) = run_alert_query(&collector.client, q, now_ms).await;
        let r = result.unwrap_or_else(|e| panic!("{}: {e}\n  SQL: {sql}", q.rule_uid));
        let values: Vec<f64> = r
            .rows
            .iter()
            .map(|row| number(row.last().unwrap()))
            .collect();
        eprintln!(
            "alert {}: {} rows, values {values:?}",
            q.rule_uid,
            r.rows.len()
        );
        assert!(
            values.iter().all(|v| v.is_finite() && *v >= 0.0),
            "{}: {values:?}",
            q.rule_uid
        );
        match q.rule_uid.as_str() {
            "otel-error-rate" => assert!(values.iter().all(|v| *v <= 100.0) && !values.is_empty()),
            "otel-service-no-data" => {
                // The shop just sent spans: silent for less than the threshold.
                let shop = r
                    .rows
                    .iter()
                    .find(|row| text(&row[0]) == "shop")
                    .expect("shop");
                assert!(number(&shop[1]) < q.threshold.unwrap(), "{shop:?}");
            }
            "otel-latency-slo-burn" | "otel-collector-spool-age" => {
                assert!(!values.is_empty(), "{}", q.rule_uid)
            }
            // The counter appears once a row fails: none did here.
            _ => {}
        }
    }

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

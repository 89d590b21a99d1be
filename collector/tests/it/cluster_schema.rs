//! The cluster layout (`clickhouse.cluster`), checked by the real engine.
//!
//! Every generated statement is parsed by ClickHouse (`formatQuery`). Then the
//! layout runs on what an embedded engine can host: a `remote_servers` cluster of
//! one local shard (no TCP server, so no second shard; no Keeper, so no
//! Replicated engines and no `ON CLUSTER`). The statements are the generated ones
//! with `ON CLUSTER` dropped and `Replicated*MergeTree(path, replica)` run as
//! `*MergeTree` (its dedup window as the non-replicated one); the Distributed
//! tables, sharding keys, views and rollups are as generated. The collector writes
//! through the Distributed tables (`distributed_foreground_insert`), and every
//! Grafana dashboard query runs against them.

use crate::common;

use std::time::Duration;

use collector::embedded::{EmbeddedClickHouse, EmbeddedConfig};
use collector::schema::{create_statements, probe_report, SchemaOptions, ALL_ROLLUPS, ALL_TABLES};
use common::*;
use opentelemetry_proto::tonic::trace::v1::{status, Span, Status};
use prost::Message;
use testkit::dashboards::{load_dir, run_dashboard, workspace_dashboards, RunOptions, TimeRange};
use testkit::{
    clickhouse_url, eventually, test_config, unique_database, workspace_local, TestCollector,
};

const CLUSTER: &str = "otel_local";
const REPLICATED_ARGS: &str = "('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')";

fn cluster_options(database: &str) -> SchemaOptions {
    SchemaOptions {
        database: database.into(),
        ttl_days: 7,
        cluster: Some(CLUSTER.into()),
        dedup_window: 1000,
    }
}

/// ClickHouse parses every statement of the cluster layout, and its formatting
/// keeps what matters (ON CLUSTER, the engines, the sharding keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cluster_statement_parses() {
    let client = clickhouse::Client::default().with_url(clickhouse_url());
    let statements = create_statements(&cluster_options("otel"));
    let mut distributed = 0;
    for sql in &statements {
        let formatted: String = client
            .query("SELECT formatQuery(?)")
            .bind(sql.as_str())
            .fetch_one()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(formatted.contains("ON CLUSTER otel_local"), "{formatted}");
        if formatted.contains("ENGINE = Distributed(") {
            distributed += 1;
        } else if formatted.starts_with("CREATE TABLE") {
            assert!(formatted.contains("ENGINE = Replicated"), "{formatted}");
            assert!(
                formatted.contains("{shard}") && formatted.contains("{replica}"),
                "{formatted}"
            );
        }
    }
    assert_eq!(distributed, ALL_TABLES.len() + ALL_ROLLUPS.len());
    println!(
        "{} cluster statements parsed by the engine",
        statements.len()
    );
}

/// A private embedded engine whose config declares `CLUSTER` as one local shard.
async fn engine_with_cluster(dir: &std::path::Path) -> EmbeddedClickHouse {
    let config_file = dir.join("cluster.xml");
    std::fs::write(
        &config_file,
        format!(
            "<clickhouse><tcp_port>9000</tcp_port>\
             <macros><shard>01</shard><replica>r1</replica></macros>\
             <remote_servers><{CLUSTER}><shard><replica><host>127.0.0.1</host><port>9000</port>\
             </replica></shard></{CLUSTER}></remote_servers></clickhouse>"
        ),
    )
    .unwrap();
    // The engine's virtualenv is shared; the front script is written into `home`,
    // so this engine gets a home of its own.
    let shared = std::env::var("COLLECTOR__EMBEDDED__HOME")
        .unwrap_or_else(|_| workspace_local("embedded-clickhouse"));
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::symlink(
        std::path::Path::new(&shared).join("venv"),
        home.join("venv"),
    )
    .unwrap();
    EmbeddedClickHouse::start(&EmbeddedConfig {
        home: home.display().to_string(),
        data_dir: dir.join("data").display().to_string(),
        config_file: Some(config_file.display().to_string()),
        ..EmbeddedConfig::default()
    })
    .await
    .expect("embedded engine with a cluster")
}

/// What of the generated statement one node without Keeper can run.
fn without_keeper(sql: &str) -> String {
    sql.replace(&format!(" ON CLUSTER `{CLUSTER}`"), "")
        .replace(REPLICATED_ARGS, "")
        .replace("ENGINE = Replicated", "ENGINE = ")
        .replace(
            ", replicated_deduplication_window",
            ", non_replicated_deduplication_window",
        )
}

fn server_span(trace: u8, i: u8, route: &str, error: bool, start: u64) -> Span {
    Span {
        trace_id: [trace; 16].to_vec(),
        span_id: [trace, i, 1, 1, 1, 1, 1, 1].to_vec(),
        name: format!("GET {route}"),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000_000 * (u64::from(i) + 1),
        attributes: vec![kv("http.route", s(route))],
        status: error.then(|| Status {
            code: status::StatusCode::Error as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_layout_runs_through_distributed_tables() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_cluster(dir.path()).await;
    let admin = clickhouse::Client::default().with_url(engine.url());
    let clusters: Vec<(String, u8)> = admin
        .query("SELECT cluster, is_local FROM system.clusters WHERE cluster = ?")
        .bind(CLUSTER)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(clusters, [(CLUSTER.to_string(), 1)]);

    let database = unique_database("cluster");
    let opts = cluster_options(&database);
    let statements = create_statements(&opts);
    for sql in &statements {
        let runnable = without_keeper(sql);
        admin
            .query(&runnable)
            .execute()
            .await
            .unwrap_or_else(|e| panic!("{runnable}: {e}"));
    }
    let engines: Vec<(String, String)> = admin
        .query("SELECT name, engine FROM system.tables WHERE database = ? ORDER BY name")
        .bind(&database)
        .fetch_all()
        .await
        .unwrap();
    for t in ALL_TABLES {
        assert!(
            engines.contains(&(t.name.to_string(), "Distributed".to_string())),
            "{engines:?}"
        );
    }
    let report = probe_report(&admin, &database).await.unwrap();
    assert_eq!(report.problems, []);
    assert_eq!(report.absent_extras, []);

    // The collector writes through the Distributed tables.
    let mut config = test_config(&database);
    config.clickhouse.url = engine.url().to_string();
    config.clickhouse.cluster = CLUSTER.into();
    config.clickhouse.create_schema = false;
    let c = TestCollector::start_with(config).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut spans = Vec::new();
    for trace in 1..=20u8 {
        for i in 0..5u8 {
            let route = if trace % 2 == 0 {
                "/cart"
            } else {
                "/items/{id}"
            };
            spans.push(server_span(trace, i, route, i == 4, now - 60_000_000_000));
        }
    }
    let (status, _, _) = post(
        &c.http_endpoint(),
        "/v1/traces",
        "application/x-protobuf",
        traces_request("shop", spans).encode_to_vec(),
        false,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(c.wait_for_rows("otel_traces", "", 100).await, 100);
    assert_eq!(c.wait_for_rows("otel_traces_local", "", 100).await, 100);

    // Rollups and the trace-id lookup, read through their Distributed tables.
    // A view's part commits just after its source's: poll.
    let (requests, errors, p50) = eventually(Duration::from_secs(30), || async {
        let r: (u64, u64, f64) = c
            .client
            .query(
                "SELECT toUInt64(sum(Requests)), toUInt64(sum(Errors)), \
                 quantilesDDMerge(0.01, 0.5)(DurationQuantiles)[1] FROM otel_traces_red_1m",
            )
            .fetch_one()
            .await
            .ok()?;
        (r.0 == 100).then_some(r)
    })
    .await
    .expect("the minute rollup counts every server span");
    assert_eq!((requests, errors), (100, 20));
    assert!((p50 - 3_000_000.0).abs() <= 30_000.0, "{p50}");
    let count_of = |sql: &'static str, want: u64| {
        let client = c.client.clone();
        async move {
            eventually(Duration::from_secs(30), || async {
                let n: u64 = client.query(sql).fetch_one().await.ok()?;
                (n == want).then_some(n)
            })
            .await
        }
    };
    assert_eq!(
        count_of(
            "SELECT toUInt64(sum(Requests)) FROM otel_traces_red_1h",
            100
        )
        .await,
        Some(100)
    );
    assert_eq!(
        count_of("SELECT uniqExact(TraceId) FROM otel_traces_trace_id_ts", 20).await,
        Some(20)
    );

    // A retried batch through the Distributed table is dropped by the shard.
    for _ in 0..2 {
        admin
            .query(&format!(
                "INSERT INTO `{database}`.otel_logs (Timestamp, TraceId, Body) \
                 SETTINGS distributed_foreground_insert = 1, insert_deduplication_token = 'retry-1' \
                 VALUES (now64(9), 'abc', 'once')"
            ))
            .execute()
            .await
            .unwrap();
    }
    assert_eq!(c.wait_for_rows("otel_logs", "Body = 'once'", 1).await, 1);

    // Every Grafana dashboard query runs through the Distributed tables.
    let range = TimeRange {
        from_ms: ((now - 30 * 60_000_000_000) / 1_000_000) as i64,
        to_ms: (now / 1_000_000) as i64 + 60_000,
    };
    let mut ran = 0;
    let mut with_rows = 0;
    let mut errors = Vec::new();
    for d in load_dir(&workspace_dashboards()).expect("dashboards load") {
        let mut opts = RunOptions::new(range);
        if d.uid == "otel-traces" {
            opts = opts.with_variable("trace_id", &["01010101010101010101010101010101"]);
        }
        let run = eventually(Duration::from_secs(5), || async {
            run_dashboard(&c.client, &d, &opts).await.ok()
        })
        .await
        .unwrap_or_else(|| panic!("{}: variables do not resolve", d.title));
        for p in &run.panels {
            ran += 1;
            match &p.result {
                Ok(r) => with_rows += usize::from(!r.rows.is_empty()),
                Err(e) => errors.push(format!("{} / {}: {e}", d.title, p.panel)),
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    println!(
        "{} statements ran; {ran} dashboard queries ran through Distributed tables, {with_rows} with rows",
        statements.len()
    );
    assert!(with_rows > 0);
    c.stop().await;
    drop(engine);
}

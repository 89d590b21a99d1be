//! Schema set-up and checking against the real engine.

use crate::common;

use std::time::Duration;

use collector::schema::{create_statements, probe, SchemaOptions};
use common::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use prost::Message;
use testkit::{clickhouse_url, eventually, test_config, unique_database, TestCollector};

fn one_log(service: &str) -> Vec<u8> {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(service),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: T0,
                    body: s("kept while the schema was wrong"),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// The generated DDL creates exactly the layout the probe expects, TTL included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_round_trips_through_the_engine() {
    let database = unique_database("ddl");
    let client = clickhouse::Client::default().with_url(clickhouse_url());
    let opts = SchemaOptions {
        database: database.clone(),
        ttl_days: 3,
        cluster: None,
        dedup_window: 100,
    };
    for sql in create_statements(&opts) {
        client
            .query(&sql)
            .execute()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // Twice: every statement is idempotent.
    for sql in create_statements(&opts) {
        client.query(&sql).execute().await.unwrap();
    }
    assert_eq!(probe(&client, &database).await.unwrap(), []);
    let ddl: String = client
        .query(&format!("SHOW CREATE TABLE `{database}`.otel_traces"))
        .fetch_one()
        .await
        .unwrap();
    assert!(
        ddl.contains("TTL toDateTime(Timestamp) + toIntervalDay(3)"),
        "{ddl}"
    );
    assert!(
        ddl.contains("non_replicated_deduplication_window = 100"),
        "{ddl}"
    );
    assert!(
        ddl.contains("INDEX idx_trace_id TraceId TYPE bloom_filter(0.001)"),
        "{ddl}"
    );
}

/// A table with a missing and a mistyped column keeps the collector from
/// exporting, with the exact problem in `/health/exporting` (and `/health/ready`,
/// which stays 200: it accepts); data sent meanwhile is kept and written once the
/// table is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_schema_blocks_writes_until_fixed() {
    let database = unique_database("wrong_schema");
    let admin = clickhouse::Client::default().with_url(clickhouse_url());
    let opts = SchemaOptions {
        database: database.clone(),
        ..Default::default()
    };
    for sql in create_statements(&opts) {
        admin.query(&sql).execute().await.unwrap();
    }
    admin
        .query(&format!(
            "ALTER TABLE `{database}`.otel_logs DROP COLUMN EventName"
        ))
        .execute()
        .await
        .unwrap();
    admin
        .query(&format!(
            "ALTER TABLE `{database}`.otel_logs MODIFY COLUMN SeverityNumber UInt16"
        ))
        .execute()
        .await
        .unwrap();

    let c = TestCollector::launch(test_config(&database)).await;
    assert!(!c.wait_ready(Duration::from_secs(2)).await);
    // Until its first probe finishes, readiness says the schema is not checked yet.
    let (status, body) = eventually(Duration::from_secs(30), || async {
        let (status, body) = c.admin_get("/health/exporting").await;
        (!body.contains("not checked yet")).then_some((status, body))
    })
    .await
    .expect("the first schema probe answered");
    assert_eq!(status, 503);
    assert!(
        body.contains("table otel_logs lacks columns EventName; column SeverityNumber is UInt16, expected UInt8"),
        "{body}"
    );
    assert_eq!(c.admin_get("/health/live").await.0, 200);
    let (status, body) = c.admin_get("/health/ready").await;
    assert_eq!(status, 200, "accepting while the schema is wrong: {body}");
    assert!(
        body.contains("table otel_logs lacks columns EventName"),
        "{body}"
    );

    let (status, _, _) = post(
        &c.http_endpoint(),
        "/v1/logs",
        "application/x-protobuf",
        one_log("patient"),
        false,
    )
    .await;
    assert_eq!(
        status, 200,
        "accepted while unready: it waits in the pipeline"
    );

    admin
        .query(&format!(
            "ALTER TABLE `{database}`.otel_logs ADD COLUMN EventName String"
        ))
        .execute()
        .await
        .unwrap();
    admin
        .query(&format!(
            "ALTER TABLE `{database}`.otel_logs MODIFY COLUMN SeverityNumber UInt8"
        ))
        .execute()
        .await
        .unwrap();
    assert!(
        c.wait_ready(Duration::from_secs(30)).await,
        "ready once fixed"
    );
    assert_eq!(
        c.wait_for_rows("otel_logs", "ServiceName = 'patient'", 1)
            .await,
        1
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_clickhouse_is_reported_not_ready() {
    let mut config = test_config(&unique_database("unreachable"));
    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    config.clickhouse.url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let c = TestCollector::launch(config).await;
    assert!(!c.wait_ready(Duration::from_secs(1)).await);
    let (status, body) = c.admin_get("/health/exporting").await;
    assert_eq!(status, 503);
    assert!(body.contains("creating the schema failed"), "{body}");
    c.collector.shutdown(Duration::from_millis(100)).await;
}

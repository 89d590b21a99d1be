//! A request retried by its client is stored once: across a restart of the
//! collector process (the index of recent fingerprints is rebuilt from the spool),
//! and whatever transport, body encoding or compression the retry uses.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use prost::Message;
use testkit::synthetic::traces_request;
use testkit::{clickhouse_url, eventually, scrape, unique_database, CollectorProcess};

const WAIT: Duration = Duration::from_secs(60);

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn spawn(database: &str, spool: &Path) -> CollectorProcess {
    CollectorProcess::spawn(
        env!("CARGO_BIN_EXE_collector"),
        &[
            ("clickhouse.url", clickhouse_url()),
            ("clickhouse.database", database.to_string()),
            ("spool.dir", spool.display().to_string()),
            // A segment per record: a delivered request's segment is deleted, so
            // after the restart its fingerprint is known from the fingerprint file.
            ("spool.segment_bytes", "1".to_string()),
            ("batching.max_delay_ms", "50".to_string()),
        ],
        &[],
    )
}

/// POSTs a body to `/v1/{signal}`, expects 200 and returns the response body.
async fn post(
    process: &CollectorProcess,
    signal: &str,
    content_type: &str,
    gzip: bool,
    body: Vec<u8>,
) -> Vec<u8> {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/{signal}", process.http_endpoint()))
        .header("content-type", content_type);
    let body = if gzip {
        request = request.header("content-encoding", "gzip");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&body).unwrap();
        e.finish().unwrap()
    } else {
        body
    };
    let response = request.body(body).send().await.expect("collector answers");
    assert_eq!(
        response.status().as_u16(),
        200,
        "{signal} as {content_type}"
    );
    response.bytes().await.unwrap().to_vec()
}

async fn duplicates(process: &CollectorProcess, signal: &str) -> u64 {
    let series = format!("collector_duplicate_requests_total{{signal=\"{signal}\"}}");
    scrape(&process.admin_endpoint(), &series)
        .await
        .expect("metrics answer")
}

/// Waits until `SELECT count() FROM table WHERE filter` is `n`.
async fn wait_for_count(client: &clickhouse::Client, table: &str, filter: &str, n: u64) {
    let sql = format!("SELECT count() FROM {table} WHERE {filter}");
    let seen = eventually(WAIT, || async {
        let c: u64 = client.query(&sql).fetch_one().await.unwrap_or(0);
        (c == n).then_some(c)
    })
    .await;
    assert_eq!(seen, Some(n), "{sql}");
}

/// `count()` and `uniqExact(SpanId)` of one synthetic request's spans (its trace).
async fn trace_rows(client: &clickhouse::Client, client_id: u32, request: u32) -> (u64, u64) {
    let mut trace_id = [0u8; 16];
    trace_id[..4].copy_from_slice(&(client_id + 1).to_be_bytes());
    trace_id[4..8].copy_from_slice(&request.to_be_bytes());
    trace_id[15] = 1;
    client
        .query("SELECT count(), uniqExact(SpanId) FROM otel_traces WHERE TraceId = ?")
        .bind(const_hex::encode(trace_id))
        .fetch_one()
        .await
        .unwrap()
}

fn has_fingerprint_file(spool: &Path) -> bool {
    std::fs::read_dir(spool)
        .unwrap()
        .any(|e| e.unwrap().path().extension() == Some("fp".as_ref()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_restart_is_acknowledged_and_stored_once() {
    let database = unique_database("dedup_restart");
    let spool = tempfile::tempdir().unwrap();
    let client = clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_database(&database);
    let now = now_nanos();
    let body = traces_request(0, 1, 50, now).encode_to_vec();

    let process = spawn(&database, spool.path());
    let first = post(
        &process,
        "traces",
        "application/x-protobuf",
        true,
        body.clone(),
    )
    .await;
    wait_for_count(&client, "otel_traces", "1", 50).await;
    // Delivered: its segment goes, its fingerprint moves to a fingerprint file.
    let moved = eventually(WAIT, || async {
        has_fingerprint_file(spool.path()).then_some(())
    })
    .await;
    assert!(moved.is_some(), "no fingerprint file after delivery");
    process.kill();

    // The client never got its answer and retries against the restarted process.
    let process = spawn(&database, spool.path());
    let retried = post(&process, "traces", "application/x-protobuf", false, body).await;
    assert_eq!(retried, first, "with the same answer");
    assert_eq!(duplicates(&process, "traces").await, 1);
    // A new request after it: once it is stored, so would the retry have been (one
    // table's parts are batched in arrival order).
    post(
        &process,
        "traces",
        "application/x-protobuf",
        false,
        traces_request(0, 2, 10, now).encode_to_vec(),
    )
    .await;
    wait_for_count(&client, "otel_traces", "1", 60).await;
    assert_eq!(trace_rows(&client, 0, 1).await, (50, 50), "stored once");
    drop(process);
}

fn logs_request(now: u64) -> ExportLogsServiceRequest {
    let text = |s: &str| {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(s.into())),
        })
    };
    let records = (0..20u64)
        .map(|i| LogRecord {
            time_unix_nano: now + i,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: text(&format!("order {i} paid")),
            attributes: vec![
                KeyValue {
                    key: "order.id".into(),
                    value: text(&i.to_string()),
                    ..Default::default()
                },
                KeyValue {
                    key: "http.route".into(),
                    value: text("/api/orders"),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_json_and_grpc_of_the_same_content_are_one_request() {
    let database = unique_database("dedup_encodings");
    let spool = tempfile::tempdir().unwrap();
    let client = clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_database(&database);
    let process = spawn(&database, spool.path());
    let now = now_nanos();

    let traces = traces_request(3, 1, 40, now);
    post(
        &process,
        "traces",
        "application/json",
        false,
        serde_json::to_vec(&traces).unwrap(),
    )
    .await;
    post(
        &process,
        "traces",
        "application/x-protobuf",
        true,
        traces.encode_to_vec(),
    )
    .await;
    let mut grpc = TraceServiceClient::connect(process.grpc_endpoint())
        .await
        .unwrap();
    grpc.export(traces.clone())
        .await
        .expect("gRPC retry acknowledged");
    assert_eq!(duplicates(&process, "traces").await, 2);
    // Different content is a different request.
    grpc.export(traces_request(3, 2, 40, now)).await.unwrap();
    assert_eq!(duplicates(&process, "traces").await, 2);

    let logs = logs_request(now);
    post(
        &process,
        "logs",
        "application/x-protobuf",
        false,
        logs.encode_to_vec(),
    )
    .await;
    post(
        &process,
        "logs",
        "application/json",
        true,
        serde_json::to_vec(&logs).unwrap(),
    )
    .await;
    assert_eq!(duplicates(&process, "logs").await, 1);

    wait_for_count(&client, "otel_traces", "1", 80).await;
    wait_for_count(&client, "otel_logs", "1", 20).await;
    assert_eq!(trace_rows(&client, 3, 1).await, (40, 40), "stored once");
    drop(process);
}

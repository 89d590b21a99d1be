//! Crash test: the collector process is SIGKILLed three times under load and
//! restarted on the same spool, while clients retry every request until it is
//! acknowledged. Every span must end up in ClickHouse exactly once: a request whose
//! answer was lost with the process, and that was stored before the kill, is
//! recognised when its client retries it (`collector_duplicate_requests_total`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

use crate::retrying_load::{assert_stored_exactly_once, stored_per_request, RetryingLoad};
use testkit::synthetic::traces_request;
use testkit::{clickhouse_url, eventually, scrape, unique_database, CollectorProcess};

const CLIENTS: u32 = 4;
const SPANS_PER_REQUEST: u16 = 500;
/// Kill points and the total, in acknowledged spans.
const KILL_AT: [u64; 3] = [40_000, 90_000, 140_000];
const TOTAL: u64 = 200_000;
const DUPLICATES: &str = "collector_duplicate_requests_total{signal=\"traces\"}";

fn spawn(database: &str, spool: &str) -> CollectorProcess {
    CollectorProcess::spawn(
        env!("CARGO_BIN_EXE_collector"),
        &[
            ("clickhouse.url", clickhouse_url()),
            ("clickhouse.database", database.to_string()),
            ("spool.dir", spool.to_string()),
            ("batching.max_delay_ms", "200".to_string()),
        ],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_with_retrying_clients_stores_every_span_once() {
    let database = unique_database("crash");
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = spool_dir.path().display().to_string();
    let mut process = spawn(&database, &spool);

    let load = RetryingLoad::start(process.grpc_endpoint(), CLIENTS, SPANS_PER_REQUEST);

    // Retries each process recognised; a killed process's count is read just
    // before the kill (one recognised in between is not counted: a lower bound).
    let mut recognised = 0;
    for kill_at in KILL_AT {
        load.wait_for(kill_at).await;
        recognised += scrape(&process.admin_endpoint(), DUPLICATES)
            .await
            .unwrap_or(0);
        let killed_at = load.acked_spans();
        assert!(killed_at >= kill_at, "{killed_at} < {kill_at}");
        process.kill();
        println!("SIGKILL at {killed_at} acknowledged spans");
        process = tokio::task::spawn_blocking({
            let (database, spool) = (database.clone(), spool.clone());
            move || spawn(&database, &spool)
        })
        .await
        .unwrap();
        load.point_at(process.grpc_endpoint());
    }
    load.wait_for(TOTAL).await;
    let ledger = load.finish().await;
    // Every request is answered: once the spool is empty, everything stored is in
    // ClickHouse, duplicates included if there were any.
    let drained = eventually(Duration::from_secs(120), || async {
        let bytes = scrape(&process.admin_endpoint(), "collector_spool_bytes").await;
        (bytes == Some(0)).then_some(())
    })
    .await;
    assert!(drained.is_some(), "the spool did not drain");
    recognised += scrape(&process.admin_endpoint(), DUPLICATES)
        .await
        .unwrap_or(0);

    let client = clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_database(&database);
    let stored = stored_per_request(&client).await;
    println!(
        "acknowledged {} requests; {} attempts broke after sending, {} requests were \
         acknowledged on a retry, {recognised} retries were recognised as already stored",
        ledger.acked.len(),
        ledger.broken_attempts,
        ledger.retried.len(),
    );
    let (acked, total, distinct) = assert_stored_exactly_once(&ledger, &stored, SPANS_PER_REQUEST);
    println!("acknowledged {acked} spans; rows {total}, distinct {distinct}");
    assert!(acked >= TOTAL);
    assert!(
        ledger.broken_attempts >= KILL_AT.len() as u64,
        "each kill breaks some client's request: {}",
        ledger.broken_attempts
    );
    assert!(
        recognised <= ledger.broken_attempts,
        "more duplicates ({recognised}) than attempts whose answer was lost"
    );
    // Each broken request was retried until acknowledged: the retry path ran.
    assert!(
        !ledger.retried.is_empty() && ledger.retried.len() as u64 <= ledger.broken_attempts,
        "{} requests acknowledged on a retry, {} broken attempts",
        ledger.retried.len(),
        ledger.broken_attempts
    );
    process.terminate();
}

/// SIGTERM: the collector stops accepting, writes what it can within its drain
/// time and leaves the rest in the spool, which the next start delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_keeps_the_rest() {
    let database = unique_database("sigterm");
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = spool_dir.path().display().to_string();
    // A long batching delay: at SIGTERM the rows are still queued, not yet written.
    let sets = |delay_ms: u64| {
        vec![
            ("clickhouse.url", clickhouse_url()),
            ("clickhouse.database", database.clone()),
            ("spool.dir", spool.clone()),
            ("batching.max_delay_ms", delay_ms.to_string()),
        ]
    };
    let mut process = CollectorProcess::spawn(
        env!("CARGO_BIN_EXE_collector"),
        &sets(60_000),
        &["--drain-secs", "10"],
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut grpc = TraceServiceClient::connect(process.grpc_endpoint())
        .await
        .unwrap();
    for n in 0..20 {
        grpc.export(traces_request(0, n, 100, now))
            .await
            .expect("accepted");
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = process.terminate();
        (status, process)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "clean exit: {:?}", status.0);
    let client = clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_database(&database);
    let stored: u64 = client
        .query("SELECT count() FROM otel_traces")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        stored, 2000,
        "the drain wrote the queued batch instead of waiting a minute"
    );
    let refused = TraceServiceClient::connect(status.1.grpc_endpoint()).await;
    assert!(refused.is_err(), "no longer accepting");

    // No drain time: what is not written stays in the spool; the next start writes it.
    let mut process = CollectorProcess::spawn(
        env!("CARGO_BIN_EXE_collector"),
        &sets(60_000),
        &["--drain-secs", "0"],
    );
    let mut grpc = TraceServiceClient::connect(process.grpc_endpoint())
        .await
        .unwrap();
    for n in 0..20 {
        grpc.export(traces_request(1, n, 100, now))
            .await
            .expect("accepted");
    }
    let status = tokio::task::spawn_blocking(move || process.terminate())
        .await
        .unwrap();
    assert!(status.success());
    let left: u64 = client
        .query("SELECT count() FROM otel_traces")
        .fetch_one()
        .await
        .unwrap();
    let process = CollectorProcess::spawn(env!("CARGO_BIN_EXE_collector"), &sets(100), &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (rows, distinct) = loop {
        let (rows, distinct): (u64, u64) = client
            .query("SELECT count(), uniqExact(SpanId) FROM otel_traces")
            .fetch_one()
            .await
            .unwrap();
        if rows >= 4000 || Instant::now() > deadline {
            break (rows, distinct);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("after SIGTERM with no drain time {left} of 4000 rows were stored; after the restart {rows}");
    assert!(
        (2000..4000).contains(&left),
        "the first run's 2000 rows are stored, the second run's stay spooled: {left}"
    );
    assert_eq!((rows, distinct), (4000, 4000));
    drop(process);
}

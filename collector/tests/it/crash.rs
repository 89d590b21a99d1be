//! Crash test: the collector process is SIGKILLed three times under load and
//! restarted on the same spool, while clients retry every request until it is
//! acknowledged. Every span must end up in ClickHouse exactly once: a request whose
//! answer was lost with the process, and that was stored before the kill, is
//! recognised when its client retries it (`collector_duplicate_requests_total`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use testkit::synthetic::traces_request;
use testkit::{clickhouse_url, eventually, scrape, unique_database, CollectorProcess};

const CLIENTS: u32 = 4;
const SPANS_PER_REQUEST: u16 = 500;
/// Kill points and the total, in acknowledged spans.
const KILL_AT: [u64; 3] = [40_000, 90_000, 140_000];
const TOTAL: u64 = 200_000;
const DUPLICATES: &str = "collector_duplicate_requests_total{signal=\"traces\"}";

#[derive(Default)]
struct Ledger {
    acked: BTreeSet<(u32, u32)>,
    /// Attempts that were sent on an open connection and got no answer (the
    /// process died, the connection broke): the request may or may not be stored.
    broken_attempts: u64,
    /// Requests acknowledged after at least one such attempt.
    retried: BTreeSet<(u32, u32)>,
}

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

    let endpoint = Arc::new(RwLock::new(process.grpc_endpoint()));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let acked_spans = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;

    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (endpoint, ledger, acked_spans, done) = (
            endpoint.clone(),
            ledger.clone(),
            acked_spans.clone(),
            done.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut n = 0u32;
            let mut broke = false;
            // A request whose answer was lost is retried even after the end.
            while !done.load(SeqCst) || broke {
                let ep = endpoint.read().unwrap().clone();
                let Ok(mut grpc) = TraceServiceClient::connect(ep).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                while !done.load(SeqCst) || broke {
                    // The same request until it is acknowledged, as an OTLP
                    // exporter retries.
                    let request = traces_request(client, n, SPANS_PER_REQUEST, now);
                    let outcome = grpc.export(request).await;
                    let mut l = ledger.lock().unwrap();
                    match outcome {
                        Ok(_) => {
                            l.acked.insert((client, n));
                            if broke {
                                l.retried.insert((client, n));
                            }
                            acked_spans.fetch_add(u64::from(SPANS_PER_REQUEST), SeqCst);
                            n += 1;
                            broke = false;
                        }
                        Err(_) => {
                            l.broken_attempts += 1;
                            broke = true;
                            break;
                        }
                    }
                }
            }
        }));
    }

    let wait_for = |target: u64| {
        let acked_spans = acked_spans.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            while acked_spans.load(SeqCst) < target {
                assert!(
                    Instant::now() < deadline,
                    "load stalled at {}",
                    acked_spans.load(SeqCst)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Retries each process recognised; a killed process's count is read just
    // before the kill (one recognised in between is not counted: a lower bound).
    let mut recognised = 0;
    for kill_at in KILL_AT {
        wait_for(kill_at).await;
        recognised += scrape(&process.admin_endpoint(), DUPLICATES)
            .await
            .unwrap_or(0);
        let killed_at = acked_spans.load(SeqCst);
        assert!(killed_at >= kill_at, "{killed_at} < {kill_at}");
        process.kill();
        println!("SIGKILL at {killed_at} acknowledged spans");
        process = tokio::task::spawn_blocking({
            let (database, spool) = (database.clone(), spool.clone());
            move || spawn(&database, &spool)
        })
        .await
        .unwrap();
        *endpoint.write().unwrap() = process.grpc_endpoint();
    }
    wait_for(TOTAL).await;
    done.store(true, SeqCst);
    for c in clients {
        c.await.unwrap();
    }
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

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let acked = ledger.acked.len() as u64 * u64::from(SPANS_PER_REQUEST);
    let client = clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_database(&database);
    // The request a span came from is encoded in the first 6 bytes of its id.
    let per_request: Vec<(String, u64, u64)> = client
        .query("SELECT substring(SpanId, 1, 12) AS r, count(), uniqExact(SpanId) FROM otel_traces GROUP BY r")
        .fetch_all()
        .await
        .unwrap();
    let stored: BTreeMap<(u32, u32), (u64, u64)> = per_request
        .into_iter()
        .map(|(r, count, distinct)| {
            let client = u32::from_str_radix(&r[..6], 16).unwrap() - 1;
            let n = u32::from_str_radix(&r[6..], 16).unwrap();
            ((client, n), (count, distinct))
        })
        .collect();
    let whole = (u64::from(SPANS_PER_REQUEST), u64::from(SPANS_PER_REQUEST));
    for req in &ledger.acked {
        assert_eq!(
            stored.get(req),
            Some(&whole),
            "acknowledged request {req:?}: (rows, distinct spans)"
        );
    }
    let never_acked: Vec<_> = stored
        .keys()
        .filter(|r| !ledger.acked.contains(r))
        .collect();
    let total: u64 = stored.values().map(|(c, _)| c).sum();
    let distinct: u64 = stored.values().map(|(_, d)| d).sum();
    println!(
        "acknowledged {acked} spans in {} requests; rows {total}, distinct {distinct}; \
         {} attempts broke after sending, {} requests were acknowledged on a retry, \
         {recognised} retries were recognised as already stored",
        ledger.acked.len(),
        ledger.broken_attempts,
        ledger.retried.len(),
    );
    assert!(acked >= TOTAL);
    // Every request sent was retried until acknowledged.
    assert!(
        never_acked.is_empty(),
        "rows of unacknowledged requests {never_acked:?}"
    );
    assert_eq!(
        (total, distinct),
        (acked, acked),
        "count() = uniqExact(SpanId) = acknowledged spans"
    );
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

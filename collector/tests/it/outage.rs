//! Outage test: ClickHouse is stopped for 30 s under load, then started again.
//! While the spool has room, requests are acknowledged into it; once it is full,
//! clients are refused with RESOURCE_EXHAUSTED at once (never left to time out);
//! after ClickHouse returns, the backlog drains while new data keeps arriving, and
//! every acknowledged span is stored exactly once.
//!
//! This test runs its own embedded ClickHouse (it must stop and restart it), even
//! when CLICKHOUSE_URL names a server.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use collector::embedded::{EmbeddedClickHouse, EmbeddedConfig};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use testkit::synthetic::traces_request;
use testkit::{free_port, test_config, unique_database, workspace_local, TestCollector};

const CLIENTS: u32 = 4;
const SPANS_PER_REQUEST: u16 = 50;
const OUTAGE: Duration = Duration::from_secs(30);
const CLIENT_DEADLINE: Duration = Duration::from_secs(5);
const SPOOL_BUDGET: u64 = 512 * 1024;

#[derive(Default)]
struct Counts {
    acked_requests: AtomicU64,
    refused: AtomicU64,
    slowest_refusal_us: AtomicU64,
    timeouts: AtomicU64,
    other_errors: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_outage_loses_nothing_and_refuses_quickly() {
    let data = tempfile::tempdir().unwrap();
    let engine = EmbeddedConfig {
        home: workspace_local("embedded-clickhouse"),
        data_dir: data.path().display().to_string(),
        port: free_port(),
        ..EmbeddedConfig::default()
    };
    let mut clickhouse = Some(EmbeddedClickHouse::start(&engine).await.expect("engine"));
    let mut config = test_config(&unique_database("outage"));
    config.clickhouse.url = clickhouse.as_ref().unwrap().url().to_string();
    config.clickhouse.retry_max_ms = 1000;
    config.spool.max_disk_bytes = SPOOL_BUDGET;
    let c = Arc::new(TestCollector::start_with(config).await);

    let counts = Arc::new(Counts::default());
    let done = Arc::new(AtomicBool::new(false));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (counts, done, endpoint) = (counts.clone(), done.clone(), c.grpc_endpoint());
        clients.push(tokio::spawn(async move {
            let mut grpc = TraceServiceClient::connect(endpoint).await.unwrap();
            let mut n = 0;
            while !done.load(SeqCst) {
                let mut request =
                    tonic::Request::new(traces_request(client, n, SPANS_PER_REQUEST, now));
                request.set_timeout(CLIENT_DEADLINE);
                n += 1;
                let sent = Instant::now();
                match grpc.export(request).await {
                    Ok(_) => {
                        counts.acked_requests.fetch_add(1, SeqCst);
                    }
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                        counts.refused.fetch_add(1, SeqCst);
                        counts
                            .slowest_refusal_us
                            .fetch_max(sent.elapsed().as_micros() as u64, SeqCst);
                        // What a well-behaved client does with RetryInfo / Retry-After.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(s) if s.code() == tonic::Code::DeadlineExceeded => {
                        counts.timeouts.fetch_add(1, SeqCst);
                    }
                    Err(s) => {
                        eprintln!("unexpected: {s:?}");
                        counts.other_errors.fetch_add(1, SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = counts.acked_requests.load(SeqCst);
    clickhouse.take().unwrap().stop().await;
    let outage_started = Instant::now();
    tokio::time::sleep(OUTAGE / 3).await;
    // Not exporting; ready (accepting) only while the spool has room.
    let (status, body) = c.admin_get("/health/exporting").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("degraded") && body.contains("lane otel_traces: failing"),
        "{body}"
    );
    let (status, body) = c.admin_get("/health/ready").await;
    assert_eq!(
        status == 200,
        body.starts_with("ready: accepting"),
        "{body}"
    );
    tokio::time::sleep(OUTAGE.saturating_sub(outage_started.elapsed())).await;
    let acked_during = counts.acked_requests.load(SeqCst) - before;
    let refused_during = counts.refused.load(SeqCst);
    let backlog = c.collector.spool().used_bytes();

    let backlog_spans = counts.acked_requests.load(SeqCst) * u64::from(SPANS_PER_REQUEST);
    clickhouse = Some(
        EmbeddedClickHouse::start(&engine)
            .await
            .expect("engine restarts"),
    );
    let back = Instant::now();
    // Drained: everything acknowledged until ClickHouse returned is stored.
    loop {
        let stored: u64 = c
            .client
            .query("SELECT count() FROM otel_traces")
            .fetch_one()
            .await
            .unwrap_or(0);
        if stored >= backlog_spans {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(120),
            "backlog does not drain: {stored} of {backlog_spans}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained_in = back.elapsed();
    let acked_while_draining = counts.acked_requests.load(SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        counts.acked_requests.load(SeqCst) > acked_while_draining,
        "new data keeps flowing after the outage"
    );
    done.store(true, SeqCst);
    for t in clients {
        t.await.unwrap();
    }

    let acked = counts.acked_requests.load(SeqCst) * u64::from(SPANS_PER_REQUEST);
    assert_eq!(c.wait_for_rows("otel_traces", "", acked).await, acked);
    let (rows, distinct): (u64, u64) = c
        .client
        .query("SELECT count(), uniqExact(SpanId) FROM otel_traces")
        .fetch_one()
        .await
        .unwrap();
    println!(
        "outage {OUTAGE:?}: {acked_during} requests acknowledged into the spool, then {refused_during} refusals \
         (slowest {:.1} ms); the backlog ({backlog} spool bytes) was stored {:.2} s after ClickHouse \
         returned, while new data kept arriving; {acked} acknowledged spans, rows {rows}, distinct {distinct}",
        counts.slowest_refusal_us.load(SeqCst) as f64 / 1000.0,
        drained_in.as_secs_f64(),
    );
    assert_eq!(
        (rows, distinct),
        (acked, acked),
        "zero loss, zero duplicates"
    );
    assert!(acked_during > 0, "the spool took data during the outage");
    assert!(refused_during > 0, "a full spool refuses");
    assert_eq!(counts.timeouts.load(SeqCst), 0, "refusals, not timeouts");
    assert_eq!(counts.other_errors.load(SeqCst), 0);
    Arc::into_inner(c).expect("sole owner").stop().await;
    clickhouse.take().unwrap().stop().await;
}

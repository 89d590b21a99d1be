//! Many collectors: three collector processes (each its own spool, so its own
//! instance id and dedup tokens) write one ClickHouse database while one agent
//! spreads 300,000 spans over them (`OTEL_EXPORTER_OTLP_ENDPOINT=a,b,c`). One
//! collector is SIGKILLed mid-run: while it is down the agent must deliver to the
//! other two (failover), and after it restarts on the same spool every span the
//! agent counted as exported must be stored exactly once. A batch whose answer
//! was lost in the kill is resent to the same collector only (its spool may hold
//! it, and recognises the resend), so no span is stored twice.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::{AgentBuilder, Config, SpanKind};
use testkit::{clickhouse_url, eventually, scrape, unique_database, CollectorProcess};

const COLLECTORS: usize = 3;
const TOTAL: u64 = 300_000;
/// Exported spans when one collector is killed.
const KILL_AT: u64 = 100_000;
/// Spans the agent must export while that collector is down.
const WHILE_DOWN: u64 = 30_000;
/// Spans emitted but not yet exported, at most: the producer waits beyond this
/// so the agent's queue never overflows (a drop would not be "acknowledged").
const IN_FLIGHT: u64 = 8_000;
const ACCEPTED: &str = "collector_items_accepted_total{signal=\"traces\"}";
const DUPLICATES: &str = "collector_duplicate_requests_total{signal=\"traces\"}";
const SERVICE: &str = "scale-out";

/// The collector that was killed, and the counts at that moment.
#[derive(Clone, Copy)]
struct Killed {
    victim: usize,
    ports: (u16, u16, u16),
    /// Spans the other collectors had accepted.
    others_before: u64,
    exported_at_kill: u64,
}

/// The agent's JSON lines, kept for the test to read.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn spawn(
    database: &str,
    spool: &std::path::Path,
    ports: Option<(u16, u16, u16)>,
) -> CollectorProcess {
    let sets = [
        ("clickhouse.url", clickhouse_url()),
        ("clickhouse.database", database.to_string()),
        ("spool.dir", spool.display().to_string()),
        ("batching.max_delay_ms", "200".to_string()),
    ];
    let binary = env!("CARGO_BIN_EXE_collector");
    match ports {
        Some(ports) => CollectorProcess::spawn_on(binary, ports, &sets, &[]),
        None => CollectorProcess::spawn(binary, &sets, &[]),
    }
}

async fn accepted(process: &CollectorProcess) -> u64 {
    scrape(&process.admin_endpoint(), ACCEPTED)
        .await
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_collectors_one_killed_every_exported_span_stored_once() {
    let started = Instant::now();
    let database = unique_database("scale_out");
    let spools: Vec<tempfile::TempDir> = (0..COLLECTORS)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let mut processes: Vec<CollectorProcess> = spools
        .iter()
        .map(|s| spawn(&database, s.path(), None))
        .collect();
    let instances: HashSet<String> = spools
        .iter()
        .map(|s| std::fs::read_to_string(s.path().join("instance")).expect("instance id"))
        .collect();
    assert_eq!(
        instances.len(),
        COLLECTORS,
        "each spool has its own instance id"
    );

    let endpoints = processes
        .iter()
        .map(CollectorProcess::grpc_endpoint)
        .collect::<Vec<_>>()
        .join(",");
    // The agent's own warnings (JSON lines) say when it fails over or parks.
    let lines = Lines::default();
    let guard = AgentBuilder::from_config(Config::default())
        .service_name(SERVICE)
        .endpoint(endpoints)
        .export_interval(Duration::from_millis(50))
        .queue_capacity(4 * IN_FLIGHT as usize, 1024)
        // A batch parked on the killed collector waits for its restart.
        .export_timeout(Duration::from_secs(60))
        .shutdown_deadline(Duration::from_secs(60))
        .log_writer(lines.clone())
        .start()
        .expect("agent starts");
    let agent = guard.agent().clone();
    let settled = |agent: &agent::Agent| {
        let s = agent.stats().spans;
        s.exported + s.dropped()
    };

    let mut emitted = 0u64;
    let mut killed: Option<Killed> = None;
    let mut failover_checked = false;
    let deadline = Instant::now() + Duration::from_secs(240);
    while emitted < TOTAL {
        assert!(
            Instant::now() < deadline,
            "stalled: {:?}",
            agent.stats().spans
        );
        while emitted < TOTAL && emitted - settled(&agent) < IN_FLIGHT {
            agent.start_span("scale-out work", SpanKind::Internal).end();
            emitted += 1;
        }
        let exported = agent.stats().spans.exported;
        match killed {
            None if exported >= KILL_AT => {
                // All three must have taken a share for the balancing to be real.
                let mut counts = Vec::new();
                for p in &processes {
                    counts.push(accepted(p).await);
                }
                assert!(counts.iter().all(|&c| c > 0), "not balanced: {counts:?}");
                let victim = 1;
                let ports = processes[victim].ports();
                let dead = processes.remove(victim);
                dead.kill();
                // The others' counts first, then the agent's: a batch the agent
                // counts after this read was acknowledged after the scrape (but
                // for the one it was sending).
                let mut others = 0;
                for p in &processes {
                    others += accepted(p).await;
                }
                let exported = agent.stats().spans.exported;
                println!("SIGKILL collector {victim} at {exported} exported spans; accepted before: {counts:?}");
                killed = Some(Killed {
                    victim,
                    ports,
                    others_before: others,
                    exported_at_kill: exported,
                });
            }
            Some(Killed {
                victim,
                ports,
                others_before,
                exported_at_kill,
            }) if !failover_checked && exported >= exported_at_kill + WHILE_DOWN => {
                let mut others = 0;
                for p in &processes {
                    others += accepted(p).await;
                }
                // What the agent exported while it was down went to the others
                // (less a batch in flight, or one the victim answered as it died).
                assert!(
                    others - others_before >= WHILE_DOWN - 2 * 512,
                    "the others took {} spans while collector {victim} was down",
                    others - others_before
                );
                println!(
                    "while down: the other collectors took {} spans",
                    others - others_before
                );
                let spool = spools[victim].path().to_path_buf();
                let database = database.clone();
                let restarted =
                    tokio::task::spawn_blocking(move || spawn(&database, &spool, Some(ports)))
                        .await
                        .unwrap();
                processes.insert(victim, restarted);
                failover_checked = true;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(failover_checked, "the kill happened and the run went on");
    guard.shutdown_async().await.expect("flushed in time");
    let stats = agent.stats().spans;
    println!("agent: {stats:?}");
    assert_eq!(stats.queue_full, 0, "the producer never overran the queue");
    assert_eq!(stats.export_failed, 0, "every batch was acknowledged");
    assert_eq!(stats.exported, TOTAL);
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    // The first failure at a collector is reported either way: refused (the batch
    // moved on) or broken mid-request (the batch waits for that collector).
    let refused = text.matches("sending to the others").count();
    let parked = text.matches("resending it there only").count();
    println!("agent warnings: {refused} refused, {parked} batches parked on their collector");
    assert!(
        refused + parked >= 1,
        "the agent never noticed the collector was down:\n{text}"
    );

    // Every collector's spool drains into ClickHouse.
    for p in &processes {
        let drained = eventually(Duration::from_secs(120), || async {
            (scrape(&p.admin_endpoint(), "collector_spool_bytes").await == Some(0)).then_some(())
        })
        .await;
        assert!(
            drained.is_some(),
            "spool of {} did not drain",
            p.admin_endpoint()
        );
    }
    let mut recognised = 0;
    for p in &processes {
        recognised += scrape(&p.admin_endpoint(), DUPLICATES).await.unwrap_or(0);
    }
    let client = clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_database(&database);
    let (rows, distinct): (u64, u64) = client
        .query("SELECT count(), uniqExact(SpanId) FROM otel_traces WHERE ServiceName = ?")
        .bind(SERVICE)
        .fetch_one()
        .await
        .unwrap();
    println!(
        "stored rows {rows}, distinct spans {distinct}; {recognised} resends recognised \
         by the restarted collector; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (rows, distinct),
        (TOTAL, TOTAL),
        "each exported span exactly once"
    );
}

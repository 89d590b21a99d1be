//! Crash loop (issue 14): ClickHouse goes away under load; while it is away the
//! collector is SIGKILLed and restarted five times (three of them as soon as it
//! answers after a start, while it replays the spool's recorded batches); after
//! ClickHouse returns it is killed once more while the backlog flushes. Clients
//! retry every request until it is acknowledged. Every acknowledged span must be
//! stored exactly once.
//!
//! The outage is a TCP proxy this test controls in front of the real ClickHouse:
//! "down" resets every open connection and every new one, as a stopped server
//! (or a crashed one, mid-INSERT) does.

use std::time::{Duration, Instant};

use crate::retrying_load::{assert_stored_exactly_once, stored_per_request, RetryingLoad};
use testkit::{clickhouse_url, eventually, scrape, unique_database, CollectorProcess};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const CLIENTS: u32 = 4;
const SPANS_PER_REQUEST: u16 = 200;
/// Kills while ClickHouse is away; the first `REPLAY_KILLS` right after a start.
const OUTAGE_KILLS: usize = 5;
const REPLAY_KILLS: usize = 3;
/// Acknowledged spans between two kills of the outage.
const SPANS_BETWEEN_KILLS: u64 = 20_000;

/// Closes with a reset (SO_LINGER 0, which never blocks), as a dead server's
/// kernel answers.
#[allow(deprecated)]
fn reset(stream: &TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

/// A TCP proxy that can be switched off: connections are reset, new ones too.
struct Proxy {
    url: String,
    up: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (up, _) = watch::channel(true);
        let state = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let mut up = state.subscribe();
                if !*up.borrow() {
                    reset(&client);
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = up.wait_for(|up| !*up) => {
                            // Reset, not a clean close: a server that died.
                            reset(&client);
                        }
                    }
                });
            }
        });
        Proxy { url, up }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

fn sets(url: &str, database: &str, spool: &str) -> Vec<(&'static str, String)> {
    vec![
        ("clickhouse.url", url.to_string()),
        ("clickhouse.database", database.to_string()),
        ("clickhouse.retry_max_ms", "500".to_string()),
        // Small batches, one INSERT per table at a time: the backlog flush takes
        // long enough to be interrupted.
        ("clickhouse.insert_concurrency", "1".to_string()),
        ("batching.max_rows", "4000".to_string()),
        ("batching.max_delay_ms", "200".to_string()),
        ("spool.dir", spool.to_string()),
        ("telemetry.export_interval_ms", "0".to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_while_clickhouse_is_away_stores_every_span_once() {
    let target = clickhouse_url();
    let upstream = target
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let proxy = Proxy::start(upstream).await;
    let database = unique_database("crash_loop");
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = spool_dir.path().display().to_string();
    let collector = env!("CARGO_BIN_EXE_collector");
    let spawn = |wait_exporting: bool| {
        let sets = sets(&proxy.url, &database, &spool);
        async move {
            tokio::task::spawn_blocking(move || {
                if wait_exporting {
                    CollectorProcess::spawn(collector, &sets, &[])
                } else {
                    CollectorProcess::launch(collector, &sets, &[])
                }
            })
            .await
            .unwrap()
        }
    };
    let mut process = spawn(true).await;

    let load = RetryingLoad::start(process.grpc_endpoint(), CLIENTS, SPANS_PER_REQUEST);
    let ch = clickhouse::Client::default()
        .with_url(&target)
        .with_database(&database);
    let stored = || async {
        ch.query("SELECT count() FROM otel_traces")
            .fetch_one::<u64>()
            .await
            .unwrap()
    };

    load.wait_for(10_000).await;
    proxy.set(false);
    let outage_started = Instant::now();
    let stored_at_outage = stored().await;
    println!(
        "ClickHouse away at {} acknowledged spans ({stored_at_outage} stored)",
        load.acked_spans()
    );
    let mut kills = Vec::new();
    // An INSERT whose body reached ClickHouse before the reset may still land;
    // from the first kill on nothing can.
    let mut stored_after_first_kill = None;
    for k in 0..OUTAGE_KILLS {
        let during_replay = k < REPLAY_KILLS;
        if !during_replay {
            load.wait_for(load.acked_spans() + SPANS_BETWEEN_KILLS)
                .await;
        }
        let spooled = scrape(&process.admin_endpoint(), "collector_spool_bytes").await;
        let acked = load.acked_spans();
        process.kill();
        if k == 0 {
            stored_after_first_kill = Some(stored().await);
        }
        kills.push((acked, spooled));
        println!(
            "SIGKILL {} while ClickHouse is away{}: {acked} acknowledged spans, spool {spooled:?} bytes",
            k + 1,
            if during_replay {
                " (during start-up replay)"
            } else {
                ""
            }
        );
        if k + 1 < REPLAY_KILLS {
            // The next kill comes as soon as the new process answers: it is
            // replaying the batches recorded before (ClickHouse is away, so it
            // cannot finish).
            process = spawn(false).await;
            let admin = process.admin_endpoint();
            let up = eventually(Duration::from_secs(60), || async {
                scrape(&admin, "collector_spool_bytes").await
            })
            .await;
            assert!(
                up.is_some_and(|b| b > 0),
                "restarted with a spool to replay: {up:?}"
            );
        } else {
            process = tokio::task::spawn_blocking({
                let sets = sets(&proxy.url, &database, &spool);
                move || CollectorProcess::spawn_accepting(collector, &sets, &[])
            })
            .await
            .unwrap();
        }
        load.point_at(process.grpc_endpoint());
    }
    load.wait_for(load.acked_spans() + SPANS_BETWEEN_KILLS)
        .await;
    assert_eq!(
        Some(stored().await),
        stored_after_first_kill,
        "nothing reached ClickHouse while it was away"
    );
    let ready = reqwest::get(format!("{}/health/ready", process.admin_endpoint()))
        .await
        .unwrap();
    assert_eq!(
        ready.status().as_u16(),
        200,
        "accepting while spooling through the outage"
    );
    let exporting = reqwest::get(format!("{}/health/exporting", process.admin_endpoint()))
        .await
        .unwrap();
    assert_eq!(exporting.status().as_u16(), 503, "not exporting");

    // ClickHouse returns; the backlog flushes; kill once more in the middle of it.
    let backlog = scrape(&process.admin_endpoint(), "collector_spool_bytes")
        .await
        .unwrap_or(0);
    let outage = outage_started.elapsed();
    proxy.set(true);
    let flushing = eventually(Duration::from_secs(120), || async {
        let rows = stored().await;
        let spooled = scrape(&process.admin_endpoint(), "collector_spool_bytes")
            .await
            .unwrap_or(0);
        (rows > stored_after_first_kill.unwrap_or(0) && spooled > 0).then_some((rows, spooled))
    })
    .await;
    let (rows_at_kill, spooled_at_kill) = flushing.expect("the backlog flush was seen under way");
    process.kill();
    let flush_kill = (load.acked_spans(), rows_at_kill, spooled_at_kill);
    println!(
        "SIGKILL {} during the backlog flush: {} acknowledged spans, {rows_at_kill} stored, {spooled_at_kill} bytes still spooled (backlog was {backlog} bytes after {outage:?} away)",
        OUTAGE_KILLS + 1,
        flush_kill.0
    );
    process = spawn(false).await;
    process.wait_for("/health/ready", Duration::from_secs(60));
    load.point_at(process.grpc_endpoint());

    load.wait_for(load.acked_spans() + SPANS_BETWEEN_KILLS)
        .await;
    let ledger = load.finish().await;
    let drained = eventually(Duration::from_secs(180), || async {
        let bytes = scrape(&process.admin_endpoint(), "collector_spool_bytes").await;
        (bytes == Some(0)).then_some(())
    })
    .await;
    assert!(drained.is_some(), "the spool did not drain");

    let stored_requests = stored_per_request(&ch).await;
    println!(
        "{} kills ({OUTAGE_KILLS} while ClickHouse was away, {REPLAY_KILLS} of them during start-up replay, 1 during the flush); \
         acknowledged {} requests; {} attempts broke",
        kills.len() + 1,
        ledger.acked.len(),
        ledger.broken_attempts,
    );
    let (acked, total, distinct) =
        assert_stored_exactly_once(&ledger, &stored_requests, SPANS_PER_REQUEST);
    println!("acknowledged {acked} spans; rows {total}, distinct {distinct}");
    assert_eq!(kills.len(), OUTAGE_KILLS);
    assert!(
        kills
            .iter()
            .all(|(_, spooled)| spooled.is_some_and(|b| b > 0)),
        "every kill during the outage found rows spooled: {kills:?}"
    );
    assert!(
        flush_kill.1 > stored_after_first_kill.unwrap_or(0) && flush_kill.2 > 0,
        "the last kill came mid-flush: {flush_kill:?}"
    );
    assert!(
        acked > kills.last().unwrap().0,
        "load went on after the kills"
    );
    process.terminate();
}

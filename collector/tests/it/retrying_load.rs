//! The crash tests' load: clients that send OTLP trace requests to a collector whose
//! address changes when it is restarted, and retry each request until it is
//! acknowledged, as an OTLP exporter does; and the check of what ClickHouse stored
//! against what was acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use testkit::synthetic::traces_request;
use tokio::task::JoinHandle;

#[derive(Default)]
pub struct Ledger {
    /// (client, request number) of every acknowledged request.
    pub acked: BTreeSet<(u32, u32)>,
    /// Attempts that were sent on an open connection and got no answer (the
    /// process died, the connection broke): the request may or may not be stored.
    pub broken_attempts: u64,
    /// Requests acknowledged after at least one such attempt.
    pub retried: BTreeSet<(u32, u32)>,
}

pub struct RetryingLoad {
    endpoint: Arc<RwLock<String>>,
    ledger: Arc<Mutex<Ledger>>,
    acked_spans: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    clients: Vec<JoinHandle<()>>,
}

impl RetryingLoad {
    /// `clients` tasks sending requests of `spans_per_request` spans to `endpoint`.
    pub fn start(endpoint: String, clients: u32, spans_per_request: u16) -> RetryingLoad {
        let endpoint = Arc::new(RwLock::new(endpoint));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let acked_spans = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let clients = (0..clients)
            .map(|client| {
                let (endpoint, ledger, acked_spans, done) = (
                    endpoint.clone(),
                    ledger.clone(),
                    acked_spans.clone(),
                    done.clone(),
                );
                tokio::spawn(async move {
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
                            // The same request until it is acknowledged.
                            let request = traces_request(client, n, spans_per_request, now);
                            let outcome = grpc.export(request).await;
                            let acked = {
                                let mut l = ledger.lock().unwrap();
                                match outcome {
                                    Ok(_) => {
                                        l.acked.insert((client, n));
                                        if broke {
                                            l.retried.insert((client, n));
                                        }
                                        true
                                    }
                                    Err(_) => {
                                        l.broken_attempts += 1;
                                        false
                                    }
                                }
                            };
                            if acked {
                                acked_spans.fetch_add(u64::from(spans_per_request), SeqCst);
                                n += 1;
                                broke = false;
                            } else {
                                broke = true;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        RetryingLoad {
            endpoint,
            ledger,
            acked_spans,
            done,
            clients,
        }
    }

    /// Where the clients connect from now on (a restarted collector).
    pub fn point_at(&self, endpoint: String) {
        *self.endpoint.write().unwrap() = endpoint;
    }

    pub fn acked_spans(&self) -> u64 {
        self.acked_spans.load(SeqCst)
    }

    /// Waits until at least `target` spans are acknowledged (at most 300 s).
    pub async fn wait_for(&self, target: u64) {
        let deadline = Instant::now() + Duration::from_secs(300);
        while self.acked_spans() < target {
            assert!(
                Instant::now() < deadline,
                "load stalled at {}",
                self.acked_spans()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops sending new requests, waits until every request sent is acknowledged
    /// and returns the ledger.
    pub async fn finish(self) -> Ledger {
        self.done.store(true, SeqCst);
        for c in self.clients {
            c.await.unwrap();
        }
        std::mem::take(&mut *self.ledger.lock().unwrap())
    }
}

/// What ClickHouse holds, per request: (rows, distinct span ids). The request a
/// span came from is encoded in the first 6 bytes of its id.
pub async fn stored_per_request(ch: &clickhouse::Client) -> BTreeMap<(u32, u32), (u64, u64)> {
    let per_request: Vec<(String, u64, u64)> = ch
        .query(
            "SELECT substring(SpanId, 1, 12) AS r, count(), uniqExact(SpanId) \
             FROM otel_traces GROUP BY r",
        )
        .fetch_all()
        .await
        .unwrap();
    per_request
        .into_iter()
        .map(|(r, count, distinct)| {
            let client = u32::from_str_radix(&r[..6], 16).unwrap() - 1;
            let n = u32::from_str_radix(&r[6..], 16).unwrap();
            ((client, n), (count, distinct))
        })
        .collect()
}

/// Every acknowledged request stored exactly once, nothing else stored: the
/// figures (acknowledged spans, rows, distinct spans) when it holds.
pub fn assert_stored_exactly_once(
    ledger: &Ledger,
    stored: &BTreeMap<(u32, u32), (u64, u64)>,
    spans_per_request: u16,
) -> (u64, u64, u64) {
    let acked = ledger.acked.len() as u64 * u64::from(spans_per_request);
    let whole = (u64::from(spans_per_request), u64::from(spans_per_request));
    let wrong: Vec<_> = ledger
        .acked
        .iter()
        .filter(|r| stored.get(r) != Some(&whole))
        .map(|r| (*r, stored.get(r).copied()))
        .collect();
    assert!(
        wrong.is_empty(),
        "acknowledged requests not stored exactly once (request, (rows, distinct)): {:?}",
        &wrong[..wrong.len().min(10)]
    );
    // Every request sent was retried until acknowledged.
    let never_acked: Vec<_> = stored
        .keys()
        .filter(|r| !ledger.acked.contains(r))
        .collect();
    assert!(
        never_acked.is_empty(),
        "rows of unacknowledged requests {never_acked:?}"
    );
    let total: u64 = stored.values().map(|(c, _)| c).sum();
    let distinct: u64 = stored.values().map(|(_, d)| d).sum();
    assert_eq!(
        (total, distinct),
        (acked, acked),
        "count() = uniqExact(SpanId) = acknowledged spans"
    );
    (acked, total, distinct)
}

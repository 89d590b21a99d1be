//! Several collectors for one signal: `OTEL_EXPORTER_OTLP_ENDPOINT=http://a:4317,http://b:4317`.
//!
//! Each batch goes to the next collector in turn (round robin) among those
//! believed up; a collector that refused a batch (not connected, or answered
//! "unavailable / overloaded") is skipped for a cooldown that doubles with each
//! failure, and the batch moves on to the next collector at once.
//!
//! A batch whose outcome is unknown (it was sent and the connection broke, or no
//! answer came in time) is different: the collector may have spooled it. Only
//! that collector can recognise a resend (its spool keeps request fingerprints),
//! so sending it elsewhere could store it twice. Such a batch is *parked*: a task
//! resends it to the same collector until it answers or the export timeout ends,
//! while the following batches flow to the others. With a single endpoint
//! nothing is parked and the export behaves as it always did.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinSet;

use super::error::StartError;
use super::retry::{self, Retry};
use super::transport::{ExportError, Payload, Transport};
use super::Stop;
use crate::config::{Config, Signal};
use crate::core::log_event::LogEvent;
use crate::core::{ExportCounts, Shared};

/// A collector that refused is skipped for this long, doubling per failure.
const FIRST_COOLDOWN: Duration = Duration::from_millis(250);
const MAX_COOLDOWN: Duration = Duration::from_secs(5);
/// Batches waiting for their collector at once; more are dropped (and counted)
/// so a hung collector cannot grow the agent's memory.
const MAX_PARKED: usize = 8;

use crate::config::split_endpoints as split;

/// What became of a batch that did not fail.
#[derive(Debug, PartialEq)]
pub(crate) enum Sent {
    Delivered,
    /// Waiting for the collector that may already hold it; counted when settled.
    Parked,
}

/// How a failed attempt bears on the other collectors.
#[derive(Debug, PartialEq)]
enum Failure {
    /// The collector did not take the batch: another one may.
    NotTaken,
    /// It may have taken it: only this collector may be asked again.
    Unsure,
    /// Bad data or a partial rejection: no collector would do better.
    Permanent,
}

fn classify(error: &ExportError) -> Failure {
    match error {
        // A status the server sent carries no source; one made from a transport
        // error does.
        ExportError::Grpc(status) if std::error::Error::source(status).is_none() => {
            match (retry::grpc(status), status.code()) {
                (Retry::After(_), _) | (_, tonic::Code::ResourceExhausted) => Failure::NotTaken,
                _ => Failure::Permanent,
            }
        }
        ExportError::Grpc(status) if refused(status) => Failure::NotTaken,
        ExportError::Grpc(_) => Failure::Unsure,
        ExportError::Http(e) if e.is_connect() => Failure::NotTaken,
        ExportError::Http(e) if e.is_builder() => Failure::Permanent,
        ExportError::Http(_) | ExportError::Timeout => Failure::Unsure,
        ExportError::HttpStatus { status, .. } => match retry::http(*status, None) {
            Retry::After(_) => Failure::NotTaken,
            Retry::Never => Failure::Permanent,
        },
        ExportError::Rejected(_) | ExportError::Encode(_) => Failure::Permanent,
    }
}

/// Whether a transport error is a refused connection (nothing was sent).
fn refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        // hyper-util's connect error hides the io::Error behind its own type.
        if e.to_string()
            .to_ascii_lowercase()
            .contains("connection refused")
        {
            return true;
        }
        next = e.source();
    }
    false
}

#[derive(Default)]
struct Health {
    failures: u32,
    down_until: Option<Instant>,
}

struct Target {
    url: String,
    transport: Transport,
    health: Mutex<Health>,
}

impl Target {
    fn is_up(&self, now: Instant) -> bool {
        let health = self.health.lock().unwrap();
        health.down_until.is_none_or(|t| t <= now)
    }

    fn up(&self) {
        *self.health.lock().unwrap() = Health::default();
    }

    /// Marks the target down; true on the first failure of a run of them.
    fn down(&self, now: Instant) -> bool {
        let mut health = self.health.lock().unwrap();
        let cooldown = FIRST_COOLDOWN
            .saturating_mul(1 << health.failures.min(8))
            .min(MAX_COOLDOWN);
        health.failures += 1;
        health.down_until = Some(now + cooldown);
        health.failures == 1
    }

    fn down_until(&self) -> Option<Instant> {
        self.health.lock().unwrap().down_until
    }
}

/// One signal's collectors, with their health and the parked batches.
pub(crate) struct Endpoints {
    targets: Vec<Arc<Target>>,
    next: AtomicUsize,
    shared: Arc<Shared>,
    signal: Signal,
    parked: Mutex<JoinSet<()>>,
    /// The whole export of one batch, retries and parking included.
    pub(crate) timeout: Duration,
}

impl Endpoints {
    /// Must run inside a Tokio runtime (the lazy gRPC channels spawn their workers).
    pub(crate) fn new(
        config: &Config,
        signal: Signal,
        shared: Arc<Shared>,
    ) -> Result<Endpoints, StartError> {
        let urls = config.connect_url(signal);
        let targets = split(&urls)
            .map(|url| {
                Ok(Arc::new(Target {
                    url: url.to_string(),
                    transport: Transport::new(config, signal, url.to_string())?,
                    health: Mutex::default(),
                }))
            })
            .collect::<Result<Vec<_>, StartError>>()?;
        if targets.is_empty() {
            return Err(StartError::InvalidEndpoint {
                endpoint: urls,
                reason: "no endpoint given".into(),
            });
        }
        Ok(Endpoints {
            targets,
            next: AtomicUsize::new(0),
            shared,
            signal,
            parked: Mutex::default(),
            timeout: config.export(signal).timeout,
        })
    }

    /// Every target is built from the same settings, so the first one encodes.
    pub(crate) fn encode(&self, payload: Payload) -> Result<Bytes, ExportError> {
        self.targets[0].transport.encode(payload)
    }

    /// The targets to try for the next batch: those up in round-robin order, then
    /// those cooling down, the soonest back first.
    fn order(&self, now: Instant) -> Vec<usize> {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let (mut up, mut down): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|k| (start + k) % n)
            .partition(|&i| self.targets[i].is_up(now));
        down.sort_by_key(|&i| self.targets[i].down_until());
        up.append(&mut down);
        up
    }

    /// One attempt at delivering `body` (holding `items` items) within `budget`:
    /// each collector at most once, moving on when one did not take it.
    pub(crate) async fn send(
        &self,
        body: Bytes,
        budget: Duration,
        items: u64,
        stop: Stop,
    ) -> Result<Sent, ExportError> {
        let end = Instant::now() + budget;
        let order = self.order(Instant::now());
        let mut last = None;
        for (k, &i) in order.iter().enumerate() {
            let remaining = end.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            // A collector that hangs must not take the whole budget from the others.
            let share = remaining / (order.len() - k) as u32;
            let target = &self.targets[i];
            let error = match target.transport.send(body.clone(), share).await {
                Ok(()) => {
                    target.up();
                    return Ok(Sent::Delivered);
                }
                Err(e) => e,
            };
            match classify(&error) {
                Failure::Permanent => return Err(error),
                // Alone, the export loop retries as it always has.
                _ if self.targets.len() == 1 => return Err(error),
                Failure::NotTaken => {
                    if target.down(Instant::now()) {
                        self.warn(format!(
                            "collector {} did not take a batch ({error}); sending to the others",
                            target.url
                        ));
                    }
                    last = Some(error);
                }
                Failure::Unsure => {
                    target.down(Instant::now());
                    return self.park(i, body, items, error, stop);
                }
            }
        }
        Err(last.unwrap_or(ExportError::Timeout))
    }

    /// Hands a batch of unknown outcome to a task that resends it to the same
    /// collector until it answers, the export timeout ends or shutdown's deadline.
    fn park(
        &self,
        i: usize,
        body: Bytes,
        items: u64,
        error: ExportError,
        stop: Stop,
    ) -> Result<Sent, ExportError> {
        let mut parked = self.parked.lock().unwrap();
        while parked.try_join_next().is_some() {}
        if parked.len() >= MAX_PARKED {
            return Err(error);
        }
        let target = self.targets[i].clone();
        self.warn(format!(
            "collector {} may hold a batch ({error}); resending it there only",
            target.url
        ));
        let shared = self.shared.clone();
        let signal = self.signal;
        let end = Instant::now() + self.timeout;
        parked.spawn(async move {
            let result = resend(&target, body, end, stop, &shared).await;
            let counts = counts(&shared, signal);
            match result {
                Ok(()) => counts.exported(items),
                Err(_) => counts.failed(items),
            }
        });
        Ok(Sent::Parked)
    }

    /// Waits for the parked batches, at most until `deadline` (shutdown).
    pub(crate) async fn settle_parked(&self, deadline: Instant) {
        let mut parked = std::mem::take(&mut *self.parked.lock().unwrap());
        let all = async { while parked.join_next().await.is_some() {} };
        if tokio::time::timeout_at(deadline.into(), all).await.is_err() {
            self.shared
                .export_cut
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn warn(&self, message: String) {
        self.shared
            .logs
            .push(LogEvent::agent(tracing::Level::WARN, message));
    }
}

fn counts(shared: &Shared, signal: Signal) -> &ExportCounts {
    match signal {
        Signal::Traces => &shared.span_counts,
        Signal::Logs => &shared.log_counts,
        Signal::Metrics => &shared.point_counts,
    }
}

/// The parked batch's resends, with backoff, to its one collector.
async fn resend(
    target: &Target,
    body: Bytes,
    end: Instant,
    mut stop: Stop,
    shared: &Shared,
) -> Result<(), ExportError> {
    let mut attempt = 0;
    loop {
        let wait = retry::backoff(attempt);
        attempt += 1;
        let limit = |stop: &Stop| match *stop.borrow() {
            Some(deadline) => end.min(deadline),
            None => end,
        };
        if Instant::now() + wait >= limit(&stop) {
            return Err(ExportError::Timeout);
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // Shutdown began: the loop checks the wait against its deadline.
            _ = stop.changed() => continue,
        }
        let remaining = limit(&stop).saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            if stop.borrow().is_some() {
                shared
                    .export_cut
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            return Err(ExportError::Timeout);
        }
        match target.transport.send(body.clone(), remaining).await {
            Ok(()) => {
                target.up();
                return Ok(());
            }
            Err(e) if classify(&e) == Failure::Permanent => return Err(e),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_split_and_trimmed() {
        let list = " http://a:4317, http://b:4317 ,,http://c:4317";
        assert_eq!(
            split(list).collect::<Vec<_>>(),
            ["http://a:4317", "http://b:4317", "http://c:4317"]
        );
    }

    #[test]
    fn server_answers_and_transport_failures_are_told_apart() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let from = |e: std::io::Error| ExportError::Grpc(tonic::Status::from_error(Box::new(e)));
        assert_eq!(classify(&from(refused)), Failure::NotTaken);
        assert_eq!(classify(&from(reset)), Failure::Unsure);
        let answer = |s: tonic::Status| classify(&ExportError::Grpc(s));
        assert_eq!(
            answer(tonic::Status::unavailable("spool")),
            Failure::NotTaken
        );
        assert_eq!(
            answer(tonic::Status::resource_exhausted("full")),
            Failure::NotTaken
        );
        assert_eq!(
            answer(tonic::Status::invalid_argument("bad")),
            Failure::Permanent
        );
        let http = |status| ExportError::HttpStatus {
            status,
            retry_after: None,
        };
        assert_eq!(classify(&http(503)), Failure::NotTaken);
        assert_eq!(classify(&http(400)), Failure::Permanent);
        assert_eq!(classify(&ExportError::Timeout), Failure::Unsure);
        assert_eq!(classify(&ExportError::Rejected(3)), Failure::Permanent);
    }

    #[test]
    fn cooldown_doubles_and_is_capped() {
        let target = Health::default();
        let target = Target {
            url: String::new(),
            transport: unreachable_transport(),
            health: Mutex::new(target),
        };
        let now = Instant::now();
        assert!(target.down(now));
        assert_eq!(target.down_until(), Some(now + FIRST_COOLDOWN));
        assert!(!target.down(now));
        assert_eq!(target.down_until(), Some(now + FIRST_COOLDOWN * 2));
        for _ in 0..20 {
            target.down(now);
        }
        assert_eq!(target.down_until(), Some(now + MAX_COOLDOWN));
        assert!(!target.is_up(now) && target.is_up(now + MAX_COOLDOWN));
        target.up();
        assert!(target.is_up(now));
    }

    fn unreachable_transport() -> Transport {
        let config = Config {
            traces: crate::config::ExportConfig {
                protocol: crate::config::Protocol::HttpProtobuf,
                ..Default::default()
            },
            ..Config::default()
        };
        Transport::new(
            &config,
            Signal::Traces,
            "http://127.0.0.1:9/v1/traces".into(),
        )
        .expect("transport")
    }

    /// A real refused connection on both transports is "not taken".
    #[tokio::test]
    async fn a_closed_port_is_not_taken() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        for protocol in [
            crate::config::Protocol::Grpc,
            crate::config::Protocol::HttpProtobuf,
        ] {
            let mut config = Config::default();
            config.traces.protocol = protocol;
            let url = format!("http://127.0.0.1:{port}");
            let transport = Transport::new(&config, Signal::Traces, url).expect("transport");
            let error = transport
                .send(Bytes::new(), Duration::from_secs(5))
                .await
                .expect_err("nothing listens");
            assert_eq!(classify(&error), Failure::NotTaken, "{protocol:?}: {error}");
        }
    }
}

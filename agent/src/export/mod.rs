//! The agent's own thread: a single-threaded Tokio runtime that writes the JSON
//! lines, batches and exports spans, log records and metrics, and performs the
//! bounded flush at shutdown. Running apart from the host's runtime means a slow
//! collector never takes a worker from the service, and shutdown can block on
//! any thread without deadlocking a current-thread runtime.

pub(crate) mod endpoints;
pub(crate) mod error;
mod exporter;
#[cfg(feature = "test-support")]
pub(crate) mod in_memory;
pub(crate) mod json_lines;
pub(crate) mod otlp;
pub(crate) mod retry;
pub(crate) mod tls;
pub(crate) mod transport;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinSet;

use crate::clock::unix_nanos;
use crate::config::{Config, Signal};
use crate::core::log_event::{self, is_transport_target, LogEvent};
use crate::core::{ExportCounts, Shared, ShutdownError};
use endpoints::{Endpoints, Sent};
use error::StartError;
pub(crate) use exporter::Exporter;
use json_lines::write_json_line;
use retry::Retry;
use transport::{ExportError, Payload};

/// Where the JSON lines go; stdout unless a test or the host says otherwise.
pub type LogWriter = Box<dyn Write + Send>;

/// JSON lines reach stdout at most this long after the event.
const LINE_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

pub(crate) struct Worker {
    stop: oneshot::Sender<Instant>,
    done: std::sync::mpsc::Receiver<bool>,
    deadline: Duration,
}

impl Worker {
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }

    pub(crate) fn shutdown(self) -> Result<(), ShutdownError> {
        let started = Instant::now();
        // The worker aims a little short of the deadline so its "done" arrives
        // before the caller stops waiting.
        let margin = (self.deadline / 10).min(Duration::from_millis(100));
        if self.stop.send(started + self.deadline - margin).is_err() {
            return Ok(()); // the thread is already gone
        }
        match self.done.recv_timeout(self.deadline) {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => Err(ShutdownError::DeadlineExceeded(self.deadline)),
        }
    }
}

/// One exporter per signal; `None` where `OTEL_<SIGNAL>_EXPORTER=none`.
struct Exporters {
    traces: Option<Arc<dyn Exporter>>,
    logs: Option<Arc<dyn Exporter>>,
    metrics: Option<Arc<dyn Exporter>>,
}

/// Starts the agent's thread. `exporter` replaces the OTLP transports for
/// every signal (the in-memory exporter of tests); `None` exports over OTLP.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    config: &Config,
    writer: Option<LogWriter>,
    exporter: Option<Arc<dyn Exporter>>,
) -> Result<Worker, StartError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), StartError>>();
    let (stop_tx, stop_rx) = oneshot::channel::<Instant>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<bool>();
    let config = config.clone();
    let deadline = config.shutdown_deadline;
    std::thread::Builder::new()
        .name("agent-export".into())
        .spawn(move || {
            log_event::mark_agent_thread();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(StartError::Thread(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                let exporters = if shared.recording {
                    let transport = |signal| {
                        if !config.export(signal).enabled {
                            return Ok(None);
                        }
                        match &exporter {
                            Some(exporter) => Ok(Some(exporter.clone())),
                            None => Endpoints::new(&config, signal, shared.clone())
                                .map(|e| Some(Arc::new(e) as Arc<dyn Exporter>)),
                        }
                    };
                    let built = (|| {
                        Ok::<_, StartError>(Exporters {
                            traces: transport(Signal::Traces)?,
                            logs: transport(Signal::Logs)?,
                            metrics: transport(Signal::Metrics)?,
                        })
                    })();
                    match built {
                        Ok(e) => Some(Arc::new(e)),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    }
                } else {
                    None
                };
                let _ = ready_tx.send(Ok(()));
                let complete = run(shared, config, exporters, writer, stop_rx).await;
                let _ = done_tx.send(complete);
            });
        })?;
    ready_rx.recv().map_err(|_| StartError::ThreadExited)??;
    Ok(Worker {
        stop: stop_tx,
        done: done_rx,
        deadline,
    })
}

pub(crate) type Stop = watch::Receiver<Option<Instant>>;

/// Runs until shutdown; true when every task flushed before the deadline.
async fn run(
    shared: Arc<Shared>,
    config: Config,
    exporters: Option<Arc<Exporters>>,
    writer: Option<LogWriter>,
    stop_rx: oneshot::Receiver<Instant>,
) -> bool {
    let resource = Arc::new(otlp::resource(&shared.resource));
    let started_unix_nanos = unix_nanos(SystemTime::now());
    let (stop_tx, stop) = watch::channel(None);
    let lines_done = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    tasks.spawn(write_lines(
        shared.clone(),
        writer,
        exporters.as_ref().is_some_and(|e| e.logs.is_some()),
        lines_done.clone(),
        stop.clone(),
    ));
    let exports_metrics = exporters.as_ref().is_some_and(|e| e.metrics.is_some());
    if let Some(exporters) = exporters {
        // With traces off, spans are still sampled and propagated; the queue is
        // emptied here without a word to the network.
        tasks.spawn(export_spans(
            shared.clone(),
            exporters.clone(),
            resource.clone(),
            config.span_export_interval,
            config.max_export_batch,
            stop.clone(),
        ));
        if exporters.logs.is_some() {
            tasks.spawn(export_logs(
                shared.clone(),
                exporters.clone(),
                resource.clone(),
                config.log_export_interval,
                config.max_export_batch,
                lines_done,
                stop.clone(),
            ));
        }
        if exporters.metrics.is_some() {
            tasks.spawn(export_metrics(
                shared.clone(),
                exporters,
                resource,
                config.metric_export_interval,
                started_unix_nanos,
                stop.clone(),
            ));
        }
    }
    if !exports_metrics {
        // Nothing exports metrics: windows still close on the interval, for
        // the local snapshot and the Prometheus text.
        tasks.spawn(close_metric_windows(
            shared.clone(),
            config.metric_export_interval,
            stop.clone(),
        ));
    }
    tasks.spawn(report_drops(
        shared.clone(),
        config.metric_export_interval,
        stop,
    ));
    // A guard that vanished without shutting down (leaked thread) ends us too.
    let deadline = stop_rx
        .await
        .unwrap_or_else(|_| Instant::now() + config.shutdown_deadline);
    let _ = stop_tx.send(Some(deadline));
    let all = async { while tasks.join_next().await.is_some() {} };
    // Exports are cut at `deadline`; the tasks then need a moment to count them.
    let grace = Duration::from_millis(20);
    let joined = tokio::time::timeout_at((deadline + grace).into(), all)
        .await
        .is_ok();
    joined && !shared.export_cut.load(Ordering::Relaxed)
}

/// Waits for the next tick, an early wake-up, or shutdown (returning its deadline).
async fn next_round(
    interval: Duration,
    wake: impl std::future::Future<Output = ()>,
    stop: &mut Stop,
) -> Option<Instant> {
    tokio::select! {
        _ = tokio::time::sleep(interval) => None,
        _ = wake => None,
        changed = stop.changed() => match changed {
            Ok(()) => {
                let deadline = *stop.borrow();
                deadline
            }
            Err(_) => Some(Instant::now()),
        },
    }
}

/// One batch: encoded once, then attempted until it is delivered, fails for
/// good, or the time is up. Retryable failures wait for the server's hint or a
/// jittered backoff, within the export timeout and (once shutdown begins) its
/// deadline; the batch is the only thing held meanwhile.
pub(crate) async fn send_bounded(
    shared: &Shared,
    transport: &Endpoints,
    payload: Payload,
    items: u64,
    stop: &Stop,
) -> Result<Sent, ExportError> {
    let body = transport.encode(payload)?;
    let budget_end = Instant::now() + transport.timeout;
    let mut stop = stop.clone();
    let mut attempt = 0;
    loop {
        let remaining = budget_end.saturating_duration_since(Instant::now());
        let send = transport.send(body.clone(), remaining, items, stop.clone());
        let error = match cut_at_shutdown(shared, send, &mut stop).await {
            Ok(sent) => return Ok(sent),
            Err(e) => e,
        };
        let Retry::After(hint) = error.retry() else {
            return Err(error);
        };
        let wait = hint.unwrap_or_else(|| retry::backoff(attempt));
        attempt += 1;
        // Waiting past the budget or the shutdown deadline would only delay the
        // same failure.
        loop {
            let limit = match *stop.borrow_and_update() {
                Some(deadline) => budget_end.min(deadline),
                None => budget_end,
            };
            let resume = Instant::now() + wait;
            if resume >= limit {
                return Err(error);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(resume.into()) => break,
                // Shutdown began: check the wait against its deadline.
                changed = stop.changed() => if changed.is_err() {
                    return Err(error);
                },
            }
        }
    }
}

/// One attempt; once shutdown begins (also mid-flight) it is cut at the deadline.
async fn cut_at_shutdown<T>(
    shared: &Shared,
    send: impl std::future::Future<Output = Result<T, ExportError>>,
    stop: &mut Stop,
) -> Result<T, ExportError> {
    tokio::pin!(send);
    loop {
        let current = *stop.borrow_and_update();
        if let Some(deadline) = current {
            return match tokio::time::timeout_at(deadline.into(), &mut send).await {
                Ok(result) => result,
                Err(_) => {
                    shared.export_cut.store(true, Ordering::Relaxed);
                    Err(ExportError::Timeout)
                }
            };
        }
        tokio::select! {
            result = &mut send => return result,
            changed = stop.changed() => if changed.is_err() {
                return Err(ExportError::Timeout);
            },
        }
    }
}

/// A parked batch is counted when it settles (see `endpoints.rs`).
fn count(counter: &ExportCounts, n: u64, result: Result<Sent, ExportError>) {
    match result {
        Ok(Sent::Delivered) => counter.exported(n),
        Ok(Sent::Parked) => {}
        Err(_) => counter.failed(n),
    }
}

async fn write_lines(
    shared: Arc<Shared>,
    mut writer: Option<LogWriter>,
    exporting: bool,
    lines_done: Arc<Notify>,
    mut stop: Stop,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut events = Vec::new();
    loop {
        let stopping = next_round(LINE_FLUSH_INTERVAL, shared.logs.batch_ready(), &mut stop).await;
        shared.logs.swap(&mut events);
        if let Some(w) = writer.as_mut() {
            if !events.is_empty() {
                buf.clear();
                for e in &events {
                    write_json_line(&mut buf, e, &shared.service_name);
                }
                // A closed stdout must not take the agent down; lines are lost.
                let _ = w.write_all(&buf).and_then(|()| w.flush());
            }
        }
        if exporting {
            // Events of the JSON-only layer stay lines.
            events
                .drain(..)
                .filter(|e| e.export && !is_transport_target(e.target))
                .for_each(|e| {
                    shared.log_export.push(e);
                });
        }
        events.clear();
        if stopping.is_some() {
            lines_done.notify_one();
            return;
        }
    }
}

async fn export_spans(
    shared: Arc<Shared>,
    exporters: Arc<Exporters>,
    resource: Arc<Resource>,
    interval: Duration,
    max_batch: usize,
    mut stop: Stop,
) {
    let mut spans = Vec::new();
    loop {
        let stopping = next_round(interval, shared.spans.batch_ready(), &mut stop).await;
        shared.spans.swap(&mut spans);
        let Some(transport) = &exporters.traces else {
            spans.clear();
            if stopping.is_some() {
                return;
            }
            continue;
        };
        while !spans.is_empty() {
            let n = spans.len().min(max_batch.max(1));
            let request = otlp::traces_request(&resource, spans.drain(..n));
            let n = n as u64;
            let result = transport
                .export(&shared, Payload::Traces(request), n, &stop)
                .await;
            count(&shared.span_counts, n, result);
        }
        if let Some(deadline) = stopping {
            transport.settle_parked(deadline).await;
            return;
        }
    }
}

async fn export_logs(
    shared: Arc<Shared>,
    exporters: Arc<Exporters>,
    resource: Arc<Resource>,
    interval: Duration,
    max_batch: usize,
    lines_done: Arc<Notify>,
    mut stop: Stop,
) {
    let mut events = Vec::new();
    loop {
        let stopping = next_round(interval, shared.log_export.batch_ready(), &mut stop).await;
        if let Some(deadline) = stopping {
            // The last lines are handed over by the writer; wait for them.
            let _ = tokio::time::timeout_at(deadline.into(), lines_done.notified()).await;
        }
        shared.log_export.swap(&mut events);
        while !events.is_empty() {
            let n = events.len().min(max_batch.max(1));
            let (request, n) = otlp::logs_request(&resource, events.drain(..n));
            if n == 0 {
                continue;
            }
            let Some(transport) = &exporters.logs else {
                return;
            };
            let result = transport
                .export(&shared, Payload::Logs(request), n, &stop)
                .await;
            count(&shared.log_counts, n, result);
        }
        if let Some(deadline) = stopping {
            if let Some(transport) = &exporters.logs {
                transport.settle_parked(deadline).await;
            }
            return;
        }
    }
}

async fn export_metrics(
    shared: Arc<Shared>,
    exporters: Arc<Exporters>,
    resource: Arc<Resource>,
    interval: Duration,
    started_unix_nanos: u64,
    mut stop: Stop,
) {
    let Some(transport) = &exporters.metrics else {
        return;
    };
    loop {
        let stopping = next_round(interval, std::future::pending(), &mut stop).await;
        let now = unix_nanos(SystemTime::now());
        // Each export reports the window that ends now (percentiles,
        // exponential histograms, exemplars).
        shared.close_metric_windows(now);
        let snapshot = shared.metrics_snapshot();
        let (request, n) = otlp::metrics_request(&resource, &snapshot, started_unix_nanos, now);
        let result = transport
            .export(&shared, Payload::Metrics(request), n, &stop)
            .await;
        count(&shared.point_counts, n, result);
        if let Some(deadline) = stopping {
            transport.settle_parked(deadline).await;
            return;
        }
    }
}

async fn close_metric_windows(shared: Arc<Shared>, interval: Duration, mut stop: Stop) {
    while next_round(interval, std::future::pending(), &mut stop)
        .await
        .is_none()
    {
        shared.close_metric_windows(unix_nanos(SystemTime::now()));
    }
}

/// At most one warning line per interval, and only when something was dropped.
async fn report_drops(shared: Arc<Shared>, interval: Duration, mut stop: Stop) {
    let mut reported = [0u64; 3];
    loop {
        let stopping = next_round(interval, std::future::pending(), &mut stop).await;
        let stats = shared.stats();
        let now = stats.by_signal().map(|(_, s)| s.dropped());
        if now != reported {
            let [spans, logs, points] = now;
            shared.logs.push(LogEvent::agent(
                tracing::Level::WARN,
                format!(
                    "telemetry dropped so far (queue full or export failed): {spans} spans, {logs} log records, {points} metric points"
                ),
            ));
            reported = now;
        }
        if stopping.is_some() {
            return;
        }
    }
}

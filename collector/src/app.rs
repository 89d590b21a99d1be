//! Wires the stages together: receivers → pipeline → batching → ClickHouse exporter.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::batching;
use crate::config::Config;
use crate::embedded::EmbeddedClickHouse;
use crate::exporters::clickhouse::{self as ch, ClickHouseExporter, SchemaGate, SchemaState};
use crate::pipeline::Pipeline;
use crate::receivers::{self, Receivers};
use crate::schema::{self, DedupWindowProblem, ALL_TABLES};
use crate::spool::Spool;
use crate::telemetry::{
    admin_router, run_self_export, Health, Metrics, Readiness, SpoolAge, Stages,
};
use crate::ui;

/// How many recent INSERT blocks each table remembers to drop repeats, at least
/// (more when the spool can hold more batches: see [`schema::needed_window`]).
const DEDUP_WINDOW: u32 = 1000;

/// The schema layout this configuration asks for.
pub fn schema_options(config: &Config) -> schema::SchemaOptions {
    let needed_window =
        schema::needed_window(config.spool.max_disk_bytes, config.batching.max_bytes);
    let dedup_window = u32::try_from(needed_window)
        .unwrap_or(u32::MAX)
        .max(DEDUP_WINDOW);
    ch::schema_options(&config.clickhouse, dedup_window)
}

/// A running collector.
pub struct Collector {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The web UI's address, unless `ui.addr` is empty.
    pub ui_addr: Option<SocketAddr>,
    clickhouse_url: String,
    gate: SchemaGate,
    metrics: Arc<Metrics>,
    receivers: Receivers,
    stop_receivers: CancellationToken,
    stop_batchers: CancellationToken,
    stop_background: CancellationToken,
    batchers: Vec<tokio::task::JoinHandle<()>>,
    exporter: Arc<ClickHouseExporter>,
    spool: Arc<Spool>,
    embedded: Option<EmbeddedClickHouse>,
    dedup_report: watch::Receiver<Option<Vec<DedupWindowProblem>>>,
}

impl Collector {
    pub async fn start(config: Config) -> anyhow::Result<Collector> {
        let (spool, recovered) = Spool::open(&config.spool)
            .with_context(|| format!("opening the spool in {}", config.spool.dir))?;
        if !recovered.batches.is_empty() || !recovered.parts.is_empty() {
            tracing::info!(
                batches = recovered.batches.len(),
                parts = recovered.parts.len(),
                bytes = spool.used_bytes(),
                "replaying the spool"
            );
        }
        let (embedded, url) = if config.clickhouse.url.is_empty() {
            let e = EmbeddedClickHouse::start(&config.embedded)
                .await
                .context("starting the embedded ClickHouse")?;
            let url = e.url().to_string();
            (Some(e), url)
        } else {
            (None, config.clickhouse.url.clone())
        };
        let client = ch::client(&config.clickhouse, &url)
            .with_context(|| format!("reading {}", config.clickhouse.password_file))?;

        let stop_background = CancellationToken::new();
        let gate = SchemaGate::new();
        let needed_window =
            schema::needed_window(config.spool.max_disk_bytes, config.batching.max_bytes);
        let schema_task = gate.clone().run(
            client.clone(),
            schema_options(&config),
            config.clickhouse.create_schema,
        );
        let (dedup_report_tx, dedup_report) = watch::channel(None);
        tokio::spawn(report_dedup_windows(
            gate.clone(),
            client.clone(),
            config.clickhouse.database.clone(),
            needed_window,
            dedup_report_tx,
            stop_background.clone(),
        ));
        let stop = stop_background.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = schema_task => {}
                _ = stop.cancelled() => {}
            }
        });

        let metrics = Arc::new(Metrics::default());
        let exporter = Arc::new(ClickHouseExporter::new(
            client,
            &config.clickhouse,
            gate.clone(),
            spool.clone(),
            std::path::Path::new(&config.spool.dir),
            metrics.clone(),
        ));
        let stop_batchers = CancellationToken::new();
        let mut senders = Vec::new();
        let mut batchers = Vec::new();
        for table in ALL_TABLES {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            batchers.push(tokio::spawn(batching::run(
                table.id,
                config.batching.clone(),
                rx,
                spool.clone(),
                exporter.clone(),
                stop_batchers.clone(),
            )));
        }
        // Batches recorded before a restart go first, exactly as they were; parts
        // never batched join the new batches in their original order.
        for part in recovered.parts {
            let table = part.table as usize;
            let _ = senders[table].send(batching::Queued { part, permit: None });
        }
        let replay_spool = spool.clone();
        let replay_sink = exporter.clone();
        tokio::spawn(async move {
            batching::replay(&replay_spool, recovered.batches, replay_sink.as_ref()).await;
        });
        let memory = Arc::new(Semaphore::new(config.batching.max_memory_bytes));
        let pipeline = Arc::new(Pipeline::new(
            spool.clone(),
            memory,
            senders,
            metrics.clone(),
        ));

        let stop_receivers = CancellationToken::new();
        let receivers =
            Receivers::start(&config.receivers, pipeline.clone(), stop_receivers.clone())
                .await
                .context("starting the OTLP receivers")?;

        let admin = receivers::bind(&config.admin.addr).await?;
        let admin_addr = admin.local_addr()?;
        let health = Health {
            stages: Arc::new(StageHandles {
                gate: gate.clone(),
                inserts: exporter.lanes(),
                spool: spool.clone(),
            }),
            metrics: metrics.clone(),
            spool_age: Arc::new(SpoolAge::new(std::time::Instant::now())),
        };
        health.sample_spool_age();
        // Writes into the pipeline like a receiver, so it stops with them.
        tokio::spawn(run_self_export(
            health.clone(),
            pipeline,
            config.telemetry.clone(),
            stop_receivers.clone(),
        ));
        let endpoints = ui::Endpoints {
            grpc: receivers.grpc_addr,
            http: receivers.http_addr,
        };
        let ui_addr = ui::start(
            &config.ui,
            &config.clickhouse,
            &url,
            health.clone(),
            endpoints,
            stop_background.clone(),
        )
        .await
        .context("starting the web UI")?;
        if let Some(addr) = ui_addr {
            tracing::info!(url = %format!("http://{addr}/"), "web UI");
        }
        let app = admin_router(health);
        let stop = stop_background.clone();
        tokio::spawn(async move {
            let _ = axum::serve(admin, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });

        Ok(Collector {
            grpc_addr: receivers.grpc_addr,
            http_addr: receivers.http_addr,
            admin_addr,
            ui_addr,
            clickhouse_url: url,
            gate,
            metrics,
            receivers,
            stop_receivers,
            stop_batchers,
            stop_background,
            batchers,
            exporter,
            spool,
            embedded,
            dedup_report,
        })
    }

    pub fn clickhouse_url(&self) -> &str {
        &self.clickhouse_url
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn is_ready(&self) -> bool {
        self.gate.state() == SchemaState::Ready
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// The tables whose deduplication window is missing or too small, once the
    /// check that runs after the schema is ready has answered (`None` until then,
    /// or when it could not run).
    pub fn dedup_window_report(&self) -> Option<Vec<DedupWindowProblem>> {
        self.dedup_report.borrow().clone()
    }

    /// Stops accepting and writes what is queued to ClickHouse within `deadline`;
    /// whatever is left stays in the spool for the next start.
    pub async fn shutdown(self, deadline: Duration) {
        self.stop_receivers.cancel();
        self.receivers.stopped().await;
        self.stop_batchers.cancel();
        let flush = async {
            for b in self.batchers {
                let _ = b.await;
            }
            self.exporter.drain().await;
        };
        if tokio::time::timeout(deadline, flush).await.is_err() {
            tracing::warn!(
                deadline_s = deadline.as_secs(),
                "shutdown deadline passed with data not yet written"
            );
        }
        self.stop_background.cancel();
        if let Err(e) = self.spool.flush() {
            tracing::error!(error = %e, "flushing the spool at shutdown failed");
        }
        if self.spool.used_bytes() > 0 {
            tracing::info!(
                bytes = self.spool.used_bytes(),
                "rows left in the spool for the next start"
            );
        }
        if let Some(e) = self.embedded {
            e.stop().await;
        }
    }
}

/// Once the schema is ready, checks every table's deduplication window against the
/// spool's backlog and says which are missing or too small (tables made elsewhere or
/// before may lack it). A report, not a refusal: the rows still flow.
async fn report_dedup_windows(
    gate: SchemaGate,
    client: clickhouse::Client,
    database: String,
    needed: u64,
    report: watch::Sender<Option<Vec<DedupWindowProblem>>>,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = gate.ready() => {}
        _ = stop.cancelled() => return,
    }
    match schema::probe_dedup_windows(&client, &database, needed).await {
        Ok(problems) if problems.is_empty() => {
            tracing::info!(%database, needed, "every table's deduplication window covers the spool's backlog");
            report.send_replace(Some(problems));
        }
        Ok(problems) => {
            for p in &problems {
                tracing::warn!(
                    table = %p.table,
                    setting = p.setting,
                    window = p.window,
                    needed = p.needed,
                    "{p}"
                );
            }
            report.send_replace(Some(problems));
        }
        Err(e) => tracing::warn!(error = %e, "could not check the tables' deduplication windows"),
    }
}

/// What telemetry reports on, handed to it here so it imports none of the stages.
struct StageHandles {
    gate: SchemaGate,
    inserts: ch::Lanes,
    spool: Arc<Spool>,
}

impl Stages for StageHandles {
    fn readiness(&self) -> Readiness {
        match (self.gate.state(), self.inserts.failing()) {
            (SchemaState::Pending(why), _) => Readiness::NotReady(why),
            (SchemaState::Ready, Some(why)) => Readiness::Degraded(why),
            (SchemaState::Ready, None) => Readiness::Ready,
        }
    }

    fn spool_bytes(&self) -> (u64, u64) {
        (self.spool.used_bytes(), self.spool.budget_bytes())
    }

    fn spool_seqs(&self) -> (u64, Option<u64>) {
        (
            self.spool.next_seq(),
            self.spool.oldest_seq().ok().flatten(),
        )
    }

    fn accepting(&self) -> (bool, String) {
        let (disk, budget) = (self.spool.disk_bytes(), self.spool.budget_bytes());
        if self.spool.has_room() {
            (
                true,
                format!("ready: accepting; the spool holds {disk} of {budget} bytes on disk\n"),
            )
        } else {
            (
                false,
                format!(
                    "not ready: the spool is full ({disk} of {budget} bytes on disk); requests \
                     are refused until ClickHouse catches up\n"
                ),
            )
        }
    }

    fn exporting(&self) -> (bool, String) {
        let spooled = self.spool.used_bytes();
        let lanes = self.inserts.report();
        let mut ok = lanes.iter().all(|l| l.failing.is_none());
        let mut out = match self.gate.state() {
            SchemaState::Pending(why) => {
                ok = false;
                format!(
                    "exporting: no, the schema is not ready: {why}; {spooled} bytes wait in the spool\n"
                )
            }
            SchemaState::Ready if ok => "exporting: yes\n".to_string(),
            SchemaState::Ready => {
                format!("exporting: degraded; {spooled} bytes wait in the spool\n")
            }
        };
        for lane in lanes {
            out.push_str(&lane.describe());
            out.push('\n');
        }
        // Our rollups and views a database made by the upstream exporter lacks, or
        // rollups an earlier release made in another shape: writing goes on, the
        // dashboards reading them stay empty (or fail) until they are right.
        let absent = self.gate.absent_extras();
        if !absent.is_empty() {
            out.push_str(&format!(
                "absent (writing goes on): {}\n",
                absent.join("; ")
            ));
        }
        let outdated = self.gate.outdated_extras();
        if !outdated.is_empty() {
            out.push_str(&format!(
                "outdated (writing goes on): {}\n",
                outdated.join("; ")
            ));
        }
        (ok, out)
    }

    fn spool_gauges(&self) -> Vec<(&'static str, f64)> {
        let (files, bytes) = self.spool.quarantined();
        vec![
            ("collector_spool_disk_bytes", self.spool.disk_bytes() as f64),
            ("collector_spool_quarantined_files", files as f64),
            ("collector_spool_quarantined_bytes", bytes as f64),
        ]
    }
}

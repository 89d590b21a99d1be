//! Wires the stages together: receivers → pipeline → batching → ClickHouse exporter.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::batching;
use crate::config::Config;
use crate::embedded::EmbeddedClickHouse;
use crate::exporters::clickhouse::{self as ch, ClickHouseExporter, SchemaGate, SchemaState};
use crate::pipeline::Pipeline;
use crate::receivers::{self, Receivers};
use crate::schema::ALL_TABLES;
use crate::spool::Spool;
use crate::telemetry::{
    admin_router, run_self_export, Health, Metrics, Readiness, SpoolAge, Stages,
};
use crate::ui;

/// How many recent INSERT blocks each table remembers to drop repeats.
const DEDUP_WINDOW: u32 = 1000;

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
        let schema_task = gate.clone().run(
            client.clone(),
            ch::schema_options(&config.clickhouse, DEDUP_WINDOW),
            config.clickhouse.create_schema,
        );
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
                inserts: exporter.health(),
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

/// What telemetry reports on, handed to it here so it imports none of the stages.
struct StageHandles {
    gate: SchemaGate,
    inserts: ch::InsertHealth,
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
}

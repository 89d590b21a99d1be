//! Wires the stages together: receivers → pipeline → batching → ClickHouse exporter.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batching;
use crate::config::Config;
use crate::embedded::EmbeddedClickHouse;
use crate::exporters::clickhouse::{self as ch, ClickHouseExporter, SchemaGate, SchemaState};
use crate::pipeline::Pipeline;
use crate::receivers::{self, Receivers};
use crate::schema::ALL_TABLES;
use crate::telemetry::{admin_router, Health, Metrics};

/// How many recent INSERT blocks each table remembers to drop repeats.
const DEDUP_WINDOW: u32 = 1000;

/// A running collector.
pub struct Collector {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    clickhouse_url: String,
    gate: SchemaGate,
    metrics: Arc<Metrics>,
    receivers: Receivers,
    stop_receivers: CancellationToken,
    stop_batchers: CancellationToken,
    stop_background: CancellationToken,
    batchers: Vec<tokio::task::JoinHandle<()>>,
    exporter: Arc<ClickHouseExporter>,
    embedded: Option<EmbeddedClickHouse>,
}

impl Collector {
    pub async fn start(config: Config) -> anyhow::Result<Collector> {
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
                exporter.clone(),
                stop_batchers.clone(),
            )));
        }
        let pipeline = Arc::new(Pipeline::new(
            config.batching.max_memory_bytes,
            senders,
            metrics.clone(),
        ));

        let stop_receivers = CancellationToken::new();
        let receivers = Receivers::start(&config.receivers, pipeline, stop_receivers.clone())
            .await
            .context("starting the OTLP receivers")?;

        let admin = receivers::bind(&config.admin.addr).await?;
        let admin_addr = admin.local_addr()?;
        let app = admin_router(Health {
            gate: gate.clone(),
            metrics: metrics.clone(),
        });
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
            clickhouse_url: url,
            gate,
            metrics,
            receivers,
            stop_receivers,
            stop_batchers,
            stop_background,
            batchers,
            exporter,
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

    /// Stops accepting, flushes what is queued to ClickHouse within `deadline`.
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
        if let Some(e) = self.embedded {
            e.stop().await;
        }
    }
}

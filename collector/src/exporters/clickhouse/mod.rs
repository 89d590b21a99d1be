//! The ClickHouse exporter: one INSERT per batch, RowBinary, LZ4, bounded concurrency,
//! retries with capped backoff.

mod config;
mod retry;
mod schema_gate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

pub use config::ClickHouseConfig;
pub use retry::Backoff;
pub use schema_gate::{SchemaGate, SchemaState};

use crate::batching::{Batch, BatchSink};
use crate::schema::{quote_ident, SchemaOptions, Table};
use crate::telemetry::Metrics;
use retry::{classify, Failure};

/// How much of a batch one compressed chunk of the HTTP body carries.
const CHUNK_BYTES: usize = 1 << 20;

pub fn client(config: &ClickHouseConfig, url: &str) -> std::io::Result<clickhouse::Client> {
    Ok(clickhouse::Client::default()
        .with_url(url)
        .with_user(&config.user)
        .with_password(config.resolve_password()?)
        .with_compression(clickhouse::Compression::Lz4))
}

pub fn schema_options(config: &ClickHouseConfig, dedup_window: u32) -> SchemaOptions {
    SchemaOptions {
        database: config.database.clone(),
        ttl_days: config.ttl_days,
        cluster: (!config.cluster.is_empty()).then(|| config.cluster.clone()),
        dedup_window,
    }
}

/// Cheap to clone: each INSERT task holds a copy.
#[derive(Clone)]
pub struct ClickHouseExporter {
    client: clickhouse::Client,
    database: String,
    async_insert: bool,
    timeout: Duration,
    backoff: Backoff,
    inflight: Arc<Semaphore>,
    tasks: TaskTracker,
    gate: SchemaGate,
    metrics: Arc<Metrics>,
}

impl ClickHouseExporter {
    pub fn new(
        client: clickhouse::Client,
        config: &ClickHouseConfig,
        gate: SchemaGate,
        metrics: Arc<Metrics>,
    ) -> ClickHouseExporter {
        ClickHouseExporter {
            client,
            database: config.database.clone(),
            async_insert: config.async_insert,
            timeout: Duration::from_secs(config.timeout_secs.max(1)),
            backoff: Backoff {
                initial: Duration::from_millis(config.retry_initial_ms.max(1)),
                max: Duration::from_millis(config.retry_max_ms.max(1)),
            },
            inflight: Arc::new(Semaphore::new(config.insert_concurrency.max(1))),
            tasks: TaskTracker::new(),
            gate,
            metrics,
        }
    }

    /// Waits for the INSERTs in flight.
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Inserts one batch, retrying until ClickHouse takes it or refuses the data itself.
    async fn insert_until_done(&self, batch: &Batch, data: Bytes) {
        let table = Table::by_id(batch.table);
        let mut attempt = 0;
        loop {
            self.gate.ready().await;
            let started = Instant::now();
            match self.insert_once(table, data.clone()).await {
                Ok(()) => {
                    self.metrics.exported(table, batch.rows, started.elapsed());
                    return;
                }
                Err(e) => {
                    let failure = classify(&e);
                    if failure == Failure::BadData {
                        tracing::error!(table = table.name, rows = batch.rows, error = %e, "ClickHouse refused the batch as invalid data; dropping it");
                        self.metrics.failed(table, batch.rows);
                        return;
                    }
                    if failure == Failure::SchemaChanged {
                        self.gate
                            .invalidate(format!("insert into {} failed: {e}", table.name));
                    }
                    let delay = self.backoff.delay(attempt);
                    attempt += 1;
                    self.metrics.retried(table);
                    tracing::warn!(table = table.name, rows = batch.rows, attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "INSERT failed; will retry");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn insert_once(&self, table: &Table, data: Bytes) -> clickhouse::error::Result<()> {
        let sql = format!(
            "INSERT INTO {}.{} ({}) FORMAT RowBinary",
            quote_ident(&self.database),
            quote_ident(table.name),
            table.insert_columns()
        );
        let mut insert = self
            .client
            .insert_formatted_with(sql)
            .with_timeouts(Some(self.timeout), Some(self.timeout));
        if self.async_insert {
            insert = insert
                .with_setting("async_insert", "1")
                .with_setting("wait_for_async_insert", "1");
        }
        let mut offset = 0;
        while offset < data.len() {
            let end = (offset + CHUNK_BYTES).min(data.len());
            insert.send(data.slice(offset..end)).await?;
            offset = end;
        }
        insert.end().await
    }
}

impl BatchSink for ClickHouseExporter {
    async fn send(&self, batch: Batch) {
        let Ok(permit) = self.inflight.clone().acquire_owned().await else {
            return;
        };
        let this = self.clone();
        self.tasks.spawn(async move {
            let mut batch = batch;
            let data = Bytes::from(std::mem::take(&mut batch.data));
            this.insert_until_done(&batch, data).await;
            drop(permit);
        });
    }
}

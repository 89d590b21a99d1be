//! The ClickHouse exporter: one INSERT per batch, RowBinary in the native LZ4 blocks
//! the receivers made, bounded concurrency, retries with capped backoff.

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
use crate::spool::Spool;
use crate::telemetry::Metrics;
use retry::{classify, Failure};

/// How much of a batch one chunk of the HTTP body carries.
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
    spool: Arc<Spool>,
    health: InsertHealth,
    metrics: Arc<Metrics>,
}

/// Whether the latest INSERT failed, and why: readiness reports it as degraded.
#[derive(Clone, Default)]
pub struct InsertHealth(Arc<std::sync::Mutex<Option<String>>>);

impl InsertHealth {
    pub fn failing(&self) -> Option<String> {
        self.0.lock().map(|g| g.clone()).unwrap_or(None)
    }

    fn set(&self, failure: Option<String>) {
        if let Ok(mut g) = self.0.lock() {
            *g = failure;
        }
    }
}

impl ClickHouseExporter {
    pub fn new(
        client: clickhouse::Client,
        config: &ClickHouseConfig,
        gate: SchemaGate,
        spool: Arc<Spool>,
        metrics: Arc<Metrics>,
    ) -> ClickHouseExporter {
        ClickHouseExporter {
            // Batches are already LZ4 blocks (see `TablePart`): the crate must send
            // them as they are, and ClickHouse is told to decompress them.
            client: client
                .with_compression(clickhouse::Compression::None)
                .with_setting("decompress", "1"),
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
            spool,
            health: InsertHealth::default(),
            metrics,
        }
    }

    pub fn health(&self) -> InsertHealth {
        self.health.clone()
    }

    /// Waits for the INSERTs in flight.
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Inserts one batch, retrying until ClickHouse takes it or refuses the data
    /// itself; then its rows leave the spool.
    async fn insert_until_done(&self, batch: &Batch, data: Bytes) {
        let table = Table::by_id(batch.table);
        let token = self.spool.token(&batch.record);
        let mut attempt = 0;
        loop {
            self.gate.ready().await;
            let started = Instant::now();
            match self.insert_once(table, data.clone(), &token).await {
                Ok(()) => {
                    self.health.set(None);
                    self.metrics.exported(table, batch.rows, started.elapsed());
                    self.confirm(batch, data.len());
                    return;
                }
                Err(e) => {
                    let failure = classify(&e);
                    if failure == Failure::BadData {
                        // The one path that gives up on accepted rows: retrying cannot
                        // make ClickHouse take them, and holding them would stop the table.
                        tracing::error!(table = table.name, rows = batch.rows, error = %e, "ClickHouse refused the batch as invalid data; dropping it");
                        self.metrics.failed(table, batch.rows);
                        self.confirm(batch, data.len());
                        return;
                    }
                    self.health
                        .set(Some(format!("INSERT into {} failing: {e}", table.name)));
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

    fn confirm(&self, batch: &Batch, bytes: usize) {
        if let Err(e) = self.spool.confirm(&batch.record, bytes as u64) {
            // The rows stay spooled; after a restart the same token makes their
            // re-insert a no-op.
            tracing::error!(error = %e, "cannot remove an inserted batch from the spool");
        }
    }

    async fn insert_once(
        &self,
        table: &Table,
        data: Bytes,
        token: &str,
    ) -> clickhouse::error::Result<()> {
        let sql = format!(
            "INSERT INTO {}.{} ({}) FORMAT RowBinary",
            quote_ident(&self.database),
            quote_ident(table.name),
            table.insert_columns()
        );
        // The token makes a retry of an INSERT that did land (timeout, crash, restart)
        // a no-op; the view feeding the trace-id table must deduplicate as well.
        let mut insert = self
            .client
            .insert_formatted_with(sql)
            .with_timeouts(Some(self.timeout), Some(self.timeout))
            .with_setting("insert_deduplicate", "1")
            .with_setting("insert_deduplication_token", token)
            .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1");
        if self.async_insert {
            insert = insert
                .with_setting("async_insert", "1")
                .with_setting("wait_for_async_insert", "1")
                .with_setting("async_insert_deduplicate", "1");
        } else {
            // Explicit: servers from 26.3 on default to async_insert = 1, whose
            // deduplication would need async_insert_deduplicate.
            insert = insert.with_setting("async_insert", "0");
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

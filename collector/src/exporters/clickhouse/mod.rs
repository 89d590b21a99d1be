//! The ClickHouse exporter: one INSERT per batch, RowBinary in the native LZ4 blocks
//! the receivers made, one lane (bounded concurrency, health) per table, retries
//! with capped backoff, and a dead-letter store for rows ClickHouse will not take.

mod config;
pub mod dead_letter;
mod lanes;
mod retry;
mod schema_gate;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::task::TaskTracker;

pub use config::ClickHouseConfig;
pub use lanes::{LaneReport, Lanes};
pub use retry::Backoff;
pub use schema_gate::{SchemaGate, SchemaState};

use crate::batching::{Batch, BatchSink, PartSpan};
use crate::schema::cast::TableCast;
use crate::schema::{quote_ident, SchemaOptions, Table};
use crate::spool::Spool;
use crate::telemetry::Metrics;
use dead_letter::{DeadLetter, DeadLetters};
use retry::{classify, Failure, GiveUp};

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
    give_up: GiveUp,
    lanes: Lanes,
    dead_letters: DeadLetters,
    tasks: TaskTracker,
    gate: SchemaGate,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    /// `distributed_foreground_insert` on a cluster (see `schema::insert_settings`).
    insert_settings: &'static [(&'static str, &'static str)],
}

/// A batch (or a part of one being isolated) that ClickHouse would not take.
struct GaveUp {
    error: String,
    attempts: u32,
}

impl ClickHouseExporter {
    /// `spool_dir` holds the dead-letter store (see [`dead_letter`]).
    pub fn new(
        client: clickhouse::Client,
        config: &ClickHouseConfig,
        gate: SchemaGate,
        spool: Arc<Spool>,
        spool_dir: &Path,
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
            give_up: GiveUp {
                attempts: config.dead_letter_after_attempts,
                after: Duration::from_secs(config.dead_letter_after_secs),
            },
            lanes: Lanes::new(config.insert_concurrency),
            dead_letters: DeadLetters::new(spool_dir),
            tasks: TaskTracker::new(),
            gate,
            spool,
            metrics,
            insert_settings: crate::schema::insert_settings(&schema_options(config, 0)),
        }
    }

    /// Each table's lane: permits in use and health.
    pub fn lanes(&self) -> Lanes {
        self.lanes.clone()
    }

    /// Waits for the INSERTs in flight.
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Delivers one batch: inserted, or — the parts ClickHouse will not take —
    /// written to the dead-letter store; then its rows leave the spool.
    async fn deliver(&self, batch: &Batch, data: Bytes) {
        let table = Table::by_id(batch.table);
        let token = self.spool.token(&batch.record);
        let parts: Vec<PartSpan> = if batch.parts.is_empty() {
            vec![PartSpan {
                start: 0,
                end: data.len(),
                rows: batch.rows as u32,
            }]
        } else {
            batch.parts.clone()
        };
        self.deliver_parts(table, &parts, &data, token).await;
        self.confirm(batch, data.len());
    }

    /// Inserts `parts` of `data`; if ClickHouse will not take them, splits them in
    /// two and delivers each half (so good rows around bad ones still land), down
    /// to a single part, which goes to the dead-letter store. The halves' tokens
    /// derive from the whole's, so a replay after a crash splits the same way and
    /// ClickHouse drops the halves it already has.
    fn deliver_parts<'a>(
        &'a self,
        table: &'static Table,
        parts: &'a [PartSpan],
        data: &'a Bytes,
        token: String,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
                return;
            };
            let bytes = data.slice(first.start..last.end);
            let rows: u64 = parts.iter().map(|p| u64::from(p.rows)).sum();
            let Err(gave_up) = self
                .insert_until_done(table, bytes.clone(), rows, &token)
                .await
            else {
                return;
            };
            if parts.len() > 1 {
                let mid = parts.len() / 2;
                tracing::warn!(table = table.name, parts = parts.len(), rows, error = %gave_up.error, "ClickHouse will not take a batch; splitting it to isolate the rows it refuses");
                self.deliver_parts(table, &parts[..mid], data, format!("{token}.0"))
                    .await;
                self.deliver_parts(table, &parts[mid..], data, format!("{token}.1"))
                    .await;
            } else {
                self.dead_letter(table, &token, rows, &bytes, &gave_up)
                    .await;
            }
        })
    }

    /// Inserts until ClickHouse takes the rows (Ok) or gives up on them: rows it
    /// rejects as invalid, or refusals past the dead-letter bound. An outage (no
    /// answer) is waited out, however long.
    async fn insert_until_done(
        &self,
        table: &'static Table,
        data: Bytes,
        rows: u64,
        token: &str,
    ) -> Result<(), GaveUp> {
        let lane = self.lanes.lane(table.id);
        let mut failing = None;
        let mut attempt = 0;
        let mut refusals = 0;
        let mut first_refusal: Option<Instant> = None;
        loop {
            self.gate.ready().await;
            let started = Instant::now();
            let e = match self.insert_once(table, data.clone(), token).await {
                Ok(()) => {
                    self.metrics.exported(table, rows, started.elapsed());
                    return Ok(());
                }
                Err(e) => e,
            };
            lane.failed(
                &mut failing,
                format!("INSERT into {} failing: {e}", table.name),
            );
            match classify(&e) {
                Failure::BadData => {
                    return Err(GaveUp {
                        error: e.to_string(),
                        attempts: refusals + 1,
                    })
                }
                Failure::Refused => {
                    refusals += 1;
                    let since = *first_refusal.get_or_insert(started);
                    if self.give_up.reached(refusals, since.elapsed()) {
                        return Err(GaveUp {
                            error: e.to_string(),
                            attempts: refusals,
                        });
                    }
                }
                Failure::SchemaChanged => {
                    self.gate
                        .invalidate(format!("insert into {} failed: {e}", table.name));
                }
                Failure::Unavailable => {}
            }
            let delay = self.backoff.delay(attempt);
            attempt += 1;
            self.metrics.retried(table);
            tracing::warn!(table = table.name, rows, attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "INSERT failed; will retry");
            tokio::time::sleep(delay).await;
        }
    }

    /// Writes rows given up on to the dead-letter store, retrying until it
    /// succeeds: they leave the spool only once they are there.
    async fn dead_letter(
        &self,
        table: &'static Table,
        token: &str,
        rows: u64,
        data: &[u8],
        gave_up: &GaveUp,
    ) {
        let insert = self.insert_sql(table);
        let letter = DeadLetter {
            table: table.name,
            token,
            rows,
            data,
            error: &gave_up.error,
            attempts: gave_up.attempts,
            insert: &insert,
        };
        let mut attempt = 0;
        loop {
            match self.dead_letters.store(&letter) {
                Ok(path) => {
                    tracing::error!(table = table.name, rows, error = %gave_up.error, attempts = gave_up.attempts, file = %path.display(), "ClickHouse will not take these rows; moved them to the dead-letter store");
                    self.metrics.dead_lettered(table, rows);
                    self.lanes.lane(table.id).dead_lettered();
                    return;
                }
                Err(e) => {
                    let delay = self.backoff.delay(attempt);
                    attempt += 1;
                    tracing::error!(table = table.name, rows, error = %e, dir = %self.dead_letters.dir().display(), "cannot write to the dead-letter store; the rows stay in the spool, retrying");
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

    fn insert_sql(&self, table: &Table) -> String {
        format!(
            "INSERT INTO {}.{} ({}) FORMAT RowBinary",
            quote_ident(&self.database),
            quote_ident(table.name),
            table.insert_columns()
        )
    }

    async fn insert_once(
        &self,
        table: &Table,
        data: Bytes,
        token: &str,
    ) -> clickhouse::error::Result<()> {
        // A table made by an older upstream exporter (DateTime64(9) where we write
        // DateTime): the rows are re-encoded to its column types.
        let data = match self.gate.cast_for(table.id) {
            Some(cast) => recast(table, &cast, &data)?,
            None => data,
        };
        let sql = self.insert_sql(table);
        // The token makes a retry of an INSERT that did land (timeout, crash, restart)
        // a no-op; the view feeding the trace-id table must deduplicate as well.
        let mut insert = self
            .client
            .insert_formatted_with(sql)
            .with_timeouts(Some(self.timeout), Some(self.timeout))
            .with_setting("insert_deduplicate", "1")
            .with_setting("insert_deduplication_token", token)
            .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1");
        for (key, value) in self.insert_settings {
            insert = insert.with_setting(*key, *value);
        }
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

/// Our LZ4 blocks → rows in the server's column types → LZ4 blocks again.
fn recast(table: &Table, cast: &TableCast, data: &[u8]) -> clickhouse::error::Result<Bytes> {
    let raw = crate::part::decompress(data).map_err(clickhouse::error::Error::Custom)?;
    let rows = cast.apply(&raw).map_err(|e| {
        clickhouse::error::Error::Custom(format!("re-encoding for {}: {e}", table.name))
    })?;
    Ok(Bytes::from(
        crate::part::TablePart::compress(table.id, 0, &rows).data,
    ))
}

impl BatchSink for ClickHouseExporter {
    /// Waits for a permit of the batch's own lane: back-pressure on that table's
    /// batcher only.
    async fn send(&self, batch: Batch) {
        let permits = self.lanes.lane(batch.table).permits.clone();
        let Ok(permit) = permits.acquire_owned().await else {
            return;
        };
        let this = self.clone();
        self.tasks.spawn(async move {
            let mut batch = batch;
            let data = Bytes::from(std::mem::take(&mut batch.data));
            this.deliver(&batch, data).await;
            drop(permit);
        });
    }
}

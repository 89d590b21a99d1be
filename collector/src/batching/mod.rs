//! Batching: many requests' rows become one INSERT per table.
//!
//! One task per table collects spooled parts until the batch reaches `max_rows` or
//! `max_bytes`, or `max_delay` has passed since its first part. It then records the
//! batch in the spool (which fixes its deduplication token) and hands it to the
//! exporter. The exporter bounds concurrent INSERTs; while all are busy the batcher
//! waits, parts queue up (their bytes spill to disk past the memory budget), and the
//! next batch is bigger — batches grow under load instead of piling up as requests.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::schema::TableId;
use crate::spool::{BatchRecord, Spool, SpoolError, SpooledPart};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BatchingConfig {
    pub max_rows: u64,
    pub max_bytes: usize,
    pub max_delay_ms: u64,
    /// Encoded rows kept in memory between the receivers and ClickHouse; past it,
    /// parts wait in the spool only and are read back when their batch is built.
    pub max_memory_bytes: usize,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_rows: 100_000,
            max_bytes: 32 << 20,
            max_delay_ms: 1000,
            max_memory_bytes: 256 << 20,
        }
    }
}

/// A spooled part on its way to an INSERT; `permit` is its share of the memory
/// budget when its bytes are held in memory.
#[derive(Debug)]
pub struct Queued {
    pub part: SpooledPart,
    pub permit: Option<OwnedSemaphorePermit>,
}

/// The rows of one INSERT.
#[derive(Debug)]
pub struct Batch {
    pub table: TableId,
    pub rows: u64,
    pub data: Vec<u8>,
    /// Where each part's bytes are in `data`, in order: the exporter splits a batch
    /// ClickHouse refuses at these bounds (each part is whole LZ4 blocks of whole rows).
    pub parts: Vec<PartSpan>,
    pub record: BatchRecord,
}

/// One part's bytes in a batch's `data` and its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSpan {
    pub start: usize,
    pub end: usize,
    pub rows: u32,
}

/// Where finished batches go. `send` may wait: that is the back-pressure from
/// ClickHouse onto the batcher.
pub trait BatchSink: Send + Sync + 'static {
    fn send(&self, batch: Batch) -> impl std::future::Future<Output = ()> + Send;
}

/// A batch being filled.
struct Open {
    rows: u64,
    /// RowBinary bytes before compression, what `max_bytes` limits.
    raw_bytes: usize,
    seqs: Vec<u64>,
    data: Vec<u8>,
    parts: Vec<PartSpan>,
    _permits: Vec<OwnedSemaphorePermit>,
}

impl Open {
    fn new() -> Open {
        Open {
            rows: 0,
            raw_bytes: 0,
            seqs: Vec::new(),
            data: Vec::new(),
            parts: Vec::new(),
            _permits: Vec::new(),
        }
    }

    fn add(&mut self, q: Queued, spool: &Spool) -> Result<(), SpoolError> {
        let bytes = match q.part.data {
            Some(d) => d,
            None => spool.read(q.part.seq)?,
        };
        let start = self.data.len();
        if self.data.is_empty() {
            self.data = bytes;
        } else {
            self.data.extend_from_slice(&bytes);
        }
        self.parts.push(PartSpan {
            start,
            end: self.data.len(),
            rows: q.part.rows,
        });
        self.rows += u64::from(q.part.rows);
        self.raw_bytes += q.part.raw_len as usize;
        self.seqs.push(q.part.seq);
        if let Some(p) = q.permit {
            self._permits.push(p);
        }
        Ok(())
    }
}

/// Runs the batcher of one table until its input closes or `stop` fires; then
/// flushes what is left, without waiting for `max_delay`.
pub async fn run<K: BatchSink>(
    table: TableId,
    config: BatchingConfig,
    mut input: mpsc::UnboundedReceiver<Queued>,
    spool: Arc<Spool>,
    sink: Arc<K>,
    stop: CancellationToken,
) {
    let max_delay = Duration::from_millis(config.max_delay_ms);
    while let Some(first) = next(&mut input, &stop).await {
        let mut open = Open::new();
        add(&mut open, first, &spool);
        let deadline = Instant::now() + max_delay;
        while open.rows < config.max_rows && open.raw_bytes < config.max_bytes {
            tokio::select! {
                next = next(&mut input, &stop) => match next {
                    Some(q) => add(&mut open, q, &spool),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline), if !stop.is_cancelled() => break,
            }
        }
        if open.seqs.is_empty() {
            continue;
        }
        let record = match spool.record_batch(table, open.seqs).await {
            Ok(r) => r,
            Err(e) => {
                // The parts stay in the spool; a restart batches them again.
                tracing::error!(error = %e, "cannot record a batch in the spool");
                continue;
            }
        };
        sink.send(Batch {
            table,
            rows: open.rows,
            data: open.data,
            parts: open.parts,
            record,
        })
        .await;
    }
}

fn add(open: &mut Open, q: Queued, spool: &Spool) {
    let seq = q.part.seq;
    if let Err(e) = open.add(q, spool) {
        // Leaves the part in the spool, where a restart finds it again.
        tracing::error!(seq, error = %e, "cannot read a part back from the spool");
    }
}

/// Re-sends the batches a restart found recorded, exactly as they were recorded.
pub async fn replay<K: BatchSink>(
    spool: &Spool,
    batches: Vec<(BatchRecord, Vec<SpooledPart>)>,
    sink: &K,
) {
    for (record, parts) in batches {
        let mut open = Open::new();
        for part in parts {
            add(&mut open, Queued { part, permit: None }, spool);
        }
        sink.send(Batch {
            table: record.table,
            rows: open.rows,
            data: open.data,
            parts: open.parts,
            record,
        })
        .await;
    }
}

/// The next part; once `stop` fired, only what was already queued.
async fn next(
    input: &mut mpsc::UnboundedReceiver<Queued>,
    stop: &CancellationToken,
) -> Option<Queued> {
    if stop.is_cancelled() {
        input.close();
        return input.recv().await;
    }
    tokio::select! {
        biased;
        q = input.recv() => q,
        _ = stop.cancelled() => {
            input.close();
            input.recv().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::part::TablePart;
    use crate::spool::SpoolConfig;
    use std::sync::Mutex;
    use tokio::sync::Semaphore;

    /// (rows, spool sequence numbers, bytes) of each batch.
    type Sent = (u64, Vec<u64>, Vec<u8>);

    #[derive(Default)]
    struct Collect(Mutex<Vec<Sent>>);

    impl BatchSink for Collect {
        async fn send(&self, b: Batch) {
            self.0.lock().unwrap().push((b.rows, b.record.seqs, b.data));
        }
    }

    #[tokio::test]
    async fn batches_by_rows_then_by_delay_reading_spilled_parts_back() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(&SpoolConfig {
            dir: dir.path().display().to_string(),
            ..Default::default()
        })
        .unwrap();
        let budget = Arc::new(Semaphore::new(6));
        let sink = Arc::new(Collect::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let config = BatchingConfig {
            max_rows: 10,
            max_delay_ms: 100,
            ..Default::default()
        };
        let task = tokio::spawn(run(
            TableId::Logs,
            config,
            rx,
            spool.clone(),
            sink.clone(),
            CancellationToken::new(),
        ));
        // Spooled before any is queued, so fsync time cannot eat into the batch delay.
        let mut appended = Vec::new();
        for i in 0..5u8 {
            let parts = vec![TablePart {
                table: TableId::Logs,
                rows: 3,
                raw_len: 30,
                data: vec![i; 3],
            }];
            appended.push(spool.append(parts).await.unwrap().stored().pop().unwrap());
        }
        for mut spooled in appended {
            // The first two fit the memory budget; the rest spill.
            let permit = budget.clone().try_acquire_many_owned(3).ok();
            if permit.is_none() {
                spooled.data = None;
            }
            tx.send(Queued {
                part: spooled,
                permit,
            })
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(tx);
        task.await.unwrap();
        let got = sink.0.lock().unwrap().clone();
        // 4 parts reach 12 rows ≥ 10; the fifth leaves after the delay.
        assert_eq!(
            got.iter().map(|b| (b.0, b.1.len())).collect::<Vec<_>>(),
            [(12, 4), (3, 1)]
        );
        assert_eq!(got[0].2, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]);
        assert_eq!(got[1].2, [4, 4, 4]);
        assert_eq!(
            budget.available_permits(),
            6,
            "permits return with the batch"
        );
    }
}

//! Batching: many requests' rows become one INSERT per table.
//!
//! One task per table collects parts until the batch reaches `max_rows` or
//! `max_bytes`, or `max_delay` has passed since its first part, then hands it to the
//! exporter. The exporter bounds concurrent INSERTs; while all are busy the batcher
//! keeps collecting, so batches grow under load instead of piling up as requests.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::part::TablePart;
use crate::schema::TableId;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BatchingConfig {
    pub max_rows: u64,
    pub max_bytes: usize,
    pub max_delay_ms: u64,
    /// Encoded rows held in memory between the receivers and ClickHouse; past it,
    /// requests are refused with 429 / RESOURCE_EXHAUSTED.
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

/// A part on its way to an INSERT, holding its share of the memory budget.
#[derive(Debug)]
pub struct Queued {
    pub part: TablePart,
    pub permit: OwnedSemaphorePermit,
}

/// The rows of one INSERT.
#[derive(Debug)]
pub struct Batch {
    pub table: TableId,
    pub rows: u64,
    pub parts: usize,
    pub data: Vec<u8>,
    pub permits: Vec<OwnedSemaphorePermit>,
}

impl Batch {
    fn new(table: TableId) -> Batch {
        Batch {
            table,
            rows: 0,
            parts: 0,
            data: Vec::new(),
            permits: Vec::new(),
        }
    }

    fn add(&mut self, q: Queued) {
        self.rows += u64::from(q.part.rows);
        self.parts += 1;
        if self.data.is_empty() {
            self.data = q.part.data;
        } else {
            self.data.extend_from_slice(&q.part.data);
        }
        self.permits.push(q.permit);
    }
}

/// Where finished batches go. `send` may wait: that is the back-pressure from
/// ClickHouse onto the batcher.
pub trait BatchSink: Send + Sync + 'static {
    fn send(&self, batch: Batch) -> impl std::future::Future<Output = ()> + Send;
}

/// Runs the batcher of one table until its input closes or `stop` fires; then
/// flushes what is left, without waiting for `max_delay`.
pub async fn run<K: BatchSink>(
    table: TableId,
    config: BatchingConfig,
    mut input: mpsc::UnboundedReceiver<Queued>,
    sink: std::sync::Arc<K>,
    stop: CancellationToken,
) {
    let max_delay = Duration::from_millis(config.max_delay_ms);
    while let Some(first) = next(&mut input, &stop).await {
        let mut batch = Batch::new(table);
        batch.add(first);
        let deadline = Instant::now() + max_delay;
        while batch.rows < config.max_rows && batch.data.len() < config.max_bytes {
            tokio::select! {
                next = next(&mut input, &stop) => match next {
                    Some(q) => batch.add(q),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline), if !stop.is_cancelled() => break,
            }
        }
        sink.send(batch).await;
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
    use std::sync::{Arc, Mutex};
    use tokio::sync::Semaphore;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(u64, usize, Vec<u8>)>>);

    impl BatchSink for Collect {
        async fn send(&self, b: Batch) {
            self.0.lock().unwrap().push((b.rows, b.parts, b.data));
        }
    }

    fn part(budget: &Arc<Semaphore>, rows: u32, byte: u8) -> Queued {
        Queued {
            part: TablePart {
                table: TableId::Logs,
                rows,
                data: vec![byte; rows as usize],
            },
            permit: budget.clone().try_acquire_many_owned(rows).unwrap(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_by_rows_then_by_delay() {
        let budget = Arc::new(Semaphore::new(1000));
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
            sink.clone(),
            CancellationToken::new(),
        ));
        for i in 0..5 {
            tx.send(part(&budget, 3, i)).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        drop(tx);
        task.await.unwrap();
        let got = sink.0.lock().unwrap().clone();
        // 4 parts reach 12 rows ≥ 10; the fifth leaves after the delay.
        assert_eq!(
            got.iter().map(|b| (b.0, b.1)).collect::<Vec<_>>(),
            [(12, 4), (3, 1)]
        );
        assert_eq!(got[0].2, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]);
        assert_eq!(
            budget.available_permits(),
            1000,
            "permits return with the batch"
        );
    }
}

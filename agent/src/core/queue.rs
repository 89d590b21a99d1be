//! The bounded hand-off between the code being observed and the export thread.
//!
//! A push takes one uncontended lock and never waits on the exporter: when the
//! queue is full the item is dropped and counted, so a slow or absent collector
//! costs the host nothing but the lost telemetry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

pub(crate) struct Queue<T> {
    items: Mutex<Vec<T>>,
    capacity: usize,
    /// Wake the exporter early once this many items wait.
    batch: usize,
    dropped: AtomicU64,
    ready: Notify,
}

impl<T> Queue<T> {
    pub(crate) fn new(capacity: usize, batch: usize) -> Queue<T> {
        Queue {
            items: Mutex::new(Vec::new()),
            capacity: capacity.max(1),
            batch: batch.clamp(1, capacity.max(1)),
            dropped: AtomicU64::new(0),
            ready: Notify::new(),
        }
    }

    /// Returns false (and counts a drop) when the queue is full.
    pub(crate) fn push(&self, item: T) -> bool {
        let len = {
            // A poisoned lock only means another pusher panicked mid-push; the
            // Vec itself is still sound.
            let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
            if items.len() >= self.capacity {
                drop(items);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            items.push(item);
            items.len()
        };
        if len == self.batch {
            self.ready.notify_one();
        }
        true
    }

    /// Swaps the waiting items into `spare` (which must be empty). The two Vecs
    /// trade places each round, so in steady state neither side reallocates.
    pub(crate) fn swap(&self, spare: &mut Vec<T>) {
        debug_assert!(spare.is_empty());
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *items, spare);
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Resolves once a batch is waiting.
    pub(crate) async fn batch_ready(&self) {
        self.ready.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_and_counts() {
        let q = Queue::new(2, 2);
        assert!(q.push(1));
        assert!(q.push(2));
        assert!(!q.push(3));
        assert_eq!(q.dropped(), 1);
        let mut spare = Vec::with_capacity(2);
        q.swap(&mut spare);
        assert_eq!(spare, vec![1, 2]);
        assert!(q.push(4));
    }
}

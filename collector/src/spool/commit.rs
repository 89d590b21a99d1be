//! Group commit: one fsync serves every append made while the previous one ran.
//!
//! A failed fsync is fatal: the process exits (see [`fsync_failed`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::SpoolError;

pub struct GroupCommit {
    /// Incremented just before each flush starts.
    generation: AtomicU64,
    /// The newest generation whose flush completed (Err: the flush failed).
    flushed: watch::Sender<Result<u64, String>>,
    pending: Notify,
    stopping: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl GroupCommit {
    /// `flush` makes everything written before it started durable.
    pub fn start(
        flush: impl Fn() -> std::io::Result<()> + Send + 'static,
        interval: Duration,
    ) -> Arc<GroupCommit> {
        let gc = Arc::new(GroupCommit {
            generation: AtomicU64::new(1),
            flushed: watch::Sender::new(Ok(0)),
            pending: Notify::new(),
            stopping: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let this = gc.clone();
        // A thread of its own: fsync blocks, and must not stall the async workers.
        let handle = std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || this.run(flush, interval))
            .expect("spawn the spool commit thread");
        *gc.thread.lock().expect("not poisoned") = Some(handle);
        gc
    }

    /// Ends the commit thread and waits for it.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.pending.notify_one();
        if let Some(t) = self.thread.lock().expect("not poisoned").take() {
            let _ = t.join();
        }
    }

    fn run(self: Arc<Self>, flush: impl Fn() -> std::io::Result<()>, interval: Duration) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("commit runtime");
        rt.block_on(async {
            loop {
                self.pending.notified().await;
                if self.stopping.load(Ordering::Acquire) {
                    return;
                }
                tokio::time::sleep(interval).await;
                let generation = self.generation.fetch_add(1, Ordering::AcqRel);
                let result = flush().map(|_| generation).map_err(|e| {
                    fsync_failed(&e);
                    e.to_string()
                });
                let _ = self.flushed.send_replace(result);
            }
        });
    }

    /// Asks for a flush soon without waiting for it.
    pub fn request(&self) {
        self.pending.notify_one();
    }

    /// Returns once an fsync that started after this call's writes has completed.
    pub async fn wait(&self) -> Result<(), SpoolError> {
        // Read after our writes were applied: the flush of this generation starts
        // later, so it covers them.
        let mine = self.generation.load(Ordering::Acquire);
        let mut rx = self.flushed.subscribe();
        self.pending.notify_one();
        let state = rx
            .wait_for(|r| match r {
                Ok(g) => *g >= mine,
                Err(_) => true,
            })
            .await
            .map_err(|_| SpoolError::Storage(std::io::Error::other("the commit thread is gone")))?;
        match &*state {
            Ok(_) => Ok(()),
            Err(e) => Err(SpoolError::Storage(std::io::Error::other(e.clone()))),
        }
    }
}

/// The exit status after a failed fsync.
pub const FSYNC_FAILED_EXIT: i32 = 75;

/// After a failed fsync the kernel may already have dropped the dirty pages and
/// cleared the error, so a retried fsync can succeed without the data being on
/// disk: nothing written since the last good fsync can be trusted, and the file's
/// state is known only by reading it back. So the process exits; the waiting
/// requests are never acknowledged (their clients retry), and the restart recovers
/// from what the disk really holds, recognising a retry of a request that did
/// reach it by its fingerprint. (The crate's own tests observe the error instead.)
pub fn fsync_failed(e: &std::io::Error) {
    tracing::error!(error = %e, exit_status = FSYNC_FAILED_EXIT, "fsync of the spool failed; exiting so that a restart recovers from what is on disk");
    #[cfg(not(test))]
    std::process::exit(FSYNC_FAILED_EXIT);
}

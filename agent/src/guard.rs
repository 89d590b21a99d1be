//! [`AgentGuard`]: keeps the agent running and flushes it, within the
//! shutdown deadline, when dropped or shut down.

use std::time::Duration;

use crate::agent::Agent;
use crate::core::ShutdownError;
use crate::export::Worker;

/// Keeps the agent running; dropping it (or [`AgentGuard::shutdown`]) flushes
/// spans, log lines, log records and a last metrics export within the shutdown
/// deadline, collector up or down.
pub struct AgentGuard {
    agent: Agent,
    worker: Option<Worker>,
}

impl AgentGuard {
    pub(crate) fn new(agent: Agent, worker: Worker) -> AgentGuard {
        AgentGuard {
            agent,
            worker: Some(worker),
        }
    }

    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// Flushes and stops, blocking the calling thread for at most the deadline.
    /// Safe on any thread, also inside a Tokio runtime: the export runs on the
    /// agent's own thread.
    pub fn shutdown(mut self) -> Result<(), ShutdownError> {
        match self.worker.take() {
            Some(worker) => worker.shutdown(),
            None => Ok(()),
        }
    }

    /// [`AgentGuard::shutdown`] without blocking an async worker thread (use it
    /// when the collector runs in the same runtime, as in tests).
    pub async fn shutdown_async(self) -> Result<(), ShutdownError> {
        let deadline = self
            .worker
            .as_ref()
            .map_or(Duration::ZERO, |w| w.deadline());
        match tokio::task::spawn_blocking(move || self.shutdown()).await {
            Ok(result) => result,
            Err(_) => Err(ShutdownError::DeadlineExceeded(deadline)),
        }
    }
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            // Nowhere to report from a drop; the counters already tell what was lost.
            let _ = worker.shutdown();
        }
    }
}

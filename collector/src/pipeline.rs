//! The door between the receivers and everything downstream.
//!
//! A receiver decodes a request and calls [`Pipeline::accept`]; when that returns Ok,
//! the rows are owned by the pipeline and the client may be told so.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

use crate::batching::Queued;
use crate::mapping::{Mapped, Signal};
use crate::part::TablePart;
use crate::receivers::IngestError;
use crate::schema::ALL_TABLES;
use crate::telemetry::{Metrics, Outcome};

pub struct Pipeline {
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    batchers: Vec<mpsc::UnboundedSender<Queued>>,
    metrics: Arc<Metrics>,
}

impl Pipeline {
    /// `batchers[i]` takes the parts of `ALL_TABLES[i]`.
    pub fn new(
        budget_bytes: usize,
        batchers: Vec<mpsc::UnboundedSender<Queued>>,
        metrics: Arc<Metrics>,
    ) -> Pipeline {
        assert_eq!(batchers.len(), ALL_TABLES.len());
        Pipeline {
            budget: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
            batchers,
            metrics,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Maps a decoded request to rows and hands them downstream.
    pub async fn accept<S: Signal>(&self, request: S::Request) -> Result<S::Response, IngestError> {
        let mapped = S::map(&request);
        drop(request);
        let response = S::response(&mapped);
        let Mapped {
            parts,
            accepted,
            rejected,
            ..
        } = mapped;
        let received = accepted + rejected;
        if let Err(e) = self.enqueue(parts) {
            self.metrics
                .request(S::NAME, Outcome::Overloaded, received, 0, 0);
            return Err(e);
        }
        let outcome = if rejected > 0 {
            Outcome::Partial
        } else {
            Outcome::Accepted
        };
        self.metrics
            .request(S::NAME, outcome, received, accepted, rejected);
        Ok(response)
    }

    fn enqueue(&self, parts: Vec<TablePart>) -> Result<(), IngestError> {
        let bytes: usize = parts.iter().map(|p| p.data.len()).sum();
        // All parts of a request are reserved at once, so a request is taken whole or not at all.
        let permit = u32::try_from(bytes)
            .ok()
            .and_then(|n| self.budget.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| IngestError::Overloaded {
                message: format!(
                    "the collector's memory budget ({} bytes) is full; retry later",
                    self.budget_bytes
                ),
                retry_after: Duration::from_secs(1),
            })?;
        let mut permit = Some(permit);
        for part in parts {
            let share = permit
                .as_mut()
                .and_then(|p| p.split(part.data.len()))
                .expect("the permit covers every part");
            let table = part.table as usize;
            if self.batchers[table]
                .send(Queued {
                    part,
                    permit: share,
                })
                .is_err()
            {
                return Err(IngestError::Unavailable(
                    "the collector is shutting down".into(),
                ));
            }
        }
        Ok(())
    }
}

//! The door between the receivers and everything downstream.
//!
//! A receiver decodes and maps a request and calls [`Pipeline::accept`]; when that
//! returns Ok, the rows are durable in the spool and the client may be told so.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use tokio::sync::{mpsc, Semaphore};

use crate::batching::Queued;
use crate::mapping::limits::Limits;
use crate::mapping::{Mapped, Signal};
use crate::otlp::IngestError;
use crate::schema::ALL_TABLES;
use crate::spool::{Appended, Spool, SpoolError};
use crate::telemetry::{Metrics, Outcome};

pub struct Pipeline {
    spool: Arc<Spool>,
    memory: Arc<Semaphore>,
    batchers: Vec<mpsc::UnboundedSender<Queued>>,
    metrics: Arc<Metrics>,
}

impl Pipeline {
    /// `batchers[i]` takes the parts of `ALL_TABLES[i]`; `memory` bounds the row bytes
    /// held in memory on their way to batching.
    pub fn new(
        spool: Arc<Spool>,
        memory: Arc<Semaphore>,
        batchers: Vec<mpsc::UnboundedSender<Queued>>,
        metrics: Arc<Metrics>,
    ) -> Pipeline {
        assert_eq!(batchers.len(), ALL_TABLES.len());
        Pipeline {
            spool,
            memory,
            batchers,
            metrics,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn metrics_arc(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Refuses at once while the spool is full, before a request costs any mapping.
    pub fn has_room<S: Signal>(&self, items: u64) -> Result<(), IngestError> {
        if self.spool.has_room() {
            return Ok(());
        }
        let (used, budget) = (self.spool.disk_bytes(), self.spool.budget_bytes());
        let (outcome, err) = refusal(SpoolError::Full { used, budget });
        self.metrics.request(S::NAME, outcome, items, 0, 0);
        Err(err)
    }

    /// Spools a request's rows and hands them downstream. A retry of a request
    /// stored within the deduplication window gets the same answer and is not
    /// stored again.
    pub async fn accept<S: Signal>(&self, mapped: Mapped) -> Result<S::Response, IngestError> {
        let response = S::response(&mapped);
        let Mapped {
            parts,
            accepted,
            rejected,
            ..
        } = mapped;
        let received = accepted + rejected;
        let spooled = match self.spool.append(parts).await {
            Ok(Appended::Stored(s)) => s,
            Ok(Appended::Duplicate) => {
                self.metrics.request(S::NAME, Outcome::Duplicate, 0, 0, 0);
                return Ok(response);
            }
            Err(e) => {
                let (outcome, err) = refusal(e);
                self.metrics.request(S::NAME, outcome, received, 0, 0);
                return Err(err);
            }
        };
        for mut part in spooled {
            let permit = self.memory.clone().try_acquire_many_owned(part.len).ok();
            if permit.is_none() {
                // Over the memory budget: the bytes wait on disk only.
                part.data = None;
            }
            let table = part.table as usize;
            // A closed batcher means shutdown; the part is in the spool and a
            // restart sends it.
            let _ = self.batchers[table].send(Queued { part, permit });
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
}

fn refusal(e: SpoolError) -> (Outcome, IngestError) {
    match e {
        SpoolError::Full { .. } => (
            Outcome::Overloaded,
            IngestError::Overloaded {
                message: format!("{e}; retry later"),
                retry_after: Duration::from_secs(1),
            },
        ),
        other => {
            tracing::error!(error = %other, "spool write failed");
            (
                Outcome::Unavailable,
                IngestError::Unavailable(format!("cannot store the request: {other}")),
            )
        }
    }
}

/// The collector's own metrics enter like a client's request: mapped (their few
/// series meet no limit), spooled and batched.
impl crate::telemetry::MetricsSink for Pipeline {
    async fn send(&self, request: ExportMetricsServiceRequest) -> Result<(), IngestError> {
        let (mapped, _) = crate::mapping::Metrics::map(request, &Limits::NONE)?;
        self.accept::<crate::mapping::Metrics>(mapped)
            .await
            .map(drop)
    }
}

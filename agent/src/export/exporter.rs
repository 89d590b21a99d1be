//! The seam between the export loops and where batches go: OTLP over the
//! network to one or several collectors ([`Endpoints`], the default) or, in
//! tests, memory (`InMemoryExporter`, feature `test-support`).

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use super::endpoints::{Endpoints, Sent};
use super::transport::{ExportError, Payload};
use super::{send_bounded, Stop};
use crate::core::Shared;

pub(crate) type ExportFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Sent, ExportError>> + Send + 'a>>;

/// Delivers one batch of `items` items of one signal. `Ok` means the batch is
/// accepted (or parked with the collector that may hold it); an error counts the
/// batch as failed. Implementations own their retries and must give up once
/// `stop` carries a passed deadline.
pub(crate) trait Exporter: Send + Sync {
    fn export<'a>(
        &'a self,
        shared: &'a Shared,
        payload: Payload,
        items: u64,
        stop: &'a Stop,
    ) -> ExportFuture<'a>;

    /// At shutdown: settles batches parked by `export`, within `deadline`.
    fn settle_parked(&self, _deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }
}

impl Exporter for Endpoints {
    fn export<'a>(
        &'a self,
        shared: &'a Shared,
        payload: Payload,
        items: u64,
        stop: &'a Stop,
    ) -> ExportFuture<'a> {
        // Encoded once, then retried within the timeout and the shutdown deadline.
        Box::pin(send_bounded(shared, self, payload, items, stop))
    }

    fn settle_parked(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Endpoints::settle_parked(self, deadline))
    }
}

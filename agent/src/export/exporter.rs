//! The seam between the export loops and where batches go: OTLP over the
//! network ([`Transport`], the default) or, in tests, memory
//! (`InMemoryExporter`, feature `test-support`).

use std::future::Future;
use std::pin::Pin;

use super::transport::{ExportError, Payload, Transport};
use super::{send_bounded, Stop};
use crate::core::Shared;

pub(crate) type ExportFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(), ExportError>> + Send + 'a>>;

/// Delivers one batch of one signal. `Ok` means the batch is accepted; an
/// error counts the batch as failed. Implementations own their retries and
/// must give up once `stop` carries a passed deadline.
pub(crate) trait Exporter: Send + Sync {
    fn export<'a>(
        &'a self,
        shared: &'a Shared,
        payload: Payload,
        stop: &'a Stop,
    ) -> ExportFuture<'a>;
}

impl Exporter for Transport {
    fn export<'a>(
        &'a self,
        shared: &'a Shared,
        payload: Payload,
        stop: &'a Stop,
    ) -> ExportFuture<'a> {
        // Encoded once, then retried within the timeout and the shutdown deadline.
        Box::pin(send_bounded(shared, self, payload, stop))
    }
}

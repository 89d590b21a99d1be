//! An exporter that keeps every batch in memory, as the OTLP requests the
//! network exporter would have encoded, for tests of instrumentation that do
//! not need a collector (feature `test-support`; tests that prove delivery use
//! the real collector).

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::trace::v1::Span;

use super::endpoints::Sent;
use super::exporter::{ExportFuture, Exporter};
use super::transport::Payload;
use super::Stop;
use crate::core::Shared;

#[derive(Default)]
struct Batches {
    traces: Vec<ExportTraceServiceRequest>,
    logs: Vec<ExportLogsServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

/// Give a clone to [`crate::AgentBuilder::exporter`]; read what the agent
/// exported from the other. Flushing is the agent's: after
/// [`crate::AgentGuard::shutdown`] every span and log record is here.
#[derive(Clone, Default)]
pub struct InMemoryExporter {
    batches: Arc<Mutex<Batches>>,
}

impl InMemoryExporter {
    pub fn new() -> InMemoryExporter {
        InMemoryExporter::default()
    }

    fn read<T>(&self, f: impl FnOnce(&Batches) -> T) -> T {
        f(&self.batches.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The trace export requests in the order they were sent.
    pub fn trace_requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.read(|b| b.traces.clone())
    }

    pub fn log_requests(&self) -> Vec<ExportLogsServiceRequest> {
        self.read(|b| b.logs.clone())
    }

    pub fn metric_requests(&self) -> Vec<ExportMetricsServiceRequest> {
        self.read(|b| b.metrics.clone())
    }

    /// Every exported span, in export order.
    pub fn spans(&self) -> Vec<Span> {
        self.read(|b| {
            b.traces
                .iter()
                .flat_map(|r| &r.resource_spans)
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| s.spans.iter().cloned())
                .collect()
        })
    }

    /// Every exported log record, in export order.
    pub fn log_records(&self) -> Vec<LogRecord> {
        self.read(|b| {
            b.logs
                .iter()
                .flat_map(|r| &r.resource_logs)
                .flat_map(|r| &r.scope_logs)
                .flat_map(|s| s.log_records.iter().cloned())
                .collect()
        })
    }

    /// Every exported metric (each export repeats the cumulative series).
    pub fn metrics(&self) -> Vec<Metric> {
        self.read(|b| {
            b.metrics
                .iter()
                .flat_map(|r| &r.resource_metrics)
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| s.metrics.iter().cloned())
                .collect()
        })
    }
}

impl Exporter for InMemoryExporter {
    fn export<'a>(
        &'a self,
        _: &'a Shared,
        payload: Payload,
        _: u64,
        _: &'a Stop,
    ) -> ExportFuture<'a> {
        let mut batches = self.batches.lock().unwrap_or_else(|p| p.into_inner());
        match payload {
            Payload::Traces(r) => batches.traces.push(r),
            Payload::Logs(r) => batches.logs.push(r),
            Payload::Metrics(r) => batches.metrics.push(r),
        }
        Box::pin(std::future::ready(Ok(Sent::Delivered)))
    }
}

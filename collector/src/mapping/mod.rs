//! OTLP requests → encoded rows of the OpenTelemetry ClickHouse layout.
//!
//! The pipeline is written once for all signals; what differs per signal is a
//! [`Signal`] implementation: its request and response types and how one request
//! becomes rows. Traces, the bulk of the traffic, are mapped straight from the
//! protobuf bytes ([`wire`]); logs and metrics from prost's decoded messages.

mod attributes;
mod ids;
pub mod limits;
mod logs;
mod metrics;
pub mod time_window;
mod traces;
pub mod wire;

pub use logs::Logs;
pub use metrics::Metrics;
pub use time_window::{OutOfWindow, TimestampWindow};
pub use traces::{Traces, TracesRequest};

use bytes::Bytes;

use crate::otlp::{Encoding, IngestError};
use crate::part::TablePart;
use crate::schema::{Row, TableId, ALL_TABLES};
use limits::{Limitable, Limits, Report};

pub trait Signal: Send + Sync + 'static {
    /// `traces`, `logs` or `metrics`: the URL path segment and the metrics label.
    const NAME: &'static str;
    /// What one item is called in messages: spans, log records, data points.
    const ITEMS: &'static str;
    /// The OTLP gRPC service, e.g. `opentelemetry.proto.collector.trace.v1.TraceService`.
    const GRPC_SERVICE: &'static str;
    /// A request as the receivers hold it: decoded far enough to count its items.
    type Request: Send + 'static;
    type Response: prost::Message + serde::Serialize + Default + Send + 'static;

    /// A request body (protobuf or JSON, decompressed); a malformed one is refused.
    fn decode(body: Bytes, encoding: Encoding) -> Result<Self::Request, IngestError>;
    /// Spans, log records or data points in the request.
    fn items(request: &Self::Request) -> u64;
    /// The request's rows, with the attribute limits applied, and what the limits
    /// changed.
    fn map(request: Self::Request, limits: &Limits) -> Result<(Mapped, Report), IngestError>;
    /// The export response, with `partial_success` set when items were rejected.
    fn response(mapped: &Mapped) -> Self::Response;
    /// Adds a note for the client to `partial_success.error_message` without
    /// counting any item as rejected (e.g. "12 attributes dropped (limit 256)").
    fn add_note(response: &mut Self::Response, note: &str);
}

/// `decode` for signals mapped from prost's messages.
fn decode_message<M>(body: &[u8], encoding: Encoding) -> Result<M, IngestError>
where
    M: prost::Message + Default + serde::de::DeserializeOwned,
{
    crate::otlp::decode(body, encoding)
}

/// `map` for signals mapped from prost's messages: limits first, then the rows.
fn limit_then_map<M: Limitable>(
    mut request: M,
    limits: &Limits,
    map: impl FnOnce(&M) -> Mapped,
) -> (Mapped, Report) {
    let report = limits::apply(&mut request, limits);
    (map(&request), report)
}

/// `message` with `note` appended, `; `-separated.
fn with_note(message: &mut String, note: &str) {
    if !message.is_empty() {
        message.push_str("; ");
    }
    message.push_str(note);
}

/// The outcome of mapping one request.
#[derive(Debug, Default)]
pub struct Mapped {
    pub parts: Vec<TablePart>,
    pub accepted: u64,
    pub rejected: u64,
    /// Why the first rejected item was rejected (and how many were), and notes
    /// such as items whose times were clamped; sent as `partial_success`.
    pub error_message: String,
}

/// Collects encoded rows per table while a request is mapped.
struct Output {
    tables: Vec<(u32, Vec<u8>)>,
    accepted: u64,
    rejected: u64,
    first_error: Option<String>,
    /// Items whose times were moved into the accepted window.
    clamped: time_window::Clamped,
}

impl Output {
    fn new() -> Self {
        Output {
            tables: ALL_TABLES.iter().map(|_| (0, Vec::new())).collect(),
            accepted: 0,
            rejected: 0,
            first_error: None,
            clamped: time_window::Clamped::default(),
        }
    }

    fn push<R: Row>(&mut self, table: TableId, row: &R) {
        row.encode(self.row(table));
    }

    /// The buffer the next row of `table` is to be encoded into, counted as accepted.
    fn row(&mut self, table: TableId) -> &mut Vec<u8> {
        let (rows, buf) = &mut self.tables[table as usize];
        *rows += 1;
        self.accepted += 1;
        buf
    }

    fn reject(&mut self, why: impl FnOnce() -> String) {
        self.rejected += 1;
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }

    fn finish(self, items: &str) -> Mapped {
        let parts = self
            .tables
            .into_iter()
            .zip(ALL_TABLES)
            .filter(|((rows, _), _)| *rows > 0)
            .map(|((rows, data), t)| TablePart::compress(t.id, rows, &data))
            .collect();
        let mut error_message = match self.first_error {
            Some(e) => format!("{} {items} rejected; first: {e}", self.rejected),
            None => String::new(),
        };
        if let Some(note) = self.clamped.note(items) {
            with_note(&mut error_message, &note);
        }
        Mapped {
            parts,
            accepted: self.accepted,
            rejected: self.rejected,
            error_message,
        }
    }
}

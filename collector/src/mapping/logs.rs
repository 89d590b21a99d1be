use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::logs::v1::LogRecord;

use super::attributes::{service_name, to_map, value_to_string};
use super::ids::{hex, nanos, optional_span_id, optional_trace_id};
use bytes::Bytes;

use super::limits::{Limitable, Limits, Report};
use super::{decode_message, limit_then_map, Mapped, Output, Signal};
use crate::otlp::{Encoding, IngestError};
use crate::schema::{LogRow, TableId};

pub struct Logs;

impl Signal for Logs {
    const NAME: &'static str = "logs";
    const ITEMS: &'static str = "log records";
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;

    fn decode(body: Bytes, encoding: Encoding) -> Result<Self::Request, IngestError> {
        decode_message(&body, encoding)
    }

    fn items(request: &Self::Request) -> u64 {
        request.items()
    }

    fn map(mut request: Self::Request, limits: &Limits) -> Result<(Mapped, Report), IngestError> {
        let outside = super::time_window::logs(&mut request, &limits.timestamps.bounds_now());
        let (mut mapped, report) = limit_then_map(request, limits, rows);
        outside.fold_into(&mut mapped, Self::ITEMS);
        Ok((mapped, report))
    }

    fn response(mapped: &Mapped) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: (mapped.rejected > 0 || !mapped.error_message.is_empty()).then(|| {
                ExportLogsPartialSuccess {
                    rejected_log_records: mapped.rejected as i64,
                    error_message: mapped.error_message.clone(),
                }
            }),
        }
    }

    fn add_note(response: &mut Self::Response, note: &str) {
        let partial = response
            .partial_success
            .get_or_insert_with(ExportLogsPartialSuccess::default);
        super::with_note(&mut partial.error_message, note);
    }
}

/// The record's own time, or when it was observed if the source gave none.
fn timestamp(record: &LogRecord) -> u64 {
    if record.time_unix_nano != 0 {
        record.time_unix_nano
    } else {
        record.observed_time_unix_nano
    }
}

fn check_ids(record: &LogRecord) -> Result<(), String> {
    if !optional_trace_id(&record.trace_id) {
        return Err(format!(
            "trace_id must be empty or 16 bytes, got {}",
            record.trace_id.len()
        ));
    }
    if !optional_span_id(&record.span_id) {
        return Err(format!(
            "span_id must be empty or 8 bytes, got {}",
            record.span_id.len()
        ));
    }
    Ok(())
}

/// The rows of a request whose limits were applied.
fn rows(request: &ExportLogsServiceRequest) -> Mapped {
    let mut out = Output::new();
    for rl in &request.resource_logs {
        let resource_attributes = to_map(rl.resource.as_ref().map_or(&[][..], |r| &r.attributes));
        let service = service_name(&resource_attributes);
        for sl in &rl.scope_logs {
            let scope = sl.scope.clone().unwrap_or_default();
            let scope_attributes = to_map(&scope.attributes);
            for record in &sl.log_records {
                if let Err(why) = check_ids(record) {
                    out.reject(|| why);
                    continue;
                }
                let row = LogRow {
                    timestamp: nanos(timestamp(record)),
                    trace_id: hex(&record.trace_id),
                    span_id: hex(&record.span_id),
                    trace_flags: (record.flags & 0xff) as u8,
                    severity_text: record.severity_text.clone(),
                    severity_number: u8::try_from(record.severity_number).unwrap_or(0),
                    service_name: service.clone(),
                    body: value_to_string(record.body.as_ref()),
                    resource_schema_url: rl.schema_url.clone(),
                    resource_attributes: resource_attributes.clone(),
                    scope_schema_url: sl.schema_url.clone(),
                    scope_name: scope.name.clone(),
                    scope_version: scope.version.clone(),
                    scope_attributes: scope_attributes.clone(),
                    log_attributes: to_map(&record.attributes),
                    event_name: record.event_name.clone(),
                };
                out.push(TableId::Logs, &row);
            }
        }
    }
    out.finish(<Logs as Signal>::ITEMS)
}

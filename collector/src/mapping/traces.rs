use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;

use super::attributes::{service_name, to_map};
use super::ids::{hex, nanos, optional_span_id, valid_span_id, valid_trace_id};
use super::{Mapped, Output, Signal};
use crate::schema::rowbinary::Map;
use crate::schema::{SpanRow, TableId};

pub struct Traces;

impl Signal for Traces {
    const NAME: &'static str = "traces";
    const ITEMS: &'static str = "spans";
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;

    fn map(request: &Self::Request) -> Mapped {
        let mut out = Output::new();
        for rs in &request.resource_spans {
            let resource_attributes =
                to_map(rs.resource.as_ref().map_or(&[][..], |r| &r.attributes));
            let service = service_name(&resource_attributes);
            for ss in &rs.scope_spans {
                let (scope_name, scope_version) = ss
                    .scope
                    .as_ref()
                    .map(|s| (s.name.as_str(), s.version.as_str()))
                    .unwrap_or_default();
                for span in &ss.spans {
                    if let Err(why) = check_ids(span) {
                        out.reject(|| why);
                        continue;
                    }
                    let row = span_row(
                        span,
                        &resource_attributes,
                        &service,
                        scope_name,
                        scope_version,
                    );
                    out.push(TableId::Traces, &row);
                }
            }
        }
        out.finish(Self::ITEMS)
    }

    fn response(mapped: &Mapped) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: (mapped.rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: mapped.rejected as i64,
                error_message: mapped.error_message.clone(),
            }),
        }
    }

    fn add_note(response: &mut Self::Response, note: &str) {
        let partial = response
            .partial_success
            .get_or_insert_with(ExportTracePartialSuccess::default);
        super::with_note(&mut partial.error_message, note);
    }
}

fn check_ids(span: &Span) -> Result<(), String> {
    if !valid_trace_id(&span.trace_id) {
        return Err(format!(
            "span {:?}: trace_id must be 16 non-zero bytes, got {}",
            span.name,
            span.trace_id.len()
        ));
    }
    if !valid_span_id(&span.span_id) {
        return Err(format!(
            "span {:?}: span_id must be 8 non-zero bytes, got {}",
            span.name,
            span.span_id.len()
        ));
    }
    if !optional_span_id(&span.parent_span_id) {
        return Err(format!(
            "span {:?}: parent_span_id must be empty or 8 bytes, got {}",
            span.name,
            span.parent_span_id.len()
        ));
    }
    for link in &span.links {
        if !valid_trace_id(&link.trace_id) || !valid_span_id(&link.span_id) {
            return Err(format!(
                "span {:?}: a link has an invalid trace_id or span_id",
                span.name
            ));
        }
    }
    Ok(())
}

fn span_kind(kind: i32) -> &'static str {
    match kind {
        1 => "Internal",
        2 => "Server",
        3 => "Client",
        4 => "Producer",
        5 => "Consumer",
        _ => "Unspecified",
    }
}

fn status_code(code: i32) -> &'static str {
    match code {
        1 => "Ok",
        2 => "Error",
        _ => "Unset",
    }
}

fn span_row(
    span: &Span,
    resource_attributes: &Map,
    service: &str,
    scope_name: &str,
    scope_version: &str,
) -> SpanRow {
    let status = span.status.as_ref();
    SpanRow {
        timestamp: nanos(span.start_time_unix_nano),
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        parent_span_id: hex(&span.parent_span_id),
        trace_state: span.trace_state.clone(),
        span_name: span.name.clone(),
        span_kind: span_kind(span.kind).into(),
        service_name: service.into(),
        resource_attributes: resource_attributes.clone(),
        scope_name: scope_name.into(),
        scope_version: scope_version.into(),
        span_attributes: to_map(&span.attributes),
        duration: span
            .end_time_unix_nano
            .saturating_sub(span.start_time_unix_nano),
        status_code: status_code(status.map_or(0, |s| s.code)).into(),
        status_message: status.map(|s| s.message.clone()).unwrap_or_default(),
        events_timestamp: span
            .events
            .iter()
            .map(|e| nanos(e.time_unix_nano))
            .collect(),
        events_name: span.events.iter().map(|e| e.name.clone()).collect(),
        events_attributes: span.events.iter().map(|e| to_map(&e.attributes)).collect(),
        links_trace_id: span.links.iter().map(|l| hex(&l.trace_id)).collect(),
        links_span_id: span.links.iter().map(|l| hex(&l.span_id)).collect(),
        links_trace_state: span.links.iter().map(|l| l.trace_state.clone()).collect(),
        links_attributes: span.links.iter().map(|l| to_map(&l.attributes)).collect(),
    }
}

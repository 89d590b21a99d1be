//! Spans → `otel_traces` rows, encoded straight from the protobuf bytes.
//!
//! Traces are most of the traffic, so they skip prost's decoded messages (a String
//! or Vec per field, freed right after) and the row struct: one pass over the
//! request body reads each span in place, applies the attribute limits, and writes
//! the RowBinary columns in [`SpanRow`]'s order. Resource attributes are encoded
//! once per resource and copied into each of its rows. The only allocations are a
//! few scratch vectors per request and, rarely, arrays and kvlists (rendered as JSON
//! through prost's types). The tests check byte for byte that this is what
//! `SpanRow::encode` writes for the same request mapped field by field.
//!
//! [`SpanRow`]: crate::schema::SpanRow

use std::fmt::Write as _;

use base64::Engine as _;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::AnyValue;
use prost::Message;

use super::attributes::value_to_string;
use super::ids::{nanos, optional_span_id, valid_span_id, valid_trace_id};
use super::limits::{Limits, Pass, Report};
use super::time_window::{Bounds, Verdict};
use super::wire::{Fields, WireError};
use super::{Mapped, Output, Signal};
use crate::otlp::{Encoding, IngestError};
use crate::schema::rowbinary::{write_str, write_varint, RowBinary};
use crate::schema::TableId;

pub struct Traces;

/// An `ExportTraceServiceRequest` in protobuf, with its spans counted.
pub struct TracesRequest {
    body: Bytes,
    spans: u64,
}

impl Signal for Traces {
    const NAME: &'static str = "traces";
    const ITEMS: &'static str = "spans";
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    type Request = TracesRequest;
    type Response = ExportTraceServiceResponse;

    fn decode(body: Bytes, encoding: Encoding) -> Result<TracesRequest, IngestError> {
        let body = match encoding {
            Encoding::Protobuf => body,
            // JSON is decoded by prost's types and mapped like protobuf: one mapping.
            Encoding::Json => {
                let request: ExportTraceServiceRequest = crate::otlp::decode(&body, encoding)?;
                request.encode_to_vec().into()
            }
        };
        let spans = count_spans(&body).map_err(malformed)?;
        Ok(TracesRequest { body, spans })
    }

    fn items(request: &TracesRequest) -> u64 {
        request.spans
    }

    fn map(request: TracesRequest, limits: &Limits) -> Result<(Mapped, Report), IngestError> {
        let mut mapper = Mapper::new(limits);
        mapper.request(&request.body).map_err(malformed)?;
        let report = mapper.pass.report();
        Ok((mapper.out.finish(Self::ITEMS), report))
    }

    fn response(mapped: &Mapped) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: (mapped.rejected > 0 || !mapped.error_message.is_empty()).then(|| {
                ExportTracePartialSuccess {
                    rejected_spans: mapped.rejected as i64,
                    error_message: mapped.error_message.clone(),
                }
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

fn malformed(e: WireError) -> IngestError {
    IngestError::Malformed(format!("invalid protobuf message: {e}"))
}

/// Spans in the request; checks the framing of the levels above them.
fn count_spans(body: &[u8]) -> Result<u64, WireError> {
    let mut spans = 0;
    let mut request = Fields::new(body);
    while let Some((n, v)) = request.next_field()? {
        if n != 1 {
            continue;
        }
        let mut rs = Fields::new(v.bytes("resource_spans")?);
        while let Some((n, v)) = rs.next_field()? {
            if n != 2 {
                continue;
            }
            let mut ss = Fields::new(v.bytes("scope_spans")?);
            while let Some((n, v)) = ss.next_field()? {
                if n == 2 {
                    v.bytes("spans")?;
                    spans += 1;
                }
            }
        }
    }
    Ok(spans)
}

/// An attribute value as read, before it is rendered as the map's string.
#[derive(Debug, Clone, Copy)]
enum Attr<'a> {
    Absent,
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    /// Arrays, kvlists and values split over several fields: rendered at once into
    /// `Mapper::rendered`.
    Rendered(usize),
}

/// A span's scalar fields, read in place.
#[derive(Default)]
struct SpanFields<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    parent_span_id: &'a [u8],
    trace_state: &'a str,
    name: &'a str,
    kind: i32,
    start: u64,
    end: u64,
    status_code: i32,
    status_message: &'a str,
}

struct EventFields<'a> {
    time: u64,
    name: &'a str,
    attributes: std::ops::Range<usize>,
}

struct LinkFields<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    trace_state: &'a str,
    attributes: std::ops::Range<usize>,
}

type Attrs<'a> = Vec<(&'a str, Attr<'a>)>;

struct Mapper<'l, 'a> {
    /// The accepted times for this request.
    window: Bounds,
    pass: Pass<'l>,
    out: Output,
    /// The list being read: the resource's, the scope's, or the span's own.
    attrs: Attrs<'a>,
    /// The span's events' and links' lists, each a range.
    nested: Attrs<'a>,
    rendered: Vec<String>,
    events: Vec<EventFields<'a>>,
    links: Vec<LinkFields<'a>>,
    /// The resource's `ResourceAttributes` map, encoded once for all its spans.
    resource_map: Vec<u8>,
    service_name: String,
    text: String,
}

impl<'l, 'a> Mapper<'l, 'a> {
    fn new(limits: &'l Limits) -> Self {
        Mapper {
            window: limits.timestamps.bounds_now(),
            pass: Pass::new(limits),
            out: Output::new(),
            attrs: Vec::new(),
            nested: Vec::new(),
            rendered: Vec::new(),
            events: Vec::new(),
            links: Vec::new(),
            resource_map: Vec::new(),
            service_name: String::new(),
            text: String::new(),
        }
    }

    fn request(&mut self, body: &'a [u8]) -> Result<(), WireError> {
        let mut f = Fields::new(body);
        while let Some((n, v)) = f.next_field()? {
            if n == 1 {
                self.resource_spans(v.bytes("resource_spans")?)?;
            }
        }
        Ok(())
    }

    fn resource_spans(&mut self, body: &'a [u8]) -> Result<(), WireError> {
        // The resource comes first in the encoded row; it may follow its spans on
        // the wire, and a repeated singular message is the merge of its copies.
        self.attrs.clear();
        self.rendered.clear();
        let mut f = Fields::new(body);
        let mut index = 0;
        while let Some((n, v)) = f.next_field()? {
            match n {
                1 => self.resource(v.bytes("resource")?, &mut index)?,
                3 => {
                    v.str("schema_url")?;
                }
                _ => {}
            }
        }
        let kept = normalize(&mut self.attrs);
        self.resource_map.clear();
        self.service_name.clear();
        write_varint(kept as u64, &mut self.resource_map);
        for &(key, value) in &self.attrs[..kept] {
            write_str(key, &mut self.resource_map);
            self.text.clear();
            render(value, &self.rendered, &mut self.text);
            write_str(&self.text, &mut self.resource_map);
            if key == "service.name" {
                self.service_name.clone_from(&self.text);
            }
        }
        let mut f = Fields::new(body);
        while let Some((n, v)) = f.next_field()? {
            if n == 2 {
                self.scope_spans(v.bytes("scope_spans")?)?;
            }
        }
        Ok(())
    }

    fn resource(&mut self, body: &'a [u8], index: &mut usize) -> Result<(), WireError> {
        let mut f = Fields::new(body);
        while let Some((n, v)) = f.next_field()? {
            match n {
                1 => {
                    self.attribute(v.bytes("attributes")?, *index, false)?;
                    *index += 1;
                }
                2 => {
                    v.varint("dropped_attributes_count")?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn scope_spans(&mut self, body: &'a [u8]) -> Result<(), WireError> {
        let (mut name, mut version) = ("", "");
        self.attrs.clear();
        let mut f = Fields::new(body);
        let mut scope_attr = 0;
        while let Some((n, v)) = f.next_field()? {
            match n {
                1 => {
                    let mut s = Fields::new(v.bytes("scope")?);
                    while let Some((n, v)) = s.next_field()? {
                        match n {
                            1 => name = v.str("scope.name")?,
                            2 => version = v.str("scope.version")?,
                            // Not stored for spans, but limited (and counted) as before.
                            3 => {
                                self.attribute(v.bytes("scope.attributes")?, scope_attr, false)?;
                                scope_attr += 1;
                            }
                            4 => {
                                v.varint("scope.dropped_attributes_count")?;
                            }
                            _ => {}
                        }
                    }
                }
                3 => {
                    v.str("schema_url")?;
                }
                _ => {}
            }
        }
        let mut f = Fields::new(body);
        while let Some((n, v)) = f.next_field()? {
            if n == 2 {
                self.span(v.bytes("span")?, name, version)?;
            }
        }
        Ok(())
    }

    fn span(
        &mut self,
        body: &'a [u8],
        scope_name: &str,
        scope_version: &str,
    ) -> Result<(), WireError> {
        self.attrs.clear();
        self.nested.clear();
        self.rendered.clear();
        self.events.clear();
        self.links.clear();
        let mut s = SpanFields::default();
        let mut attr = 0;
        let mut f = Fields::new(body);
        while let Some((n, v)) = f.next_field()? {
            match n {
                1 => s.trace_id = v.bytes("trace_id")?,
                2 => s.span_id = v.bytes("span_id")?,
                3 => s.trace_state = v.str("trace_state")?,
                4 => s.parent_span_id = v.bytes("parent_span_id")?,
                5 => s.name = v.str("name")?,
                6 => s.kind = v.varint("kind")? as i32,
                7 => s.start = v.fixed64("start_time_unix_nano")?,
                8 => s.end = v.fixed64("end_time_unix_nano")?,
                9 => {
                    self.attribute(v.bytes("attributes")?, attr, false)?;
                    attr += 1;
                }
                11 => self.event(v.bytes("events")?)?,
                13 => self.link(v.bytes("links")?)?,
                15 => {
                    let mut st = Fields::new(v.bytes("status")?);
                    while let Some((n, v)) = st.next_field()? {
                        match n {
                            2 => s.status_message = v.str("status.message")?,
                            3 => s.status_code = v.varint("status.code")? as i32,
                            _ => {}
                        }
                    }
                }
                10 | 12 | 14 => {
                    v.varint("dropped count")?;
                }
                16 => {
                    v.fixed32("flags")?;
                }
                _ => {}
            }
        }
        if let Err(why) = check_ids(&s, &self.links) {
            self.out.reject(|| why);
            return Ok(());
        }
        match self.window.check(s.start) {
            Verdict::Inside => {}
            Verdict::Outside { clamped: None } => {
                let why = self.window.reason("span start_time_unix_nano", s.start);
                self.out.reject(|| why);
                return Ok(());
            }
            Verdict::Outside {
                clamped: Some(start),
            } => {
                // The span keeps its duration.
                s.end = start.saturating_add(s.end.saturating_sub(s.start));
                s.start = start;
                self.out.clamped.0 += 1;
            }
        }
        self.write_row(&s, scope_name, scope_version);
        Ok(())
    }

    fn event(&mut self, body: &'a [u8]) -> Result<(), WireError> {
        let (mut time, mut name) = (0, "");
        let start = self.nested.len();
        let mut attr = 0;
        let mut f = Fields::new(body);
        while let Some((n, v)) = f.next_field()? {
            match n {
                1 => time = v.fixed64("event.time_unix_nano")?,
                2 => name = v.str("event.name")?,
                3 => {
                    self.attribute(v.bytes("event.attributes")?, attr, true)?;
                    attr += 1;
                }
                4 => {
                    v.varint("event.dropped_attributes_count")?;
                }
                _ => {}
            }
        }
        self.events.push(EventFields {
            time,
            name,
            attributes: start..self.nested.len(),
        });
        Ok(())
    }

    fn link(&mut self, body: &'a [u8]) -> Result<(), WireError> {
        let mut l = LinkFields {
            trace_id: &[],
            span_id: &[],
            trace_state: "",
            attributes: 0..0,
        };
        let start = self.nested.len();
        let mut attr = 0;
        let mut f = Fields::new(body);
        while let Some((n, v)) = f.next_field()? {
            match n {
                1 => l.trace_id = v.bytes("link.trace_id")?,
                2 => l.span_id = v.bytes("link.span_id")?,
                3 => l.trace_state = v.str("link.trace_state")?,
                4 => {
                    self.attribute(v.bytes("link.attributes")?, attr, true)?;
                    attr += 1;
                }
                5 => {
                    v.varint("link.dropped_attributes_count")?;
                }
                6 => {
                    v.fixed32("link.flags")?;
                }
                _ => {}
            }
        }
        l.attributes = start..self.nested.len();
        self.links.push(l);
        Ok(())
    }

    /// Reads one `KeyValue`, the `index`th of its list; kept ones are limited and
    /// pushed onto `attrs` (or `nested`), the rest only checked.
    fn attribute(&mut self, body: &'a [u8], index: usize, nested: bool) -> Result<(), WireError> {
        let mut key = "";
        let mut values: (Option<&'a [u8]>, usize) = (None, 0);
        let mut f = Fields::new(body);
        while let Some((n, v)) = f.next_field()? {
            match n {
                1 => key = v.str("key")?,
                2 => {
                    values = (Some(v.bytes("value")?), values.1 + 1);
                }
                3 => {
                    v.varint("key_strindex")?;
                }
                _ => {}
            }
        }
        let keep = self.pass.admit(index);
        let value = match values {
            (None, _) => Attr::Absent,
            (Some(v), 1) => self.any_value(v, keep)?,
            // A message split over several fields is their merge, which is what
            // decoding the fields one after the other into one message gives.
            (Some(_), _) => self.merged_value(body, keep)?,
        };
        if keep {
            let key = self.pass.cut(key);
            if nested {
                self.nested.push((key, value));
            } else {
                self.attrs.push((key, value));
            }
        }
        Ok(())
    }

    fn any_value(&mut self, body: &'a [u8], keep: bool) -> Result<Attr<'a>, WireError> {
        let mut value = Attr::Absent;
        let mut f = Fields::new(body);
        while let Some((n, v)) = f.next_field()? {
            value = match n {
                1 => Attr::Str(v.str("string_value")?),
                2 => Attr::Bool(v.varint("bool_value")? != 0),
                3 => Attr::Int(v.varint("int_value")? as i64),
                4 => Attr::Double(f64::from_bits(v.fixed64("double_value")?)),
                5 | 6 => return self.composite(body, keep),
                7 => Attr::Bytes(v.bytes("bytes_value")?),
                8 => {
                    v.varint("string_value_strindex")?;
                    Attr::Absent
                }
                _ => value,
            };
        }
        if !keep {
            return Ok(value);
        }
        Ok(match value {
            Attr::Str(s) => Attr::Str(self.pass.cut(s)),
            Attr::Bytes(b) => Attr::Bytes(self.pass.cut_bytes(b)),
            other => other,
        })
    }

    /// Arrays and kvlists: prost's types, the limits' own walk, the exporter's JSON.
    fn composite(&mut self, body: &[u8], keep: bool) -> Result<Attr<'a>, WireError> {
        let mut value = AnyValue::decode(body).map_err(|e| WireError(e.to_string()))?;
        if !keep {
            return Ok(Attr::Absent);
        }
        self.pass.value(&mut value);
        self.rendered.push(value_to_string(Some(&value)));
        Ok(Attr::Rendered(self.rendered.len() - 1))
    }

    fn merged_value(&mut self, key_value: &[u8], keep: bool) -> Result<Attr<'a>, WireError> {
        let kv = opentelemetry_proto::tonic::common::v1::KeyValue::decode(key_value)
            .map_err(|e| WireError(e.to_string()))?;
        let mut value = kv.value.unwrap_or_default();
        if !keep {
            return Ok(Attr::Absent);
        }
        self.pass.value(&mut value);
        self.rendered.push(value_to_string(Some(&value)));
        Ok(Attr::Rendered(self.rendered.len() - 1))
    }

    /// The columns of `otel_traces`, in `SpanRow`'s order.
    fn write_row(&mut self, s: &SpanFields<'a>, scope_name: &str, scope_version: &str) {
        let Mapper {
            out,
            attrs,
            nested,
            rendered,
            events,
            links,
            resource_map,
            service_name,
            text,
            ..
        } = self;
        let out = out.row(TableId::Traces);
        nanos(s.start).write(out);
        write_hex(s.trace_id, out);
        write_hex(s.span_id, out);
        write_hex(s.parent_span_id, out);
        write_str(s.trace_state, out);
        write_str(s.name, out);
        write_str(span_kind(s.kind), out);
        write_str(service_name, out);
        out.extend_from_slice(resource_map);
        write_str(scope_name, out);
        write_str(scope_version, out);
        write_map(attrs, rendered, text, out);
        s.end.saturating_sub(s.start).write(out);
        write_str(status_code(s.status_code), out);
        write_str(s.status_message, out);
        write_varint(events.len() as u64, out);
        for e in events.iter() {
            nanos(e.time).write(out);
        }
        write_varint(events.len() as u64, out);
        for e in events.iter() {
            write_str(e.name, out);
        }
        write_varint(events.len() as u64, out);
        for e in events.iter() {
            write_map(&mut nested[e.attributes.clone()], rendered, text, out);
        }
        write_varint(links.len() as u64, out);
        for l in links.iter() {
            write_hex(l.trace_id, out);
        }
        write_varint(links.len() as u64, out);
        for l in links.iter() {
            write_hex(l.span_id, out);
        }
        write_varint(links.len() as u64, out);
        for l in links.iter() {
            write_str(l.trace_state, out);
        }
        write_varint(links.len() as u64, out);
        for l in links.iter() {
            write_map(&mut nested[l.attributes.clone()], rendered, text, out);
        }
    }
}

/// Sorts a list by key in place, keeping the last of repeated keys at the front;
/// returns how many remain.
fn normalize(list: &mut [(&str, Attr<'_>)]) -> usize {
    // Stable: among equal keys the input order stays, so the last is the winner.
    list.sort_by(|a, b| a.0.cmp(b.0));
    let mut kept = 0;
    for i in 0..list.len() {
        if i + 1 < list.len() && list[i].0 == list[i + 1].0 {
            continue;
        }
        list[kept] = list[i];
        kept += 1;
    }
    kept
}

/// An attribute list as a `Map(LowCardinality(String), String)`.
fn write_map(
    list: &mut [(&str, Attr<'_>)],
    rendered: &[String],
    text: &mut String,
    out: &mut Vec<u8>,
) {
    let kept = normalize(list);
    write_varint(kept as u64, out);
    for &(key, value) in &list[..kept] {
        write_str(key, out);
        match value {
            Attr::Str(s) => write_str(s, out),
            Attr::Int(i) => write_str(itoa::Buffer::new().format(i), out),
            other => {
                text.clear();
                render(other, rendered, text);
                write_str(text, out);
            }
        }
    }
}

/// A non-string value as the map stores it (see `attributes::value_to_string`).
fn render(value: Attr<'_>, rendered: &[String], out: &mut String) {
    match value {
        Attr::Absent => {}
        Attr::Str(s) => out.push_str(s),
        Attr::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        Attr::Int(i) => out.push_str(itoa::Buffer::new().format(i)),
        Attr::Double(d) => {
            if d.is_nan() {
                out.push_str("NaN");
            } else if d.is_infinite() {
                out.push_str(if d > 0.0 { "+Inf" } else { "-Inf" });
            } else {
                let _ = write!(out, "{d}");
            }
        }
        Attr::Bytes(b) => base64::engine::general_purpose::STANDARD.encode_string(b, out),
        Attr::Rendered(i) => out.push_str(&rendered[i]),
    }
}

/// Lowercase hex as a RowBinary string, without a temporary String.
fn write_hex(bytes: &[u8], out: &mut Vec<u8>) {
    write_varint(2 * bytes.len() as u64, out);
    let start = out.len();
    out.resize(start + 2 * bytes.len(), 0);
    const_hex::encode_to_slice(bytes, &mut out[start..]).expect("sized for the hex");
}

fn check_ids(span: &SpanFields<'_>, links: &[LinkFields<'_>]) -> Result<(), String> {
    if !valid_trace_id(span.trace_id) {
        return Err(format!(
            "span {:?}: trace_id must be 16 non-zero bytes, got {}",
            span.name,
            span.trace_id.len()
        ));
    }
    if !valid_span_id(span.span_id) {
        return Err(format!(
            "span {:?}: span_id must be 8 non-zero bytes, got {}",
            span.name,
            span.span_id.len()
        ));
    }
    if !optional_span_id(span.parent_span_id) {
        return Err(format!(
            "span {:?}: parent_span_id must be empty or 8 bytes, got {}",
            span.name,
            span.parent_span_id.len()
        ));
    }
    for link in links {
        if !valid_trace_id(link.trace_id) || !valid_span_id(link.span_id) {
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

#[cfg(test)]
mod tests {
    //! The reference: spans mapped field by field into `SpanRow`, the layout's
    //! declaration, after the limits' walk over prost's decoded request. The wire
    //! mapper must produce the same bytes, the same rejections and the same report.

    use super::*;
    use crate::mapping::attributes::{service_name, to_map};
    use crate::mapping::ids::hex;
    use crate::mapping::limits;
    use crate::schema::rowbinary::Map;
    use crate::schema::SpanRow;
    use opentelemetry_proto::tonic::common::v1::{
        any_value, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};

    fn reference(request: &ExportTraceServiceRequest) -> Mapped {
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
                    let fields = SpanFields {
                        trace_id: &span.trace_id,
                        span_id: &span.span_id,
                        parent_span_id: &span.parent_span_id,
                        name: &span.name,
                        ..Default::default()
                    };
                    let links: Vec<LinkFields> = span
                        .links
                        .iter()
                        .map(|l| LinkFields {
                            trace_id: &l.trace_id,
                            span_id: &l.span_id,
                            trace_state: "",
                            attributes: 0..0,
                        })
                        .collect();
                    if let Err(why) = check_ids(&fields, &links) {
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
        out.finish(Traces::ITEMS)
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

    fn raw(m: &Mapped) -> Vec<(TableId, u32, Vec<u8>)> {
        m.parts
            .iter()
            .map(|p| (p.table, p.rows, crate::part::decompress(&p.data).unwrap()))
            .collect()
    }

    /// Maps `request` both ways under `limits` and requires the same outcome.
    fn same(request: &ExportTraceServiceRequest, limits: &Limits) {
        let body = Bytes::from(request.encode_to_vec());
        let decoded = Traces::decode(body, Encoding::Protobuf).unwrap();
        assert_eq!(
            Traces::items(&decoded),
            limits::Limitable::items(request),
            "span count"
        );
        let (mapped, report) = Traces::map(decoded, limits).unwrap();
        let mut limited = request.clone();
        let want_report = limits::apply(&mut limited, limits);
        let want = reference(&limited);
        assert_eq!(raw(&mapped), raw(&want));
        assert_eq!(
            (mapped.accepted, mapped.rejected, &mapped.error_message),
            (want.accepted, want.rejected, &want.error_message)
        );
        assert_eq!(report, want_report);
        // JSON goes through prost's types, then the same wire mapper.
        let json = serde_json::to_vec(request).unwrap();
        let mut via_json: ExportTraceServiceRequest = serde_json::from_slice(&json).unwrap();
        let (from_json, _) =
            Traces::map(Traces::decode(json.into(), Encoding::Json).unwrap(), limits).unwrap();
        limits::apply(&mut via_json, limits);
        assert_eq!(raw(&from_json), raw(&reference(&via_json)));
    }

    fn no_limits() -> Limits {
        Limits::NONE
    }

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    fn rich() -> ExportTraceServiceRequest {
        let kvlist = any_value::Value::KvlistValue(KeyValueList {
            values: vec![
                kv("x", any_value::Value::BoolValue(true)),
                kv(
                    "deep",
                    any_value::Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(any_value::Value::KvlistValue(KeyValueList {
                                values: vec![kv("y", any_value::Value::DoubleValue(0.5))],
                            })),
                        }],
                    }),
                ),
            ],
        });
        let span = Span {
            trace_id: vec![7; 16],
            span_id: vec![8; 8],
            parent_span_id: vec![9; 8],
            trace_state: "k=v".into(),
            name: "GET /x".into(),
            kind: 5,
            start_time_unix_nano: 1_700_000_000_000_000_001,
            end_time_unix_nano: 1_700_000_000_000_000_900,
            attributes: vec![
                kv("z", s("last-but-one")),
                kv("a", any_value::Value::IntValue(-42)),
                kv("d", any_value::Value::DoubleValue(f64::INFINITY)),
                kv("d2", any_value::Value::DoubleValue(1e21)),
                kv("b", any_value::Value::BytesValue(vec![0, 1, 2, 250])),
                kv("kv", kvlist),
                kv("z", s("winner, a long value past the limit")),
                KeyValue {
                    key: "absent".into(),
                    value: None,
                    ..Default::default()
                },
                kv("élan", s("ééééé")),
            ],
            events: vec![
                span::Event {
                    time_unix_nano: 5,
                    name: "exception".into(),
                    attributes: vec![kv("m", s("boom")), kv("c", any_value::Value::IntValue(3))],
                    ..Default::default()
                },
                span::Event {
                    name: "empty".into(),
                    ..Default::default()
                },
            ],
            links: vec![span::Link {
                trace_id: vec![1; 16],
                span_id: vec![2; 8],
                trace_state: "t=1".into(),
                attributes: vec![kv("link.kind", s("follows"))],
                ..Default::default()
            }],
            status: Some(Status {
                message: "bad".into(),
                code: 2,
            }),
            ..Default::default()
        };
        let invalid = Span {
            trace_id: vec![0; 16],
            span_id: vec![1; 8],
            name: "zero trace".into(),
            attributes: vec![kv("will", s("be counted by the limits"))],
            ..Default::default()
        };
        let bad_link = Span {
            links: vec![span::Link::default()],
            ..span.clone()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![
                            kv("service.name", s("api")),
                            kv("host.name", s("h1")),
                            kv("service.name", s("api-2")),
                        ],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "lib".into(),
                            version: "1.0".into(),
                            attributes: vec![kv("scope.attr", s("x")); 4],
                            ..Default::default()
                        }),
                        spans: vec![span.clone(), invalid, bad_link, span.clone()],
                        ..Default::default()
                    }],
                    schema_url: "https://x".into(),
                },
                ResourceSpans {
                    resource: None,
                    scope_spans: vec![
                        ScopeSpans {
                            scope: None,
                            spans: vec![span],
                            ..Default::default()
                        },
                        ScopeSpans::default(),
                    ],
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn the_wire_mapper_writes_what_span_row_writes() {
        same(&rich(), &no_limits());
        same(&ExportTraceServiceRequest::default(), &no_limits());
        same(
            &testkit::synthetic::traces_request(3, 4, 120, 1_700_000_000_000_000_000),
            &Limits {
                timestamps: crate::mapping::TimestampWindow::OFF,
                ..crate::receivers::ReceiversConfig::default().limits()
            },
        );
    }

    #[test]
    fn spans_outside_the_time_window_are_rejected_or_clamped_with_a_note() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let mut request = testkit::synthetic::traces_request(0, 0, 3, now);
        let spans = &mut request.resource_spans[0].scope_spans[0].spans;
        // 60 days old and a day ahead, against the default 30 days / 1 hour.
        spans[1].start_time_unix_nano = now - 60 * 86_400_000_000_000;
        spans[1].end_time_unix_nano = spans[1].start_time_unix_nano + 5;
        spans[2].start_time_unix_nano = now + 86_400_000_000_000;
        spans[2].end_time_unix_nano = spans[2].start_time_unix_nano + 5;
        let body = || Bytes::from(request.encode_to_vec());
        let mut limits = crate::receivers::ReceiversConfig::default().limits();
        let decoded = Traces::decode(body(), Encoding::Protobuf).unwrap();
        let (mapped, _) = Traces::map(decoded, &limits).unwrap();
        assert_eq!((mapped.accepted, mapped.rejected), (1, 2));
        let response = Traces::response(&mapped);
        let partial = response.partial_success.unwrap();
        assert_eq!(partial.rejected_spans, 2);
        assert!(
            partial
                .error_message
                .contains("outside the accepted window"),
            "{}",
            partial.error_message
        );

        limits.timestamps.action = crate::mapping::OutOfWindow::Clamp;
        let decoded = Traces::decode(body(), Encoding::Protobuf).unwrap();
        let (mapped, _) = Traces::map(decoded, &limits).unwrap();
        assert_eq!((mapped.accepted, mapped.rejected), (3, 0));
        let partial = Traces::response(&mapped).partial_success.unwrap();
        assert_eq!(partial.rejected_spans, 0);
        assert!(
            partial
                .error_message
                .starts_with("2 spans had times outside the accepted window"),
            "{}",
            partial.error_message
        );
    }

    #[test]
    fn limits_are_applied_and_reported_as_the_walk_does() {
        for (attrs, bytes, depth) in [(2, 4, 2), (3, 1000, 1), (100, 3, 100), (1, 1, 1)] {
            let limits = Limits {
                max_items: u64::MAX,
                max_attributes: attrs,
                max_value_bytes: bytes,
                max_depth: depth,
                timestamps: crate::mapping::TimestampWindow::OFF,
            };
            same(&rich(), &limits);
        }
    }

    #[test]
    fn repeated_singular_fields_merge_as_prost_does() {
        // A resource, a status and an attribute value each sent twice.
        let request = rich();
        let mut body = request.encode_to_vec();
        let extra = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("second", s("resource"))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![3; 16],
                        span_id: vec![4; 8],
                        attributes: vec![kv("n", any_value::Value::IntValue(1))],
                        status: Some(Status {
                            message: "first".into(),
                            code: 1,
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        body.extend(extra.encode_to_vec());
        let decoded = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        same(&decoded, &no_limits());
        // Within one span: duplicate status and a value field given twice.
        let mut span = Vec::new();
        Span {
            trace_id: vec![3; 16],
            span_id: vec![4; 8],
            status: Some(Status {
                message: "first".into(),
                code: 2,
            }),
            ..Default::default()
        }
        .encode(&mut span)
        .unwrap();
        let mut kv_twice = Vec::new();
        prost::encoding::string::encode(1, &"k".to_string(), &mut kv_twice);
        prost::encoding::message::encode(
            2,
            &AnyValue {
                value: Some(s("one")),
            },
            &mut kv_twice,
        );
        prost::encoding::message::encode(
            2,
            &AnyValue {
                value: Some(any_value::Value::IntValue(2)),
            },
            &mut kv_twice,
        );
        prost::encoding::bytes::encode(9, &kv_twice, &mut span);
        prost::encoding::message::encode(
            15,
            &Status {
                message: String::new(),
                code: 1,
            },
            &mut span,
        );
        let mut scope = Vec::new();
        prost::encoding::bytes::encode(2, &span, &mut scope);
        let mut rs = Vec::new();
        prost::encoding::bytes::encode(2, &scope, &mut rs);
        let mut req = Vec::new();
        prost::encoding::bytes::encode(1, &rs, &mut req);
        let decoded = ExportTraceServiceRequest::decode(&req[..]).unwrap();
        assert_eq!(
            decoded.resource_spans[0].scope_spans[0].spans[0].status,
            Some(Status {
                message: "first".into(),
                code: 1
            })
        );
        same(&decoded, &no_limits());
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let mut body = rich().encode_to_vec();
        body.truncate(body.len() - 3);
        let e = Traces::decode(body.into(), Encoding::Protobuf)
            .and_then(|r| Traces::map(r, &no_limits()).map(|_| ()))
            .unwrap_err();
        assert_eq!(e.http_status(), 400);
        // A string that is not UTF-8, deep in a span.
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![1; 8],
            name: "\u{1F600}".into(),
            ..Default::default()
        };
        let mut body = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let at = body.iter().rposition(|b| *b == 0xF0).unwrap();
        body[at] = 0xFF;
        assert!(ExportTraceServiceRequest::decode(&body[..]).is_err());
        let request = Traces::decode(body.into(), Encoding::Protobuf).unwrap();
        let e = Traces::map(request, &no_limits()).unwrap_err();
        assert!(e.to_string().contains("UTF-8"), "{e}");
    }
}

//! A finished span as it waits for export: what [`crate::span::Span`] fills
//! and the export turns into OTLP.

use std::borrow::Cow;
use std::sync::Arc;

use super::value::{Attribute, Str};
use crate::context::{SpanContext, SpanId, TraceId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub enum Status {
    #[default]
    Unset,
    Ok,
    Error(Cow<'static, str>),
}

pub(crate) type Attributes = Vec<Attribute>;

/// At most this many attributes, events and links per span (the
/// `OTEL_SPAN_*_COUNT_LIMIT` defaults); past it new ones are counted, not kept,
/// so a span in a loop cannot grow without bound.
pub(crate) const SPAN_ITEM_LIMIT: usize = 128;

/// Something that happened at one instant during a span.
#[derive(Debug)]
pub(crate) struct SpanEvent {
    pub name: Str,
    pub time_unix_nanos: u64,
    pub attributes: Attributes,
}

/// A causal relation to a span of another (or the same) trace.
#[derive(Debug)]
pub(crate) struct SpanLink {
    pub context: SpanContext,
    pub trace_state: Option<Arc<str>>,
    pub attributes: Attributes,
}

/// A finished (or finishing) span as it waits for export.
#[derive(Debug)]
pub(crate) struct SpanData {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub trace_state: Option<Arc<str>>,
    pub flags: u8,
    pub name: Str,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Attributes,
    pub events: Vec<SpanEvent>,
    pub links: Vec<SpanLink>,
    pub dropped_attributes: u32,
    pub dropped_events: u32,
    pub dropped_links: u32,
    pub status: Status,
}

//! Realistic synthetic spans with unique ids, for load generators and benchmarks.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};

fn events(index: u16, start: u64) -> Vec<span::Event> {
    let mut events = Vec::new();
    if index % 10 == 3 {
        events.push(span::Event {
            time_unix_nano: start + 200_000,
            name: "cache.miss".into(),
            attributes: vec![string("cache.key", &format!("order:{index}"))],
            ..Default::default()
        });
    }
    if index.is_multiple_of(50) {
        events.push(span::Event {
            time_unix_nano: start + 900_000,
            name: "exception".into(),
            attributes: vec![
                string("exception.type", "UpstreamTimeout"),
                string(
                    "exception.message",
                    "inventory did not answer within 800 ms",
                ),
            ],
            ..Default::default()
        });
    }
    events
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn string(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}

/// Span ids encode (client, request, index), so every span of a run is distinct and a
/// checker can tell which request a stored row came from.
pub fn span_id(client: u32, request: u32, index: u16) -> [u8; 8] {
    let mut id = [0u8; 8];
    id[..3].copy_from_slice(&(client + 1).to_be_bytes()[1..]);
    id[3..6].copy_from_slice(&request.to_be_bytes()[1..]);
    id[6..].copy_from_slice(&index.to_be_bytes());
    id
}

/// A request of `spans` server spans of one service, shaped like real HTTP traffic:
/// ten attributes each, an `exception` event on every failed span (one in fifty) and
/// a `cache.miss` event on one span in ten.
pub fn traces_request(
    client: u32,
    request: u32,
    spans: u16,
    now_nanos: u64,
) -> ExportTraceServiceRequest {
    let mut trace_id = [0u8; 16];
    trace_id[..4].copy_from_slice(&(client + 1).to_be_bytes());
    trace_id[4..8].copy_from_slice(&request.to_be_bytes());
    trace_id[15] = 1;
    let spans = (0..spans)
        .map(|i| {
            let start = now_nanos + u64::from(i) * 1000;
            let status_code = if i % 50 == 0 { 500 } else { 200 };
            Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id(client, request, i).to_vec(),
                parent_span_id: if i == 0 {
                    Vec::new()
                } else {
                    span_id(client, request, 0).to_vec()
                },
                name: "GET /api/orders/{id}".into(),
                kind: span::SpanKind::Server as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: start + 1_000_000 + u64::from(i) * 7919,
                attributes: vec![
                    string("http.request.method", "GET"),
                    string("http.route", "/api/orders/{id}"),
                    string(
                        "url.path",
                        &format!("/api/orders/{}", u64::from(request) * 1000 + u64::from(i)),
                    ),
                    string("url.scheme", "http"),
                    string("server.address", "orders.internal"),
                    kv("server.port", any_value::Value::IntValue(8080)),
                    string("client.address", "10.1.2.3"),
                    string("user_agent.original", "loadgen/1.0"),
                    kv(
                        "http.response.status_code",
                        any_value::Value::IntValue(status_code),
                    ),
                    string("network.protocol.version", "1.1"),
                ],
                events: events(i, start),
                status: Some(Status {
                    code: if status_code == 500 {
                        status::StatusCode::Error as i32
                    } else {
                        0
                    },
                    message: String::new(),
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    string("service.name", "orders"),
                    string("service.version", "1.4.2"),
                    string("deployment.environment", "load"),
                    string("host.name", &format!("loadgen-{client}")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "loadgen".into(),
                    version: "1.0".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

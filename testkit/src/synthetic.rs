//! Realistic synthetic spans with unique ids, for load generators and benchmarks.
//!
//! Two shapes ([`Profile`]): `Basic`, server spans of one route with ten short
//! attributes, and `Rich`, traces as instrumented services send them (HTTP server
//! and client, database, cache and messaging spans written from the semantic
//! conventions, a Kubernetes resource, high-cardinality values).

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};

/// The span shape a load generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// [`traces_request`]: about 500 bytes of RowBinary per span.
    #[default]
    Basic,
    /// [`rich_traces_request`]: about 800 bytes of RowBinary per span.
    Rich,
}

impl Profile {
    pub fn traces_request(
        self,
        client: u32,
        request: u32,
        spans: u16,
        now_nanos: u64,
    ) -> ExportTraceServiceRequest {
        match self {
            Profile::Basic => traces_request(client, request, spans, now_nanos),
            Profile::Rich => rich_traces_request(client, request, spans, now_nanos),
        }
    }
}

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

/// SplitMix64's finalizer: a bijection of u64 whose outputs look random.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic stream of pseudo-random numbers (SplitMix64): the same request
/// every run, values that look random to a compressor.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'t>(&mut self, from: &[&'t str]) -> &'t str {
        from[self.below(from.len() as u64) as usize]
    }

    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
    }

    fn ipv4(&mut self, prefix: &str) -> String {
        format!("{prefix}.{}.{}", self.below(256), 1 + self.below(254))
    }
}

fn int(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
}

const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Safari/605.1.15",
    "okhttp/4.12.0",
    "shop-ios/5.3.1 (iPhone15,2; iOS 18.1)",
];

/// What a span of a rich trace is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Server,
    Internal,
    Db,
    Cache,
    Client,
    Producer,
}

/// The spans of one trace, in order: the root SERVER span, then its children.
const TRACE_SHAPE: [Shape; 8] = [
    Shape::Server,
    Shape::Internal,
    Shape::Db,
    Shape::Db,
    Shape::Cache,
    Shape::Client,
    Shape::Producer,
    Shape::Cache,
];

/// A request of `spans` spans of one service instance as an OpenTelemetry SDK
/// exports them: a Kubernetes resource (service, SDK, host, process, pod, container,
/// cloud), and traces of eight spans each — an HTTP SERVER root with a remote parent
/// on most, an INTERNAL step, PostgreSQL and Redis CLIENT spans with query text, an
/// HTTP CLIENT call to another service (`url.full`, `peer.service`) and a RabbitMQ
/// PRODUCER span — with ten to sixteen attributes each, high-cardinality values
/// (`url.full`, `client.address`, `user_agent.original`, message ids, query
/// parameters), an `exception` event on failed spans and a `message` event on some.
/// Spans are grouped in scopes by instrumentation library, as SDKs group them.
pub fn rich_traces_request(
    client: u32,
    request: u32,
    spans: u16,
    now_nanos: u64,
) -> ExportTraceServiceRequest {
    let mut mix = Mix((u64::from(client) << 32) | u64::from(request));
    let pod = format!(
        "checkout-7f9c{:x}-{:05x}",
        client % 16,
        client * 7919 % 0xfffff
    );
    let resource = Resource {
        attributes: vec![
            string("service.name", "checkout"),
            string("service.namespace", "shop"),
            string("service.version", "2.14.3"),
            string("service.instance.id", &Mix(u64::from(client)).uuid()),
            string("deployment.environment.name", "production"),
            string("telemetry.sdk.name", "opentelemetry"),
            string("telemetry.sdk.language", "rust"),
            string("telemetry.sdk.version", "0.31.0"),
            string(
                "host.name",
                &format!("ip-10-0-{}-{}.ec2.internal", client % 8, 10 + client % 200),
            ),
            int("process.pid", 1 + i64::from(client % 30_000)),
            string("k8s.namespace.name", "shop-prod"),
            string("k8s.deployment.name", "checkout"),
            string("k8s.pod.name", &pod),
            string(
                "k8s.node.name",
                &format!("ip-10-0-{}-{}", client % 8, 40 + client % 100),
            ),
            string("cloud.region", "eu-west-1"),
        ],
        ..Default::default()
    };
    let mut scopes: [Vec<Span>; 4] = Default::default();
    let mut trace_id = [0u8; 16];
    let mut root = [0u8; 8];
    for i in 0..spans {
        let shape = TRACE_SHAPE[usize::from(i) % TRACE_SHAPE.len()];
        if shape == Shape::Server {
            trace_id[..8].copy_from_slice(&mix.next().to_be_bytes());
            trace_id[8..].copy_from_slice(&mix.next().to_be_bytes());
            root = span_id(client, request, i);
        }
        let start = now_nanos + u64::from(i) * 150_000;
        let failed = mix.below(50) == 0;
        let (scope, span) = match shape {
            Shape::Server => (0, rich_server_span(&mut mix, failed)),
            Shape::Internal => (0, rich_internal_span(&mut mix)),
            Shape::Db => (1, rich_db_span(&mut mix)),
            Shape::Cache => (2, rich_cache_span(&mut mix)),
            Shape::Client => (0, rich_client_span(&mut mix, failed)),
            Shape::Producer => (3, rich_producer_span(&mut mix)),
        };
        let mut span = Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id(client, request, i).to_vec(),
            parent_span_id: if shape == Shape::Server {
                // Most requests come from a gateway that traces too.
                if mix.below(4) == 0 {
                    Vec::new()
                } else {
                    mix.next().to_be_bytes().to_vec()
                }
            } else {
                root.to_vec()
            },
            start_time_unix_nano: start,
            end_time_unix_nano: start + 200_000 + mix.below(40_000_000),
            ..span
        };
        if failed && shape != Shape::Internal {
            span.status = Some(Status {
                code: status::StatusCode::Error as i32,
                message: "upstream request failed".into(),
            });
            span.events.push(span::Event {
                time_unix_nano: span.end_time_unix_nano - 1_000,
                name: "exception".into(),
                attributes: vec![
                    string("exception.type", "std::io::Error"),
                    string(
                        "exception.message",
                        &format!("connection reset by peer (os error 104) after {} bytes", mix.below(65_536)),
                    ),
                    string(
                        "exception.stacktrace",
                        "checkout::handlers::place_order\n  at src/handlers/order.rs:214\ncheckout::client::call\n  at src/client.rs:88",
                    ),
                ],
                ..Default::default()
            });
        } else if mix.below(10) == 0 {
            span.events.push(span::Event {
                time_unix_nano: start + 50_000,
                name: "message".into(),
                attributes: vec![
                    string("message.type", "SENT"),
                    int("message.id", mix.below(1_000) as i64),
                    int("message.uncompressed_size", mix.below(4_096) as i64),
                ],
                ..Default::default()
            });
        }
        scopes[scope].push(span);
    }
    let names = [
        ("axum-tracing-opentelemetry", "0.29.0"),
        ("sqlx", "0.8.6"),
        ("redis", "0.32.7"),
        ("lapin", "3.7.2"),
    ];
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: scopes
                .into_iter()
                .zip(names)
                .filter(|(spans, _)| !spans.is_empty())
                .map(|(spans, (name, version))| ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: name.into(),
                        version: version.into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: "https://opentelemetry.io/schemas/1.34.0".into(),
                })
                .collect(),
            schema_url: "https://opentelemetry.io/schemas/1.34.0".into(),
        }],
    }
}

fn rich_server_span(mix: &mut Mix, failed: bool) -> Span {
    let (method, route) = [
        ("POST", "/api/v2/checkout/{cart_id}"),
        ("GET", "/api/v2/orders/{order_id}"),
        ("PUT", "/api/v2/carts/{cart_id}/items"),
    ][mix.below(3) as usize];
    let id = mix.uuid();
    let path = route.replace(&route[route.find('{').unwrap_or(0)..], &id);
    let status = if failed {
        503
    } else {
        [200, 200, 200, 201, 404][mix.below(5) as usize]
    };
    Span {
        name: format!("{method} {route}"),
        kind: span::SpanKind::Server as i32,
        attributes: vec![
            string("http.request.method", method),
            string("http.route", route),
            string("url.path", &path),
            string(
                "url.query",
                &format!("session={:016x}&locale=en-GB", mix.next()),
            ),
            string("url.scheme", "https"),
            string("server.address", "api.shop.example.com"),
            int("server.port", 443),
            string("client.address", &mix.ipv4("203.0")),
            int("client.port", 1024 + mix.below(60_000) as i64),
            string("network.peer.address", &mix.ipv4("10.0")),
            string("network.protocol.version", "2"),
            string("user_agent.original", mix.pick(USER_AGENTS)),
            int("http.response.status_code", status),
            int("http.request.body.size", mix.below(8_192) as i64),
            int("http.response.body.size", mix.below(65_536) as i64),
        ],
        ..Default::default()
    }
}

fn rich_internal_span(mix: &mut Mix) -> Span {
    Span {
        name: "checkout.validate_cart".into(),
        kind: span::SpanKind::Internal as i32,
        attributes: vec![
            string("code.function.name", "checkout::cart::validate"),
            string("code.file.path", "src/cart/validate.rs"),
            int("code.line.number", 57),
            int("app.cart.items", 1 + mix.below(12) as i64),
            string("app.customer.tier", mix.pick(&["free", "plus", "business"])),
            string("app.cart.currency", mix.pick(&["EUR", "GBP", "USD"])),
        ],
        ..Default::default()
    }
}

fn rich_db_span(mix: &mut Mix) -> Span {
    let (operation, table, query) = [
        (
            "SELECT",
            "cart_items",
            "SELECT ci.sku, ci.quantity, p.price_cents, p.currency FROM cart_items ci JOIN products p ON p.sku = ci.sku WHERE ci.cart_id = $1",
        ),
        (
            "INSERT",
            "orders",
            "INSERT INTO orders (id, cart_id, customer_id, total_cents, currency, created_at) VALUES ($1, $2, $3, $4, $5, now())",
        ),
        (
            "UPDATE",
            "inventory",
            "UPDATE inventory SET reserved = reserved + $1 WHERE sku = $2 AND available - reserved >= $1",
        ),
    ][mix.below(3) as usize];
    Span {
        name: format!("{operation} shop.{table}"),
        kind: span::SpanKind::Client as i32,
        attributes: vec![
            string("db.system.name", "postgresql"),
            string("db.namespace", "shop"),
            string("db.operation.name", operation),
            string("db.collection.name", table),
            string("db.query.text", query),
            string("server.address", "orders-db.shop-prod.svc.cluster.local"),
            int("server.port", 5432),
            string("network.peer.address", &mix.ipv4("10.2")),
            int("db.response.returned_rows", mix.below(40) as i64),
            string("db.client.connection.pool.name", "shop-primary"),
        ],
        ..Default::default()
    }
}

fn rich_cache_span(mix: &mut Mix) -> Span {
    let operation = mix.pick(&["GET", "SET", "EXPIRE"]);
    Span {
        name: operation.into(),
        kind: span::SpanKind::Client as i32,
        attributes: vec![
            string("db.system.name", "redis"),
            string("db.operation.name", operation),
            string("db.query.text", &format!("{operation} cart:{}", mix.uuid())),
            string("db.namespace", "0"),
            string("server.address", "cache.shop-prod.svc.cluster.local"),
            int("server.port", 6379),
            string("network.peer.address", &mix.ipv4("10.3")),
            int("network.peer.port", 6379),
        ],
        ..Default::default()
    }
}

fn rich_client_span(mix: &mut Mix, failed: bool) -> Span {
    let sku = mix.below(1_000_000);
    Span {
        name: "GET".into(),
        kind: span::SpanKind::Client as i32,
        attributes: vec![
            string("http.request.method", "GET"),
            string(
                "url.full",
                &format!("http://inventory.shop-prod.svc.cluster.local:8080/v1/stock/SKU-{sku:07}?warehouse=eu-{}", mix.below(9)),
            ),
            string("server.address", "inventory.shop-prod.svc.cluster.local"),
            int("server.port", 8080),
            string("peer.service", "inventory"),
            string("network.protocol.version", "1.1"),
            string("network.peer.address", &mix.ipv4("10.1")),
            int("http.response.status_code", if failed { 502 } else { 200 }),
            string("user_agent.original", "reqwest/0.12.24"),
            int("http.request.resend_count", if failed { 2 } else { 0 }),
        ],
        ..Default::default()
    }
}

fn rich_producer_span(mix: &mut Mix) -> Span {
    Span {
        name: "publish orders.placed".into(),
        kind: span::SpanKind::Producer as i32,
        attributes: vec![
            string("messaging.system", "rabbitmq"),
            string("messaging.operation.type", "send"),
            string("messaging.operation.name", "publish"),
            string("messaging.destination.name", "orders"),
            string(
                "messaging.rabbitmq.destination.routing_key",
                "orders.placed",
            ),
            string("messaging.message.id", &mix.uuid()),
            string("messaging.message.conversation_id", &mix.uuid()),
            int("messaging.message.body.size", 200 + mix.below(2_000) as i64),
            string("server.address", "rabbitmq.shop-prod.svc.cluster.local"),
            int("server.port", 5672),
            string("network.peer.address", &mix.ipv4("10.4")),
        ],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn rich_requests_are_deterministic_and_their_span_ids_unique() {
        let a = rich_traces_request(3, 7, 512, 1_700_000_000_000_000_000);
        let b = rich_traces_request(3, 7, 512, 1_700_000_000_000_000_000);
        assert_eq!(a, b);
        let spans: Vec<&Span> = a.resource_spans[0]
            .scope_spans
            .iter()
            .flat_map(|s| &s.spans)
            .collect();
        assert_eq!(spans.len(), 512);
        let ids: HashSet<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
        assert_eq!(ids.len(), 512);
        let traces: HashSet<&[u8]> = spans.iter().map(|s| s.trace_id.as_slice()).collect();
        assert_eq!(traces.len(), 512 / TRACE_SHAPE.len());
        // Children point at their trace's root SERVER span.
        for s in spans
            .iter()
            .filter(|s| s.kind != span::SpanKind::Server as i32)
        {
            let parent = spans
                .iter()
                .find(|p| p.span_id == s.parent_span_id)
                .expect("a child's parent is in the request");
            assert_eq!(parent.kind, span::SpanKind::Server as i32);
            assert_eq!(parent.trace_id, s.trace_id);
        }
        let attributes: Vec<usize> = spans.iter().map(|s| s.attributes.len()).collect();
        assert!(
            attributes.iter().all(|n| (6..=15).contains(n)),
            "{attributes:?}"
        );
        assert!(spans
            .iter()
            .any(|s| s.events.iter().any(|e| e.name == "exception")));
    }
}

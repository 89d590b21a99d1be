//! The dashboards against real data: OTLP shaped like the agent's and the sample
//! service's goes through a real collector into ClickHouse, then every panel's SQL
//! runs with Grafana's macros and variables substituted (`testkit::dashboards`).
//! Also: the RED rollup's set-up, and its quantiles against raw spans.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use collector::schema::{
    create_statements, probe, probe_report, SchemaOptions, DURATION_RELATIVE_ACCURACY,
    TRACES_RED_1M,
};
use common::{int, kv, post, s};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    exemplar, exponential_histogram_data_point, metric, number_data_point, AggregationTemporality,
    Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use testkit::dashboards::{
    load_dir, run_dashboard, run_sql, workspace_dashboards, Dashboard, DashboardRun, RunOptions,
    TimeRange,
};
use testkit::{clickhouse_url, test_config, unique_database, TestCollector};

// ------------------------------------------------------------------ schema

/// The rollup and its view are created by the schema set-up, twice without
/// harm, keep 4x the raw TTL, and the probe notices a missing view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollup_set_up_is_idempotent_and_probed() {
    let database = unique_database("rollup_ddl");
    let client = clickhouse::Client::default().with_url(clickhouse_url());
    let opts = SchemaOptions {
        database: database.clone(),
        ttl_days: 7,
        cluster: None,
        dedup_window: 100,
    };
    for _ in 0..2 {
        for sql in create_statements(&opts) {
            client
                .query(&sql)
                .execute()
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }
    assert_eq!(probe(&client, &database).await.unwrap(), []);
    let ddl: String = client
        .query(&format!(
            "SHOW CREATE TABLE `{database}`.{}",
            TRACES_RED_1M.name
        ))
        .fetch_one()
        .await
        .unwrap();
    assert!(ddl.contains("ENGINE = AggregatingMergeTree"), "{ddl}");
    assert!(ddl.contains("TTL Timestamp + toIntervalDay(28)"), "{ddl}");

    client
        .query(&format!("DROP VIEW `{database}`.{}", TRACES_RED_1M.view))
        .execute()
        .await
        .unwrap();
    // Reported, but never blocking writes: a missing view only empties a dashboard.
    let report = probe_report(&client, &database).await.unwrap();
    assert_eq!(report.problems, []);
    assert_eq!(
        report
            .absent_extras
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
        ["materialized view otel_traces_red_1m_mv is missing"]
    );
    // Set-up repairs it.
    for sql in create_statements(&opts) {
        client.query(&sql).execute().await.unwrap();
    }
    assert_eq!(
        probe_report(&client, &database)
            .await
            .unwrap()
            .absent_extras,
        []
    );
}

/// Every panel and variable uses the data source the provisioning creates, and
/// the provider reads the directory compose mounts the dashboards into.
#[test]
fn dashboards_use_the_provisioned_data_source() {
    let root = workspace_dashboards();
    let root = root.parent().unwrap();
    let datasource =
        std::fs::read_to_string(root.join("provisioning/datasources/clickhouse.yaml")).unwrap();
    assert!(datasource.contains("uid: otel-clickhouse"));
    assert!(datasource.contains("type: grafana-clickhouse-datasource"));
    let provider = std::fs::read_to_string(root.join("provisioning/dashboards/otel.yaml")).unwrap();
    let compose =
        std::fs::read_to_string(root.parent().unwrap().join("docker-compose.yml")).unwrap();
    assert!(provider.contains("path: /etc/grafana/dashboards/otel"));
    assert!(compose.contains("./dashboards/json:/etc/grafana/dashboards/otel:ro"));
    assert!(compose.contains("./dashboards/provisioning:/etc/grafana/provisioning:ro"));

    fn uids(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(ds)) = m.get("datasource") {
                    out.push(format!(
                        "{}/{}",
                        ds.get("type").and_then(Value::as_str).unwrap_or("?"),
                        ds.get("uid").and_then(Value::as_str).unwrap_or("?")
                    ));
                }
                m.values().for_each(|v| uids(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| uids(v, out)),
            _ => {}
        }
    }
    for entry in std::fs::read_dir(workspace_dashboards()).unwrap() {
        let path = entry.unwrap().path();
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut found = Vec::new();
        uids(&json, &mut found);
        assert!(!found.is_empty(), "{}", path.display());
        assert!(
            found
                .iter()
                .all(|u| u == "grafana-clickhouse-datasource/otel-clickhouse"),
            "{}: {found:?}",
            path.display()
        );
    }
}

// ------------------------------------------------------------------ the feed

const MINUTES: u64 = 30;

struct Service {
    name: &'static str,
    version: &'static str,
    instance: &'static str,
}

const SHOP: Service = Service {
    name: "shop",
    version: "1.4.0",
    instance: "shop-1",
};
const CANARY: Service = Service {
    name: "shop",
    version: "1.5.0-canary",
    instance: "shop-2",
};
const DOWNSTREAMS: [Service; 3] = [
    Service {
        name: "inventory",
        version: "1.0.0",
        instance: "inventory-1",
    },
    Service {
        name: "shipping",
        version: "1.0.0",
        instance: "shipping-1",
    },
    Service {
        name: "recommendations",
        version: "1.0.0",
        instance: "recommendations-1",
    },
];

fn resource(svc: &Service) -> Option<Resource> {
    Some(Resource {
        attributes: vec![
            kv("service.name", s(svc.name)),
            kv("service.version", s(svc.version)),
            kv("service.instance.id", s(svc.instance)),
        ],
        ..Default::default()
    })
}

fn scope(name: &str) -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: name.into(),
        version: "0.1.0".into(),
        ..Default::default()
    })
}

/// Everything one run sends, grouped per service instance (resource).
#[derive(Default)]
struct Feed {
    spans: BTreeMap<&'static str, Vec<Span>>,
    logs: BTreeMap<&'static str, Vec<LogRecord>>,
    metrics: Vec<ExportMetricsServiceRequest>,
    server_spans: u64,
    /// A trace through the shop and its three downstreams.
    fan_out_trace: String,
}

struct Rng64(StdRng);

impl Rng64 {
    fn id<const N: usize>(&mut self) -> Vec<u8> {
        let mut b = [0u8; N];
        self.0.fill(&mut b[..]);
        b[0] |= 1;
        b.to_vec()
    }

    /// Log-normal around `median_ms`, in nanoseconds.
    fn duration(&mut self, median_ms: f64, sigma: f64) -> u64 {
        let (u1, u2): (f64, f64) = (self.0.random_range(1e-9..1.0), self.0.random());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        ((median_ms.ln() + sigma * z).exp() * 1e6) as u64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.0.random::<f64>() < p
    }
}

/// Where a span sits: its trace, parent, id and time.
struct At<'a> {
    trace: &'a [u8],
    parent: &'a [u8],
    id: Vec<u8>,
    start: u64,
    duration: u64,
}

fn server_span(at: At, method: &str, route: &str, code: i64) -> Span {
    let At {
        trace,
        parent,
        id,
        start,
        duration,
    } = at;
    Span {
        trace_id: trace.to_vec(),
        span_id: id,
        parent_span_id: parent.to_vec(),
        name: format!("{method} {route}"),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + duration,
        attributes: vec![
            kv("http.request.method", s(method)),
            kv("http.route", s(route)),
            kv("http.response.status_code", int(code)),
            kv("url.scheme", s("http")),
        ],
        status: (code >= 500).then(|| Status {
            code: status::StatusCode::Error as i32,
            message: String::new(),
        }),
        ..Default::default()
    }
}

fn child(at: At, kind: span::SpanKind, name: &str, attributes: Vec<KeyValue>, error: bool) -> Span {
    let At {
        trace,
        parent,
        id,
        start,
        duration,
    } = at;
    Span {
        trace_id: trace.to_vec(),
        span_id: id,
        parent_span_id: parent.to_vec(),
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + duration,
        attributes,
        status: error.then(|| Status {
            code: status::StatusCode::Error as i32,
            message: "failed".into(),
        }),
        ..Default::default()
    }
}

fn log(trace: &[u8], span: &[u8], time: u64, severity: (&str, i32), body: String) -> LogRecord {
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: time,
        severity_number: severity.1,
        severity_text: severity.0.into(),
        body: s(&body),
        attributes: vec![kv("target", s("shop::api"))],
        trace_id: trace.to_vec(),
        span_id: span.to_vec(),
        flags: 1,
        ..Default::default()
    }
}

const INFO: (&str, i32) = ("INFO", 9);
const WARN: (&str, i32) = ("WARN", 13);
const ERROR: (&str, i32) = ("ERROR", 17);

/// (method, route, requests per minute, median ms, sigma)
const ROUTES: [(&str, &str, u64, f64, f64); 5] = [
    ("GET", "/products/{id}", 24, 4.0, 0.6),
    ("GET", "/categories", 10, 2.0, 0.4),
    ("POST", "/orders", 6, 18.0, 0.5),
    ("GET", "/orders/{id}", 6, 6.0, 0.5),
    ("GET", "/orders/{id}/summary", 6, 45.0, 0.5),
];

/// Spans and logs of `MINUTES` minutes ending at `now_ns`, across two versions of
/// the shop (the canary slower and failing more on the fan-out), with CLIENT,
/// PRODUCER and CONSUMER children and the downstreams' SERVER spans.
fn traffic(feed: &mut Feed, rng: &mut Rng64, now_ns: u64) {
    let first_minute = now_ns - MINUTES * 60_000_000_000;
    for m in 0..MINUTES {
        for (method, route, per_minute, median, sigma) in ROUTES {
            for _ in 0..per_minute {
                let canary = rng.chance(0.25);
                let svc = if canary { &CANARY } else { &SHOP };
                let start =
                    first_minute + m * 60_000_000_000 + rng.0.random_range(0..55_000_000_000u64);
                let slow = if canary && route.ends_with("summary") {
                    1.8
                } else {
                    1.0
                };
                let duration = rng.duration(median * slow, sigma);
                let code = match route {
                    "/products/{id}" if rng.chance(0.04) => 404,
                    "/orders" if rng.chance(0.05) => 409,
                    "/orders" if rng.chance(0.02) => 422,
                    "/orders/{id}/summary" if canary && rng.chance(0.06) => 503,
                    _ if rng.chance(0.004) => 500,
                    "/orders" => 202,
                    _ => 200,
                };
                let trace = rng.id::<16>();
                // The load generator's own span is not exported: the server span's
                // parent is unknown, as in a real load run.
                let client_parent = rng.id::<8>();
                let id = rng.id::<8>();
                let spans = feed.spans.entry(svc.instance).or_default();
                spans.push(server_span(
                    At {
                        trace: &trace,
                        parent: &client_parent,
                        id: id.clone(),
                        start,
                        duration,
                    },
                    method,
                    route,
                    code,
                ));
                feed.server_spans += 1;
                match route {
                    "/products/{id}" => spans.push(child(
                        At {
                            trace: &trace,
                            parent: &id,
                            id: rng.id::<8>(),
                            start: start + duration / 10,
                            duration: duration / 3,
                        },
                        span::SpanKind::Client,
                        "GET",
                        vec![kv("db.system.name", s("redis"))],
                        false,
                    )),
                    "/orders" if code == 202 => {
                        let queue = "shop.payment";
                        let publish = rng.id::<8>();
                        spans.push(child(
                            At {
                                trace: &trace,
                                parent: &id,
                                id: publish.clone(),
                                start: start + duration,
                                duration: duration / 4,
                            },
                            span::SpanKind::Producer,
                            &format!("publish {queue}"),
                            vec![
                                kv("messaging.system", s("rabbitmq")),
                                kv("messaging.destination.name", s(queue)),
                                kv("messaging.operation.type", s("send")),
                            ],
                            false,
                        ));
                        let process_start = start + duration + 3_000_000;
                        let failed = rng.chance(0.1);
                        let process = child(
                            At {
                                trace: &trace,
                                parent: &publish,
                                id: rng.id::<8>(),
                                start: process_start,
                                duration: rng.duration(8.0, 0.4),
                            },
                            span::SpanKind::Consumer,
                            &format!("process {queue}"),
                            vec![
                                kv("messaging.system", s("rabbitmq")),
                                kv("messaging.destination.name", s(queue)),
                                kv("messaging.operation.type", s("process")),
                            ],
                            failed,
                        );
                        feed.logs.entry(SHOP.instance).or_default().push(log(
                            &trace,
                            &process.span_id,
                            process_start,
                            if failed { ERROR } else { INFO },
                            format!(
                                "payment {}",
                                if failed {
                                    "failed, will retry"
                                } else {
                                    "captured"
                                }
                            ),
                        ));
                        feed.spans.entry(SHOP.instance).or_default().push(process);
                    }
                    "/orders/{id}/summary" => {
                        for (i, down) in DOWNSTREAMS.iter().enumerate() {
                            let call = rng.id::<8>();
                            let call_start = start + 1_000_000 + i as u64 * 200_000;
                            let call_duration = duration / 2;
                            feed.spans.entry(svc.instance).or_default().push(child(
                                At {
                                    trace: &trace,
                                    parent: &id,
                                    id: call.clone(),
                                    start: call_start,
                                    duration: call_duration,
                                },
                                span::SpanKind::Client,
                                "GET",
                                vec![
                                    kv("http.request.method", s("GET")),
                                    kv("server.address", s(down.name)),
                                    kv("http.response.status_code", int(200)),
                                ],
                                false,
                            ));
                            let down_route = format!("/{}/{{id}}", down.name);
                            feed.spans
                                .entry(down.instance)
                                .or_default()
                                .push(server_span(
                                    At {
                                        trace: &trace,
                                        parent: &call,
                                        id: rng.id::<8>(),
                                        start: call_start + 100_000,
                                        duration: call_duration - 200_000,
                                    },
                                    "GET",
                                    &down_route,
                                    200,
                                ));
                            feed.server_spans += 1;
                        }
                        if feed.fan_out_trace.is_empty() {
                            feed.fan_out_trace = const_hex::encode(&trace);
                        }
                    }
                    _ => {}
                }
                let (severity, body) = match code {
                    500.. => (
                        ERROR,
                        format!("{method} {route} failed: downstream inventory timed out"),
                    ),
                    400..=499 => (WARN, format!("{method} {route} refused with {code}")),
                    _ => (
                        INFO,
                        format!("{method} {route} {code} in {} ms", duration / 1_000_000),
                    ),
                };
                feed.logs.entry(svc.instance).or_default().push(log(
                    &trace,
                    &id,
                    start + duration,
                    severity,
                    body,
                ));
            }
        }
    }
}

fn service_of(instance: &str) -> &'static Service {
    [&SHOP, &CANARY]
        .into_iter()
        .chain(DOWNSTREAMS.iter())
        .find(|s| s.instance == instance)
        .expect("known instance")
}

fn counter(name: &str, points: Vec<(Vec<(&str, &str)>, i64)>, start: u64, time: u64) -> Metric {
    Metric {
        name: name.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points
                .into_iter()
                .map(|(attrs, v)| NumberDataPoint {
                    attributes: attrs.into_iter().map(|(k, v)| kv(k, s(v))).collect(),
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    value: Some(number_data_point::Value::AsInt(v)),
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

fn gauge(name: &str, points: Vec<(Vec<(&str, &str)>, f64)>, time: u64) -> Metric {
    Metric {
        name: name.into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: points
                .into_iter()
                .map(|(attrs, v)| NumberDataPoint {
                    attributes: attrs.into_iter().map(|(k, v)| kv(k, s(v))).collect(),
                    time_unix_nano: time,
                    value: Some(number_data_point::Value::AsDouble(v)),
                    ..Default::default()
                })
                .collect(),
        })),
        ..Default::default()
    }
}

/// One minute of the agent's RED exponential histogram (delta, scale 6) for
/// `/products/{id}`: 60 requests spread over 20..80 ms, the slowest as exemplar.
fn red_exponential(start: u64, time: u64, minute: u64) -> Metric {
    const SCALE: i32 = 6;
    let index = |seconds: f64| (seconds.log2() * f64::from(1 << SCALE)).ceil() as i32 - 1;
    let values: Vec<f64> = (0..60).map(|i| 0.020 + 0.001 * i as f64).collect();
    let offset = index(values[0]);
    let mut counts = vec![0u64; (index(values[59]) - offset + 1) as usize];
    for v in &values {
        counts[(index(*v) - offset) as usize] += 1;
    }
    let mut trace_id = vec![0xe7u8; 16];
    trace_id[..8].copy_from_slice(&minute.to_be_bytes());
    Metric {
        name: "http.server.request.duration".into(),
        unit: "s".into(),
        data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
            data_points: vec![ExponentialHistogramDataPoint {
                attributes: vec![
                    kv("http.request.method", s("GET")),
                    kv("http.route", s("/products/{id}")),
                    kv("http.response.status_code", int(200)),
                ],
                start_time_unix_nano: start,
                time_unix_nano: time,
                count: values.len() as u64,
                sum: Some(values.iter().sum()),
                scale: SCALE,
                positive: Some(exponential_histogram_data_point::Buckets {
                    offset,
                    bucket_counts: counts,
                }),
                min: Some(values[0]),
                max: Some(values[59]),
                exemplars: vec![Exemplar {
                    time_unix_nano: time - 1_000_000_000,
                    value: Some(exemplar::Value::AsDouble(values[59])),
                    span_id: vec![0x5au8; 8],
                    trace_id,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            aggregation_temporality: AggregationTemporality::Delta as i32,
        })),
        ..Default::default()
    }
}

/// Cache lookups per minute and layer: (hit, miss, negative_hit, stale).
const MEMORY_LOOKUPS: (i64, i64, i64, i64) = (80, 20, 3, 0);
const REDIS_LOOKUPS: (i64, i64, i64, i64) = (15, 5, 0, 1);

/// The pattern metrics as the agent exports them: cumulative counters (since each
/// replica started) and gauges, one export a minute per replica.
fn pattern_metrics(feed: &mut Feed, now_ns: u64) {
    let start = now_ns - (MINUTES + 1) * 60_000_000_000;
    for svc in [&SHOP, &CANARY] {
        for m in 1..=MINUTES as i64 {
            let t = start + m as u64 * 60_000_000_000;
            let c = |per_minute: i64| per_minute * m;
            let (mh, mm, mn, ms) = MEMORY_LOOKUPS;
            let (rh, rm, rn, rs) = REDIS_LOOKUPS;
            let breaker = if (10..=12).contains(&m) {
                2.0
            } else if m == 13 {
                1.0
            } else {
                0.0
            };
            let metrics = vec![
                counter(
                    "shop.cache.requests",
                    vec![
                        (
                            vec![("cache.layer", "memory"), ("cache.result", "hit")],
                            c(mh),
                        ),
                        (
                            vec![("cache.layer", "memory"), ("cache.result", "miss")],
                            c(mm),
                        ),
                        (
                            vec![("cache.layer", "memory"), ("cache.result", "negative_hit")],
                            c(mn),
                        ),
                        (
                            vec![("cache.layer", "memory"), ("cache.result", "stale")],
                            c(ms),
                        ),
                        (
                            vec![("cache.layer", "redis"), ("cache.result", "hit")],
                            c(rh),
                        ),
                        (
                            vec![("cache.layer", "redis"), ("cache.result", "miss")],
                            c(rm),
                        ),
                        (
                            vec![("cache.layer", "redis"), ("cache.result", "negative_hit")],
                            c(rn),
                        ),
                        (
                            vec![("cache.layer", "redis"), ("cache.result", "stale")],
                            c(rs),
                        ),
                    ],
                    start,
                    t,
                ),
                counter(
                    "shop.cache.coalesced",
                    vec![
                        (vec![("cache.layer", "memory")], c(4)),
                        (vec![("cache.layer", "redis")], c(1)),
                    ],
                    start,
                    t,
                ),
                counter(
                    "shop.cache.locks",
                    vec![
                        (vec![("lock.result", "acquired")], c(5)),
                        (vec![("lock.result", "contended")], c(1)),
                    ],
                    start,
                    t,
                ),
                counter("shop.cache.early_refresh", vec![(vec![], c(2))], start, t),
                counter(
                    "shop.db.reads",
                    vec![
                        (vec![("entity", "product")], c(5)),
                        (vec![("entity", "category")], c(1)),
                    ],
                    start,
                    t,
                ),
                counter(
                    "shop.idempotency.requests",
                    vec![
                        (vec![("idempotency.outcome", "new")], c(5)),
                        (vec![("idempotency.outcome", "replayed")], c(1)),
                        (vec![("idempotency.outcome", "in_flight")], m / 3),
                        (vec![("idempotency.outcome", "mismatch")], m / 10),
                    ],
                    start,
                    t,
                ),
                counter("shop.outbox.published", vec![(vec![], c(15))], start, t),
                counter(
                    "shop.queue.processed",
                    vec![
                        (
                            vec![
                                ("messaging.destination.name", "shop.payment"),
                                ("result", "ok"),
                            ],
                            c(5),
                        ),
                        (
                            vec![
                                ("messaging.destination.name", "shop.payment"),
                                ("result", "duplicate"),
                            ],
                            m / 5,
                        ),
                        (
                            vec![
                                ("messaging.destination.name", "shop.email"),
                                ("result", "ok"),
                            ],
                            c(5),
                        ),
                    ],
                    start,
                    t,
                ),
                counter(
                    "shop.queue.retries",
                    vec![(vec![("messaging.destination.name", "shop.payment")], c(1))],
                    start,
                    t,
                ),
                counter(
                    "shop.queue.dead_letters",
                    vec![(
                        vec![("messaging.destination.name", "shop.payment")],
                        (m - 20).max(0),
                    )],
                    start,
                    t,
                ),
                counter(
                    "shop.rate_limited",
                    vec![
                        (vec![("limit.key", "token")], c(2)),
                        (vec![("limit.key", "ip")], m / 4),
                    ],
                    start,
                    t,
                ),
                counter("shop.shed", vec![(vec![], m / 5)], start, t),
                counter(
                    "shop.breaker.rejections",
                    vec![(
                        vec![("dependency", "inventory")],
                        3 * (m.clamp(10, 13) - 10),
                    )],
                    start,
                    t,
                ),
                red_exponential(t - 60_000_000_000, t, m as u64),
                gauge("shop.outbox.lag", vec![(vec![], 0.05 * m as f64)], t),
                gauge(
                    "shop.breaker.state",
                    vec![
                        (vec![("dependency", "inventory")], breaker),
                        (vec![("dependency", "shipping")], 0.0),
                        (vec![("dependency", "recommendations")], 0.0),
                    ],
                    t,
                ),
            ];
            feed.metrics.push(ExportMetricsServiceRequest {
                resource_metrics: vec![ResourceMetrics {
                    resource: resource(svc),
                    scope_metrics: vec![ScopeMetrics {
                        scope: scope("shop"),
                        metrics,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            });
        }
    }
}

async fn send(c: &TestCollector, path: &str, body: Vec<u8>) {
    let (status, _, resp) = post(
        &c.http_endpoint(),
        path,
        "application/x-protobuf",
        body,
        false,
    )
    .await;
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&resp));
}

async fn send_feed(c: &TestCollector, feed: &Feed) -> (u64, u64, u64) {
    let (mut spans, mut logs, mut points) = (0, 0, 0);
    for (instance, all) in &feed.spans {
        for chunk in all.chunks(500) {
            spans += chunk.len() as u64;
            let req = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: resource(service_of(instance)),
                    scope_spans: vec![ScopeSpans {
                        scope: scope("agent"),
                        spans: chunk.to_vec(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            send(c, "/v1/traces", req.encode_to_vec()).await;
        }
    }
    for (instance, all) in &feed.logs {
        for chunk in all.chunks(500) {
            logs += chunk.len() as u64;
            let req = ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: resource(service_of(instance)),
                    scope_logs: vec![ScopeLogs {
                        scope: scope("shop::api"),
                        log_records: chunk.to_vec(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            send(c, "/v1/logs", req.encode_to_vec()).await;
        }
    }
    for req in &feed.metrics {
        for rm in &req.resource_metrics {
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    points += match &m.data {
                        Some(metric::Data::Sum(s)) => s.data_points.len(),
                        Some(metric::Data::Gauge(g)) => g.data_points.len(),
                        _ => 0,
                    } as u64;
                }
            }
        }
        send(c, "/v1/metrics", req.encode_to_vec()).await;
    }
    (spans, logs, points)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn f64_of(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) => s.parse().unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn dashboard(all: &[Dashboard], uid: &str) -> Dashboard {
    all.iter()
        .find(|d| d.uid == uid)
        .unwrap_or_else(|| panic!("dashboard {uid}"))
        .clone()
}

fn rows_of<'a>(run: &'a DashboardRun, panel: &str) -> &'a testkit::dashboards::QueryResult {
    match &run
        .panel(panel)
        .unwrap_or_else(|| panic!("panel {panel}"))
        .result
    {
        Ok(r) => r,
        Err(e) => panic!("{panel}: {e}"),
    }
}

/// Every panel of every dashboard runs and has rows; the rollup agrees with raw
/// spans (counts exactly, p99 within the sketch's stated error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_has_data_and_the_rollup_matches_raw_spans() {
    let mut config = test_config(&unique_database("dashboards"));
    // The Collector health dashboard reads the collector's own rows.
    config.telemetry.export_interval_ms = 1000;
    let c = TestCollector::start_with(config).await;
    let started = Instant::now();

    let now = now_ns();
    let mut rng = Rng64(StdRng::seed_from_u64(7));
    let mut feed = Feed::default();
    traffic(&mut feed, &mut rng, now);
    pattern_metrics(&mut feed, now);
    let (spans, logs, points) = send_feed(&c, &feed).await;
    assert_eq!(c.wait_for_rows("otel_traces", "", spans).await, spans);
    assert_eq!(c.wait_for_rows("otel_logs", "", logs).await, logs);
    let mut seen = 0;
    for _ in 0..600 {
        let sums: u64 = c
            .client
            .query("SELECT count() FROM otel_metrics_sum WHERE ServiceName = 'shop'")
            .fetch_one()
            .await
            .unwrap();
        let gauges: u64 = c
            .client
            .query("SELECT count() FROM otel_metrics_gauge WHERE ServiceName = 'shop'")
            .fetch_one()
            .await
            .unwrap();
        seen = sums + gauges;
        if seen >= points {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, points);
    // The rollup is filled within each INSERT into otel_traces, but a view's part
    // commits after its source's: a read in between sees the spans without their
    // rollup rows (seen once in five runs on a loaded machine), so poll.
    for rollup in ["otel_traces_red_1m", "otel_traces_red_1h"] {
        let sql = format!("SELECT toUInt64(sum(Requests)) FROM {rollup}");
        let mut rolled = 0;
        for _ in 0..200 {
            rolled = c.client.query(&sql).fetch_one().await.unwrap();
            if rolled >= feed.server_spans {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(rolled, feed.server_spans, "{rollup}");
        // The status-class counts, as the panel reads them, are the raw spans'.
        let classes = |sql: String| {
            let client = c.client.clone();
            async move {
                client
                    .query(&sql)
                    .fetch_all::<(String, u64)>()
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
        };
        let by_class = classes(format!(
            "SELECT class, n FROM (SELECT sumMap(RequestsByStatusClass) AS m FROM {rollup}) \
             ARRAY JOIN mapKeys(m) AS class, mapValues(m) AS n ORDER BY class"
        ))
        .await;
        let raw = classes(
            "SELECT multiIf(SpanAttributes['http.response.status_code'] != '', \
                            concat(left(SpanAttributes['http.response.status_code'], 1), 'xx'), \
                            StatusCode = 'Error', 'error', 'ok') AS class, count() \
             FROM otel_traces WHERE SpanKind = 'Server' GROUP BY class ORDER BY class"
                .to_string(),
        )
        .await;
        assert_eq!(by_class, raw, "{rollup}");
        assert!(raw.len() >= 3, "{raw:?}");
    }
    // At least three of the collector's own exports, so counters have deltas.
    while started.elapsed() < Duration::from_secs(60) {
        let exports: u64 = c
            .client
            .query(
                "SELECT uniqExact(TimeUnix) FROM otel_metrics_sum \
                 WHERE ServiceName = 'collector' AND MetricName = 'collector_items_accepted_total'",
            )
            .fetch_one()
            .await
            .unwrap();
        let histograms: u64 = c
            .client
            .query("SELECT count() FROM otel_metrics_histogram WHERE ServiceName = 'collector'")
            .fetch_one()
            .await
            .unwrap();
        if exports >= 4 && histograms > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let all = load_dir(&workspace_dashboards()).expect("dashboards load");
    assert_eq!(
        all.len(),
        6,
        "{:?}",
        all.iter().map(|d| &d.title).collect::<Vec<_>>()
    );
    let range = TimeRange {
        from_ms: ((now - (MINUTES + 5) * 60_000_000_000) / 1_000_000) as i64,
        to_ms: (now_ns() / 1_000_000) as i64 + 60_000,
    };
    let mut problems = Vec::new();
    let mut runs = BTreeMap::new();
    for d in &all {
        let mut opts = RunOptions::new(range);
        if d.uid == "otel-traces" {
            opts = opts.with_variable("trace_id", &[&feed.fan_out_trace]);
        }
        let run = run_dashboard(&c.client, d, &opts)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", d.title));
        println!(
            "{}: {} queries, {} with rows",
            d.title,
            run.panels.len(),
            run.panels
                .iter()
                .filter(|p| p.result.as_ref().is_ok_and(|r| !r.rows.is_empty()))
                .count()
        );
        // This synthetic feed has no exception events; the sample service's
        // dashboards test injects one and requires its group.
        problems.extend(run.problems(&["Exception groups", "Exceptions per minute by type"]));
        runs.insert(d.uid.clone(), run);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Variables saw the data: both shop versions, every route.
    let overview = &runs["otel-service-overview"];
    assert!(
        matches!(&overview.variables["version"], testkit::dashboards::VarValue::All { options, .. }
            if options.contains(&"1.4.0".to_string()) && options.contains(&"1.5.0-canary".to_string())),
        "{:?}",
        overview.variables["version"]
    );

    // The Routes table from the rollup counts exactly what the raw-span one does.
    let counts = |panel: &str| -> BTreeMap<(String, String), f64> {
        let r = rows_of(overview, panel);
        let service = r.column("service").unwrap();
        let route = r.column("route").unwrap();
        let requests = r.column("requests").unwrap();
        service
            .iter()
            .zip(route)
            .zip(requests)
            .map(|((s, r), n)| ((str_of(s), str_of(r)), f64_of(n)))
            .collect()
    };
    let rolled = counts("Routes");
    assert_eq!(rolled, counts("Routes (raw spans, exact)"));
    assert_eq!(rolled.len(), ROUTES.len() + DOWNSTREAMS.len());

    // Versions: the canary is slower on the fan-out and carries ~25 % of traffic.
    let versions = rows_of(overview, "Versions");
    let version_col = versions.column("version").unwrap();
    let traffic = versions.column("traffic_pct").unwrap();
    let canary_share = version_col
        .iter()
        .zip(traffic)
        .find(|(v, _)| str_of(v) == "1.5.0-canary")
        .map(|(_, t)| f64_of(t))
        .expect("canary row");
    assert!((15.0..35.0).contains(&canary_share), "{canary_share}");

    // Traces: the fan-out trace has the shop's and the three downstreams' spans.
    let traces = &runs["otel-traces"];
    let trace = rows_of(traces, "Trace");
    let services: std::collections::BTreeSet<String> = trace
        .column("serviceName")
        .unwrap()
        .into_iter()
        .map(str_of)
        .collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        ["inventory", "recommendations", "shipping", "shop"]
    );
    let messaging = rows_of(traces, "Messaging: publish → process");
    assert_eq!(
        messaging
            .column("destination")
            .unwrap()
            .iter()
            .map(|v| str_of(v))
            .collect::<Vec<_>>(),
        ["shop.payment"]
    );

    // Logs filtered by a trace id show that trace's records only.
    let logs_dashboard = dashboard(&all, "otel-logs");
    let by_trace = run_dashboard(
        &c.client,
        &logs_dashboard,
        &RunOptions::new(range).with_variable("trace_id", &[&feed.fan_out_trace]),
    )
    .await
    .unwrap();
    let ids = rows_of(&by_trace, "Logs").column("TraceId").unwrap();
    assert!(!ids.is_empty());
    assert!(ids.iter().all(|id| str_of(id) == feed.fan_out_trace));

    // Patterns: the hit ratio per layer is what the counters say.
    let patterns = &runs["otel-sample-patterns"];
    let hits = rows_of(patterns, "Cache hit ratio per layer");
    let layers = hits.column("layer").unwrap();
    let ratios = hits.column("hit_pct").unwrap();
    let ratio =
        |(h, m, n, s): (i64, i64, i64, i64)| 100.0 * (1.0 - m as f64 / (h + m + n + s) as f64);
    for (layer, r) in layers.iter().zip(ratios) {
        let want = if str_of(layer) == "memory" {
            ratio(MEMORY_LOOKUPS)
        } else {
            ratio(REDIS_LOOKUPS)
        };
        assert!((f64_of(r) - want).abs() < 1e-6, "{layer}: {r} vs {want}");
    }

    // Collector health: its own counters say it accepted the spans.
    let health = &runs["otel-collector-health"];
    let accepted = rows_of(health, "Items accepted per second by signal");
    assert!(accepted
        .column("signal")
        .unwrap()
        .iter()
        .any(|s| str_of(s) == "traces"));

    // From 3 days on the overview reads the hourly rollup: same counts.
    let long = TimeRange {
        from_ms: range.to_ms - 4 * 86_400_000,
        to_ms: range.to_ms,
    };
    let overview_long = run_dashboard(
        &c.client,
        &dashboard(&all, "otel-service-overview"),
        &RunOptions::new(long),
    )
    .await
    .unwrap();
    let problems = overview_long.problems(&[]);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(rows_of(&overview_long, "Routes")
        .column("requests")
        .unwrap()
        .iter()
        .zip(
            rows_of(&overview_long, "Routes (raw spans, exact)")
                .column("requests")
                .unwrap()
        )
        .all(|(a, b)| f64_of(a) == f64_of(b)));

    assert_p99_matches_raw(&c.client, "otel_traces_red_1m").await;
    assert_p99_matches_raw(&c.client, "otel_traces_red_1h").await;
    c.stop().await;
}

/// p99 per service, route and version read from the rollup is within the sketch's relative
/// accuracy of the exact p99 of the raw server spans, taken at the rank the sketch
/// uses (`floor(0.99 * (n - 1))` of the sorted durations).
async fn assert_p99_matches_raw(client: &clickhouse::Client, rollup_table: &str) {
    let rollup = run_sql(
        client,
        &format!(
            "SELECT ServiceName, Route, ServiceVersion, toUInt64(sum(Requests)) AS n, \
                    quantilesDDMerge(0.01, 0.99)(DurationQuantiles)[1] AS p99 \
             FROM {rollup_table} GROUP BY ServiceName, Route, ServiceVersion \
             ORDER BY ServiceName, Route, ServiceVersion"
        ),
    )
    .await
    .unwrap();
    let raw = run_sql(
        client,
        "SELECT ServiceName, if(SpanAttributes['http.route'] != '', SpanAttributes['http.route'], SpanName) AS route, \
                ResourceAttributes['service.version'] AS version, count() AS n, \
                toFloat64(arraySort(groupArray(Duration))[toUInt64(floor(0.99 * (count() - 1))) + 1]) AS p99 \
         FROM otel_traces WHERE SpanKind = 'Server' \
         GROUP BY ServiceName, route, version ORDER BY ServiceName, route, version",
    )
    .await
    .unwrap();
    assert_eq!(rollup.rows.len(), raw.rows.len());
    assert!(!raw.rows.is_empty());
    for (v, r) in rollup.rows.iter().zip(&raw.rows) {
        assert_eq!(&v[..3], &r[..3]);
        assert_eq!(f64_of(&v[3]), f64_of(&r[3]), "{:?}", v);
        let (view, exact) = (f64_of(&v[4]), f64_of(&r[4]));
        let error = (view - exact).abs() / exact;
        println!(
            "p99 {rollup_table} {} {} {}: rollup {:.3} ms, raw {:.3} ms, relative error {:.4} % over {} spans",
            str_of(&v[0]),
            str_of(&v[1]),
            str_of(&v[2]),
            view / 1e6,
            exact / 1e6,
            100.0 * error,
            f64_of(&v[3])
        );
        assert!(
            error <= DURATION_RELATIVE_ACCURACY * (1.0 + 1e-9),
            "{v:?} vs {r:?}: {error}"
        );
    }
}

// ------------------------------------------------------------------ benchmark

/// Panels of the overview computed from the rollup, and their raw-span twins in
/// the drill-down row.
const TWINS: [(&str, &str); 5] = [
    ("Services", "Services (raw spans, exact)"),
    (
        "Request rate by service",
        "Request rate by service (raw spans)",
    ),
    (
        "Latency by service (p50 / p95 / p99 / p99.9)",
        "Latency by service (raw spans, exact)",
    ),
    ("Routes", "Routes (raw spans, exact)"),
    ("Versions", "Versions (raw spans, exact)"),
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The overview dashboard's query time over the rollup versus raw spans, side by
/// side on the same data. Not a test of speed (nothing is asserted about it):
///
/// ```text
/// BENCH_SPANS=6000000 BENCH_DAYS=7 cargo test --release -p collector --test it \
///     dashboards::overview_query_time -- --ignored --nocapture
/// ```
///
/// A third of the generated spans are SERVER spans (5 routes, 2 versions, 3
/// services), the rest CLIENT spans, spread evenly over the last BENCH_DAYS days.
/// They are generated inside ClickHouse (`INSERT … SELECT … FROM numbers`), so the
/// rollup is filled by its view exactly as for the collector's INSERTs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: generates millions of spans; run with --ignored --nocapture"]
async fn overview_query_time_rollup_vs_raw_spans() {
    let spans = env_u64("BENCH_SPANS", 6_000_000);
    let days = env_u64("BENCH_DAYS", 7);
    let rounds = env_u64("BENCH_ROUNDS", 3);
    let database = unique_database("bench_overview");
    let client = bench_schema(&database).await;
    let (start_ns, end_ns, step) = bench_times(spans, days);
    let insert = format!(
        "INSERT INTO otel_traces (Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind, \
             ServiceName, ResourceAttributes, ScopeName, SpanAttributes, Duration, StatusCode) \
         SELECT fromUnixTimestamp64Nano(toInt64({start_ns} + number * {step})) AS ts, \
                lower(hex(cityHash64(intDiv(number, 3)))) AS trace, lower(hex(cityHash64(number, 1))), \
                if(number % 3 = 0, '', lower(hex(cityHash64(intDiv(number, 3) * 3, 1)))), \
                if(number % 3 = 0, concat(['GET', 'GET', 'POST', 'GET', 'GET'][1 + r], ' ', route), \
                   ['GET', 'SELECT products', 'EVALSHA gcra'][1 + number % 3]), \
                if(number % 3 = 0, 'Server', 'Client'), \
                ['shop', 'shop', 'shop', 'shop', 'shop', 'shop', 'inventory', 'shipping'][1 + cityHash64(number, 2) % 8] AS service, \
                map('service.name', service, 'service.version', if(cityHash64(number, 3) % 10 = 0, '1.5.0-canary', '1.4.0')), \
                'agent', \
                if(number % 3 = 0, map('http.route', route, 'http.request.method', 'GET', \
                   'http.response.status_code', multiIf(cityHash64(number, 4) % 100 = 0, '500', cityHash64(number, 4) % 30 = 0, '404', '200')), \
                   map('db.system.name', 'redis')), \
                toUInt64(exp(ln(4e6) + 0.8 * randNormal(0, 1)) * if(r = 4, 10, 1)), \
                if(number % 3 = 0 AND cityHash64(number, 4) % 100 = 0, 'Error', 'Unset') \
         FROM (SELECT number, cityHash64(number, 5) % 5 AS r, \
                      ['/products/{{id}}', '/categories', '/orders', '/orders/{{id}}', '/orders/{{id}}/summary'][1 + r] AS route \
               FROM numbers({spans}))"
    );
    let t = Instant::now();
    client
        .query(&insert)
        .with_setting("max_insert_threads", "2")
        .execute()
        .await
        .unwrap_or_else(|e| panic!("{insert}: {e}"));
    let loaded = t.elapsed();
    let raw_rows: u64 = client
        .query("SELECT count() FROM otel_traces")
        .fetch_one()
        .await
        .unwrap();
    let mut rollup_rows = Vec::new();
    for rollup in ["otel_traces_red_1m", "otel_traces_red_1h"] {
        // Merged as a long-running server would have merged them by now.
        let _ = client
            .query(&format!("OPTIMIZE TABLE {rollup} FINAL"))
            .execute()
            .await;
        let n: u64 = client
            .query(&format!("SELECT count() FROM {rollup}"))
            .fetch_one()
            .await
            .unwrap();
        rollup_rows.push(format!("{rollup} {n} rows"));
    }
    println!(
        "{raw_rows} spans ({} server) over {days} d loaded in {:.1} s; {}",
        raw_rows / 3,
        loaded.as_secs_f64(),
        rollup_rows.join(", ")
    );

    let all = load_dir(&workspace_dashboards()).unwrap();
    let overview = dashboard(&all, "otel-service-overview");
    let to_ms = (end_ns / 1_000_000) as i64;
    let mut ranges = vec![("the whole range", days * 24)];
    if days > 1 {
        ranges.push(("the last 24 h", 24));
    }
    for (label, hours) in ranges {
        let range = TimeRange {
            from_ms: to_ms - hours as i64 * 3_600_000,
            to_ms,
        };
        let source = if hours >= 72 {
            "otel_traces_red_1h"
        } else {
            "otel_traces_red_1m"
        };
        bench_overview(
            &client,
            &overview,
            range,
            rounds,
            &format!("{label} ({hours} h, rollup {source})"),
        )
        .await;
    }
    clickhouse::Client::default()
        .with_url(clickhouse_url())
        .query(&format!("DROP DATABASE `{database}`"))
        .execute()
        .await
        .unwrap();
}

async fn bench_overview(
    client: &clickhouse::Client,
    overview: &Dashboard,
    range: TimeRange,
    rounds: u64,
    label: &str,
) {
    // Only spans are generated: the panels over the agent's metrics stay empty.
    let reads = |p: &&testkit::dashboards::Panel, table: &str| {
        p.targets.iter().any(|t| t.raw_sql.contains(table))
    };
    let metric_panels: Vec<&str> = overview
        .panels
        .iter()
        .filter(|p| !reads(p, "otel_traces"))
        .map(|p| p.title.as_str())
        .collect();
    // Best of `rounds` per panel: the first round also warms caches.
    let mut best: BTreeMap<String, Duration> = BTreeMap::new();
    for _ in 0..rounds {
        let run = run_dashboard(client, overview, &RunOptions::new(range))
            .await
            .unwrap();
        let problems = run.problems(&metric_panels);
        assert!(problems.is_empty(), "{problems:#?}");
        for p in &run.panels {
            let r = p.result.as_ref().unwrap();
            let took = r.server_elapsed.unwrap_or(r.elapsed);
            let e = best.entry(p.panel.clone()).or_insert(took);
            *e = (*e).min(took);
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("\nOverview over {label}, best of {rounds}, ClickHouse-reported time per query:");
    println!(
        "{:<46} {:>10} {:>12} {:>10}",
        "panel", "rollup ms", "raw spans ms", "raw/rollup"
    );
    let (mut total_rollup, mut total_raw) = (Duration::ZERO, Duration::ZERO);
    for (rollup, raw) in TWINS {
        let (a, b) = (best[rollup], best[raw]);
        total_rollup += a;
        total_raw += b;
        println!(
            "{rollup:<46} {:>10.1} {:>12.1} {:>9.0}x",
            ms(a),
            ms(b),
            b.as_secs_f64() / a.as_secs_f64()
        );
    }
    println!(
        "{:<46} {:>10.1} {:>12.1} {:>9.0}x",
        "the five panels together",
        ms(total_rollup),
        ms(total_raw),
        total_raw.as_secs_f64() / total_rollup.as_secs_f64()
    );
    let shown: Vec<&str> = overview
        .panels
        .iter()
        .filter(|p| !p.row.starts_with("Drill-down") && reads(p, "otel_traces_red_"))
        .map(|p| p.title.as_str())
        .collect();
    println!(
        "every RED rollup panel shown by default ({} queries): {:.1} ms",
        shown.len(),
        ms(shown.iter().map(|t| best[*t]).sum())
    );
}

/// Raw-span twins of the service map dashboard's rollup panels: the same answer
/// computed from `otel_traces` (exact quantiles).
const DEPENDENCY_TWINS: [(&str, &str); 3] = [
    (
        "Calls between services",
        "SELECT ServiceName AS caller, multiIf(SpanAttributes['peer.service'] != '', SpanAttributes['peer.service'], \
                SpanAttributes['db.system.name'] != '', SpanAttributes['db.system.name'], \
                SpanAttributes['messaging.destination.name'] != '', SpanAttributes['messaging.destination.name'], SpanName) AS callee, \
                count() / 86400 AS calls_per_s, 100 * countIf(StatusCode = 'Error') / count() AS error_pct, \
                quantilesExact(0.5, 0.95, 0.99)(Duration) AS q \
         FROM otel_traces WHERE $__timeFilter(Timestamp) AND SpanKind IN ('Client', 'Producer') \
         GROUP BY caller, callee ORDER BY count() DESC",
    ),
    (
        "Outbound RED",
        "SELECT ServiceName AS service, SpanAttributes['db.system.name'] AS system, SpanAttributes['server.address'] AS address, \
                SpanAttributes['db.collection.name'] AS destination, SpanAttributes['db.operation.name'] AS operation, \
                count() AS calls, 100 * countIf(StatusCode = 'Error') / count() AS error_pct, \
                quantilesExact(0.5, 0.95, 0.99)(Duration) AS q, max(Duration) AS max_ns \
         FROM otel_traces WHERE $__timeFilter(Timestamp) AND SpanKind IN ('Client', 'Producer') \
         GROUP BY service, system, address, destination, operation ORDER BY q[3] DESC LIMIT 200",
    ),
    (
        "Exception groups",
        "SELECT ServiceName AS service, Events.Attributes[indexOf(Events.Name, 'exception')]['exception.type'] AS type, \
                replaceRegexpAll(Events.Attributes[indexOf(Events.Name, 'exception')]['exception.message'], '[0-9]+', '<n>') AS message, \
                count() AS count, min(Timestamp) AS first_seen, max(Timestamp) AS last_seen, any(TraceId) AS trace \
         FROM otel_traces WHERE $__timeFilter(Timestamp) AND has(Events.Name, 'exception') \
         GROUP BY service, type, message ORDER BY count DESC LIMIT 200",
    ),
];

/// The service map dashboard's rollup panels against their raw-span twins on the
/// same generated CLIENT spans (databases, caches, downstream services, a share
/// with an exception event). Same knobs as the overview benchmark:
/// ```sh
/// BENCH_SPANS=6000000 BENCH_DAYS=1 cargo test -p collector --test it \
///     dashboards::dependency_query_time -- --ignored --nocapture
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: generates millions of spans; run with --ignored --nocapture"]
async fn dependency_query_time_rollups_vs_raw_spans() {
    let spans = env_u64("BENCH_SPANS", 3_000_000);
    let days = env_u64("BENCH_DAYS", 1);
    let rounds = env_u64("BENCH_ROUNDS", 3);
    let database = unique_database("bench_dependencies");
    let client = bench_schema(&database).await;
    let (start_ns, end_ns, step) = bench_times(spans, days);
    let insert = format!(
        "INSERT INTO otel_traces (Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind, \
             ServiceName, ResourceAttributes, ScopeName, SpanAttributes, Duration, StatusCode, \
             `Events.Timestamp`, `Events.Name`, `Events.Attributes`) \
         SELECT fromUnixTimestamp64Nano(toInt64({start_ns} + number * {step})) AS ts, \
                lower(hex(cityHash64(intDiv(number, 4)))), lower(hex(cityHash64(number, 1))), \
                lower(hex(cityHash64(intDiv(number, 4), 2))), \
                ['SELECT products', 'UPDATE orders', 'GET', 'EVALSHA gcra', 'GET', 'GET', 'GET'][1 + k], \
                'Client', ['shop', 'shop', 'shop', 'worker'][1 + cityHash64(number, 3) % 4] AS service, \
                map('service.name', service), 'agent', \
                [map('db.system.name', 'postgresql', 'db.operation.name', 'SELECT', 'db.collection.name', 'products', 'server.address', 'postgres'), \
                 map('db.system.name', 'postgresql', 'db.operation.name', 'UPDATE', 'db.collection.name', 'orders', 'server.address', 'postgres'), \
                 map('db.system.name', 'redis', 'db.operation.name', 'GET', 'server.address', 'redis'), \
                 map('db.system.name', 'redis', 'db.operation.name', 'EVALSHA', 'server.address', 'redis'), \
                 map('peer.service', 'inventory', 'http.request.method', 'GET', 'server.address', 'inventory'), \
                 map('peer.service', 'shipping', 'http.request.method', 'GET', 'server.address', 'shipping'), \
                 map('peer.service', 'recommendations', 'http.request.method', 'GET', 'server.address', 'recommendations')][1 + k], \
                toUInt64(exp(ln(2e6) + 0.8 * randNormal(0, 1))), \
                if(cityHash64(number, 4) % 200 = 0, 'Error', 'Unset') AS status, \
                if(status = 'Error', [ts], []), if(status = 'Error', ['exception'], []), \
                if(status = 'Error', [map('exception.type', ['Timeout', 'ConnectionReset'][1 + number % 2], \
                   'exception.message', concat('call ', toString(number), ' failed after ', toString(number % 977), ' ms'))], []) \
         FROM (SELECT number, cityHash64(number, 5) % 7 AS k FROM numbers({spans}))"
    );
    let t = Instant::now();
    client
        .query(&insert)
        .with_setting("max_insert_threads", "2")
        .execute()
        .await
        .unwrap_or_else(|e| panic!("{insert}: {e}"));
    let loaded = t.elapsed();
    let mut rollup_rows = Vec::new();
    for rollup in [
        "otel_traces_edges_1m",
        "otel_traces_outbound_1m",
        "otel_traces_exceptions_1m",
    ] {
        let _ = client
            .query(&format!("OPTIMIZE TABLE {rollup} FINAL"))
            .execute()
            .await;
        let n: u64 = client
            .query(&format!("SELECT count() FROM {rollup}"))
            .fetch_one()
            .await
            .unwrap();
        rollup_rows.push(format!("{rollup} {n} rows"));
    }
    println!(
        "{spans} client spans over {days} d loaded in {:.1} s; {}",
        loaded.as_secs_f64(),
        rollup_rows.join(", ")
    );
    let all = load_dir(&workspace_dashboards()).unwrap();
    let map = dashboard(&all, "otel-service-map");
    let range = TimeRange {
        from_ms: (start_ns / 1_000_000) as i64,
        to_ms: (end_ns / 1_000_000) as i64 + 1,
    };
    let ctx_vars = BTreeMap::new();
    let ctx = testkit::dashboards::QueryContext {
        range,
        interval: Duration::from_secs(60),
        variables: &ctx_vars,
    };
    let mut best: BTreeMap<String, Duration> = BTreeMap::new();
    for _ in 0..rounds {
        let run = run_dashboard(&client, &map, &RunOptions::new(range))
            .await
            .unwrap();
        for p in &run.panels {
            let r = p
                .result
                .as_ref()
                .unwrap_or_else(|e| panic!("{}: {e}", p.panel));
            let took = r.server_elapsed.unwrap_or(r.elapsed);
            let e = best
                .entry(format!("{} [{}]", p.panel, p.ref_id))
                .or_insert(took);
            *e = (*e).min(took);
        }
        for (panel, raw) in DEPENDENCY_TWINS {
            let sql = testkit::dashboards::interpolate(raw, &ctx).unwrap();
            let r = run_sql(&client, &sql).await.unwrap();
            let took = r.server_elapsed.unwrap_or(r.elapsed);
            let e = best.entry(format!("{panel} (raw)")).or_insert(took);
            *e = (*e).min(took);
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("\nService map over {days} d, best of {rounds}, ClickHouse-reported time per query:");
    println!("{:<40} {:>10} {:>12}", "panel", "rollup ms", "raw spans ms");
    for (panel, _) in DEPENDENCY_TWINS {
        println!(
            "{panel:<40} {:>10.1} {:>12.1}",
            ms(best[&format!("{panel} [A]")]),
            ms(best[&format!("{panel} (raw)")])
        );
    }
    for (k, v) in &best {
        println!("  {k}: {:.1} ms", ms(*v));
    }
    clickhouse::Client::default()
        .with_url(clickhouse_url())
        .query(&format!("DROP DATABASE `{database}`"))
        .execute()
        .await
        .unwrap();
}

/// The benchmarks' database: the collector's whole schema, created directly.
async fn bench_schema(database: &str) -> clickhouse::Client {
    let root = clickhouse::Client::default().with_url(clickhouse_url());
    let opts = SchemaOptions {
        database: database.to_string(),
        ttl_days: 0,
        cluster: None,
        dedup_window: 0,
    };
    for sql in create_statements(&opts) {
        root.query(&sql).execute().await.unwrap();
    }
    root.with_database(database)
}

/// `spans` spread evenly over the last `days` days: (start, end, step) in ns.
fn bench_times(spans: u64, days: u64) -> (u64, u64, u64) {
    let span_ns = days * 86_400 * 1_000_000_000;
    let end_ns = now_ns();
    (end_ns - span_ns, end_ns, span_ns / spans)
}

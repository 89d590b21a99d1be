//! What the collector stores for the shop: one trace from the request through the
//! relay to the worker, and the summary's three downstream calls side by side.

use crate::common;

use common::*;
use testkit::TestCollector;

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Span {
    #[serde(rename = "SpanId")]
    span_id: String,
    #[serde(rename = "ParentSpanId")]
    parent: String,
    #[serde(rename = "SpanName")]
    name: String,
    #[serde(rename = "SpanKind")]
    kind: String,
    #[serde(rename = "ServiceName")]
    service: String,
    #[serde(rename = "StatusCode")]
    status: String,
    #[serde(rename = "SpanAttributes")]
    attributes: Vec<(String, String)>,
    start: i64,
    end: i64,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

async fn spans(collector: &TestCollector, trace_id: &str, at_least: u64) -> Vec<Span> {
    let n = collector
        .wait_for_rows("otel_traces", &format!("TraceId = '{trace_id}'"), at_least)
        .await;
    assert!(n >= at_least, "only {n} spans of trace {trace_id} arrived");
    collector
        .client
        .query(
            "SELECT SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, StatusCode, \
             SpanAttributes, toUnixTimestamp64Nano(Timestamp) AS start, toInt64(start + Duration) AS end \
             FROM otel_traces WHERE TraceId = ? ORDER BY Timestamp",
        )
        .bind(trace_id)
        .fetch_all::<Span>()
        .await
        .unwrap()
}

fn traceparent() -> (String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    (
        format!(
            "00-{trace_id}-{}-01",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        ),
        trace_id,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_runs_from_the_request_through_the_relay_to_the_worker() {
    let collector = TestCollector::start("shop_traces").await;
    let env = Env::new("trace").await;
    let shop = RunningShop::start(env.config(), Some(&collector.grpc_endpoint())).await;
    let client = client();
    let token = token("tracer", "orders:write");
    let (header, trace_id) = traceparent();
    let r = client
        .post(format!("{}/orders", shop.base))
        .bearer_auth(&token)
        .header("traceparent", header)
        .header("Idempotency-Key", "traced-order")
        .json(&order_body(9, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // server + 2 database spans, then per event a producer, a consumer and its database span.
    // Spans arrive as each part ends, each process's in its own export: wait for every
    // span the checks below look at, not for a total.
    let filter = format!("TraceId = '{trace_id}' AND SpanName = 'INSERT processed_messages'");
    assert_eq!(collector.wait_for_rows("otel_traces", &filter, 3).await, 3);
    let filter = format!("TraceId = '{trace_id}' AND SpanKind IN ('Producer', 'Consumer')");
    assert_eq!(collector.wait_for_rows("otel_traces", &filter, 6).await, 6);
    let filter = format!("TraceId = '{trace_id}' AND SpanKind = 'Server'");
    assert_eq!(collector.wait_for_rows("otel_traces", &filter, 1).await, 1);
    let spans = spans(&collector, &trace_id, 12).await;
    for s in &spans {
        eprintln!(
            "{:>10} {:<9} {:<40} parent {}",
            s.service, s.kind, s.name, s.parent
        );
    }
    let server = spans
        .iter()
        .find(|s| s.kind == "Server")
        .expect("the server span");
    assert_eq!(server.name, "POST /orders");
    // One CLIENT span per statement and command under the request, with the
    // database conventions' attributes.
    let under_server: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == "Client" && s.parent == server.span_id)
        .collect();
    let statement = |name: &str| {
        under_server
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name:?} span under POST /orders: {under_server:#?}"))
    };
    let database = env.database_url.rsplit('/').next().unwrap();
    for name in [
        "BEGIN",
        "INSERT orders",
        "INSERT outbox",
        "SELECT pg_notify",
        "COMMIT",
    ] {
        let s = statement(name);
        assert_eq!(s.attr("db.system.name"), Some("postgresql"), "{s:?}");
        assert_eq!(s.attr("db.query.summary"), Some(name));
        assert_eq!(s.attr("db.namespace"), Some(database));
        assert_eq!(s.attr("server.port"), Some("5432"));
        assert!(s.attr("server.address").is_some(), "{s:?}");
        assert_eq!(s.status, "Unset", "{s:?}");
    }
    let insert = statement("INSERT orders");
    assert_eq!(insert.attr("db.operation.name"), Some("INSERT"));
    assert_eq!(insert.attr("db.collection.name"), Some("orders"));
    assert_eq!(
        statement("SELECT pg_notify").attr("db.collection.name"),
        None
    );
    let outbox_rows = under_server
        .iter()
        .filter(|s| s.name == "INSERT outbox")
        .count();
    assert_eq!(outbox_rows, 3, "one INSERT per outbox row");
    // Statements of one transaction run one after the other, inside the request.
    let (begin, commit) = (statement("BEGIN"), statement("COMMIT"));
    assert!(begin.end <= insert.start && insert.end <= commit.start);
    assert!(server.start <= begin.start && commit.end <= server.end);
    for name in ["EVALSHA idempotency.claim", "EVALSHA idempotency.complete"] {
        let s = statement(name);
        assert_eq!(s.attr("db.system.name"), Some("redis"), "{s:?}");
        assert_eq!(s.attr("db.operation.name"), Some("EVALSHA"));
        assert_eq!(s.attr("db.query.summary"), Some(name));
        assert_eq!(s.attr("db.namespace"), Some("0"));
        assert_eq!(s.attr("server.port"), Some("6379"));
        assert_eq!(s.attr("db.collection.name"), None);
    }
    let prefix = &env.name;
    for queue in ["payment", "email", "sms"] {
        let producer = spans
            .iter()
            .find(|s| s.kind == "Producer" && s.name == format!("publish {prefix}.{queue}"))
            .unwrap_or_else(|| panic!("the relay's producer span for {queue}"));
        let consumer = spans
            .iter()
            .find(|s| s.kind == "Consumer" && s.name == format!("process {prefix}.{queue}"))
            .unwrap_or_else(|| panic!("the worker's consumer span for {queue}"));
        assert_eq!(
            consumer.parent, producer.span_id,
            "the consumer continues the producer"
        );
        for s in [producer, consumer] {
            assert_eq!(s.attr("server.address"), Some("127.0.0.1"), "{s:?}");
            assert_eq!(s.attr("server.port"), Some("5672"), "{s:?}");
        }
        assert!(
            spans
                .iter()
                .any(|s| s.kind == "Client" && s.parent == consumer.span_id),
            "the worker's database call"
        );
    }
    assert!(spans.iter().all(|s| s.service == "shop"));
    // `sample-service report` draws them in the order's waterfall.
    let args = sample_service::report::ReportArgs {
        clickhouse_url: testkit::clickhouse_url(),
        database: collector.database.clone(),
        since_seconds: 600,
        trace_id: Some(trace_id.clone()),
        collector_grpc: collector.grpc_endpoint(),
        collector_http: collector.http_endpoint(),
        collector_admin: collector.admin_endpoint(),
        shop_url: None,
    };
    let mut report = Vec::new();
    sample_service::report::run(&args, &mut report)
        .await
        .expect("the report runs");
    let report = String::from_utf8(report).unwrap();
    for name in ["INSERT orders", "COMMIT", "EVALSHA idempotency.claim"] {
        assert!(
            report
                .lines()
                .any(|l| l.contains(name) && l.contains("CLIENT")),
            "{name} missing from the waterfall:\n{report}"
        );
    }
    shop.stop().await;
    env.cleanup().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_summary_calls_its_three_downstreams_in_parallel() {
    let collector = TestCollector::start("shop_fanout").await;
    let env = Env::new("fanout").await;
    let shop = RunningShop::start(env.config(), Some(&collector.grpc_endpoint())).await;
    let client = client();
    let token = token("tracer", "orders:write");
    let r = client
        .post(format!("{}/orders", shop.base))
        .bearer_auth(&token)
        .header("Idempotency-Key", "fanout-order")
        .json(&order_body(9, 1))
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_string();
    // Each downstream takes 150 ms: in sequence the summary would take 450 ms.
    let faults = serde_json::json!({
        "inventory": {"latency_ms": 150}, "shipping": {"latency_ms": 150}, "recommendations": {"latency_ms": 150}
    });
    let r = client
        .put(format!("{}/admin/faults", shop.base))
        .bearer_auth(token_for_admin())
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (header, trace_id) = traceparent();
    let r = client
        .get(format!("{}{location}/summary", shop.base))
        .bearer_auth(&token)
        .header("traceparent", header)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // server, the order read, three client calls and the three downstream servers; the
    // downstreams export on their own, so wait for all four server spans and the calls.
    let filter = format!("TraceId = '{trace_id}' AND SpanKind = 'Server'");
    assert_eq!(collector.wait_for_rows("otel_traces", &filter, 4).await, 4);
    let filter =
        format!("TraceId = '{trace_id}' AND SpanKind = 'Client' AND startsWith(SpanName, 'GET')");
    assert!(collector.wait_for_rows("otel_traces", &filter, 3).await >= 3);
    let spans = spans(&collector, &trace_id, 8).await;
    let server = spans
        .iter()
        .find(|s| s.kind == "Server" && s.service == "shop")
        .expect("the summary's server span");
    assert_eq!(server.name, "GET /orders/{id}/summary");
    let calls: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == "Client" && s.parent == server.span_id && s.name.starts_with("GET"))
        .collect();
    assert_eq!(calls.len(), 3, "{spans:?}");
    for name in ["inventory", "shipping", "recommendations"] {
        let downstream = spans
            .iter()
            .find(|s| s.service == name)
            .unwrap_or_else(|| panic!("{name}'s server span"));
        assert!(
            calls.iter().any(|c| c.span_id == downstream.parent),
            "{name} continues a client span"
        );
    }
    // All three overlap: each starts before any of them ends.
    let latest_start = calls.iter().map(|c| c.start).max().unwrap();
    let earliest_end = calls.iter().map(|c| c.end).min().unwrap();
    assert!(latest_start < earliest_end, "the calls overlap");
    let total_ms = (server.end - server.start) / 1_000_000;
    eprintln!("summary: 3 calls of 150 ms overlapped; the server span took {total_ms} ms");
    shop.stop().await;
    env.cleanup().await;
    collector.stop().await;
}

fn token_for_admin() -> String {
    token("operator", "admin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_idempotency_back_stop_is_not_an_error_on_its_span() {
    let collector = TestCollector::start("shop_unique").await;
    let env = Env::new("unique").await;
    let shop = RunningShop::start(env.config(), Some(&collector.grpc_endpoint())).await;
    let client = client();
    let token = token("tracer", "orders:write");
    let post = |header: String| {
        client
            .post(format!("{}/orders", shop.base))
            .bearer_auth(&token)
            .header("traceparent", header)
            .header("Idempotency-Key", "back-stop-order")
            .json(&order_body(9, 1))
            .send()
    };
    let (first, _) = traceparent();
    assert!(post(first).await.unwrap().status().is_success());
    // Redis loses the idempotency record: the same key reaches PostgreSQL,
    // whose UNIQUE (tenant, idempotency_key) answers for it.
    let redis = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:idem:*", env.name))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !keys.is_empty(),
        "the first request left an idempotency record"
    );
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (second, trace_id) = traceparent();
    assert!(post(second).await.unwrap().status().is_success());

    let filter = format!("TraceId = '{trace_id}' AND SpanKind = 'Server'");
    assert_eq!(collector.wait_for_rows("otel_traces", &filter, 1).await, 1);
    let spans = spans(&collector, &trace_id, 3).await;
    let insert = spans
        .iter()
        .find(|s| s.name == "INSERT orders")
        .unwrap_or_else(|| panic!("no INSERT orders span: {spans:#?}"));
    assert_eq!(insert.attr("db.response.status_code"), Some("23505"));
    assert_eq!(insert.status, "Unset", "{insert:?}");
    assert_eq!(insert.attr("error.type"), None);
    // The lookup that resolves it is a span of its own, and nothing failed.
    assert!(spans
        .iter()
        .any(|s| s.name == "SELECT orders" && s.kind == "Client"));
    assert!(spans.iter().all(|s| s.status != "Error"), "{spans:#?}");
    shop.stop().await;
    env.cleanup().await;
    collector.stop().await;
}

//! Server-side time of every web UI page on a data set of more than a million
//! spans, and of the trace page for a 5,000-span trace.
//!
//! ```sh
//! CLICKHOUSE_URL=… cargo test --release -p collector --test ui_bench -- --ignored --nocapture
//! ```
//! (`BENCH_TRACES` traces of 10 spans, default 120 000 = 1.2 M spans;
//! `BENCH_ROUNDS` timed requests per page, default 20.)
//!
//! The spans are generated inside ClickHouse (`INSERT … SELECT … FROM numbers`,
//! as the dashboards' query-time benchmark does), so the rollups, the trace-id
//! table and their views fill exactly as for the collector's INSERTs: traces of
//! four services crossing HTTP calls and a queue, with logs. `bench load`'s
//! requests are one service's flat traces that its clients repeat, which would
//! leave the service map and the per-route figures nothing to show. The
//! 5,000-span trace goes through the collector as a real OTLP/HTTP request.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use testkit::TestCollector;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// 10 spans per trace: frontend → checkout (database, cache, a message) →
/// worker → shipping. Spread over the 50 minutes before `end_ns`.
fn spans_sql(traces: u64, end_ns: u64) -> String {
    let start_ns = end_ns - 50 * 60 * 1_000_000_000;
    let step = 50 * 60 * 1_000_000_000 / traces;
    format!(
        "INSERT INTO otel_traces (Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind, \
             ServiceName, ResourceAttributes, ScopeName, SpanAttributes, Duration, StatusCode) \
         SELECT fromUnixTimestamp64Nano(toInt64({start_ns} + k * {step} + j * 1000000)), \
                concat(lower(hex(cityHash64(k, 7))), lower(hex(cityHash64(k, 8)))), \
                lower(hex(cityHash64(k, j))), \
                if(j = 0, '', lower(hex(cityHash64(k, [0, 0, 1, 2, 2, 2, 5, 6, 7, 8][j + 1])))), \
                [concat('GET ', route), 'POST /orders', 'POST /orders', 'SELECT orders', 'EVALSHA', \
                 'orders publish', 'orders process', 'POST /ship', 'POST /ship', 'label'][j + 1], \
                ['Server', 'Client', 'Server', 'Client', 'Client', 'Producer', 'Consumer', 'Client', 'Server', 'Internal'][j + 1], \
                service, \
                map('service.name', service, 'service.version', if(service = 'checkout' AND k % 10 = 0, '2.1-canary', '2.0')), \
                'bench', \
                multiIf(j = 0, map('http.route', route, 'http.response.status_code', if(failed, '500', '200')), \
                        j IN (2, 8), map('http.route', if(j = 2, '/orders', '/ship'), 'http.response.status_code', '200'), \
                        j IN (5, 6), map('messaging.destination.name', 'orders'), \
                        map('db.system', if(j = 3, 'postgresql', 'redis'))), \
                toUInt64((11 - j) * 2e6 * exp(0.6 * randNormal(0, 1))), \
                if(failed AND j IN (0, 2), 'Error', 'Unset') \
         FROM (SELECT intDiv(number, 10) AS k, number % 10 AS j, \
                      ['/checkout', '/products/{{id}}', '/cart', '/orders/{{id}}'][1 + k % 4] AS route, \
                      cityHash64(k, 3) % 100 = 0 AS failed, \
                      ['frontend', 'frontend', 'checkout', 'checkout', 'checkout', 'checkout', 'worker', 'worker', 'shipping', 'shipping'][j + 1] AS service \
               FROM numbers({n}))",
        n = traces * 10,
    )
}

/// Two log lines per trace (checkout and worker), on their spans.
fn logs_sql(traces: u64, end_ns: u64) -> String {
    let start_ns = end_ns - 50 * 60 * 1_000_000_000;
    let step = 50 * 60 * 1_000_000_000 / traces;
    format!(
        "INSERT INTO otel_logs (Timestamp, TraceId, SpanId, SeverityText, SeverityNumber, ServiceName, Body, ResourceAttributes) \
         SELECT fromUnixTimestamp64Nano(toInt64({start_ns} + k * {step} + (2 + w * 4) * 1000000)), \
                concat(lower(hex(cityHash64(k, 7))), lower(hex(cityHash64(k, 8)))), \
                lower(hex(cityHash64(k, if(w = 0, 2, 6)))), \
                if(failed, 'ERROR', 'INFO'), if(failed, 17, 9), \
                if(w = 0, 'checkout', 'worker'), \
                if(w = 0, if(failed, concat('payment declined for order ', toString(k)), concat('order ', toString(k), ' accepted')), \
                   concat('order ', toString(k), ' shipped')), \
                map('service.name', if(w = 0, 'checkout', 'worker')) \
         FROM (SELECT intDiv(number, 2) AS k, number % 2 AS w, cityHash64(k, 3) % 100 = 0 AS failed \
               FROM numbers({n}))",
        n = traces * 2,
    )
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    // Nearest rank.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: generates a million spans; run with --release --ignored --nocapture"]
async fn ui_page_time() {
    let traces = env_u64("BENCH_TRACES", 120_000);
    let rounds = env_u64("BENCH_ROUNDS", 20) as usize;
    let c = TestCollector::start("bench_ui").await;
    let end_ns = now_ns();
    let t = Instant::now();
    for sql in [spans_sql(traces, end_ns), logs_sql(traces, end_ns)] {
        c.client
            .query(&sql)
            .with_setting("max_insert_threads", "2")
            .execute()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let loaded = t.elapsed();

    // The 5,000-span trace through the collector, as OTLP/HTTP protobuf.
    let big = testkit::synthetic::traces_request(0, 1, 5000, end_ns - 60_000_000_000);
    let big_trace = const_hex::encode(&big.resource_spans[0].scope_spans[0].spans[0].trace_id);
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/traces", c.http_endpoint()))
        .header("content-type", "application/x-protobuf")
        .body(big.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let spans = c.wait_for_rows("otel_traces", "", traces * 10 + 5000).await;
    assert_eq!(spans, traces * 10 + 5000);
    // Merged as a running server would have merged them by now.
    for table in [
        "otel_traces_red_1m",
        "otel_traces_red_1h",
        "otel_traces_trace_id_ts",
    ] {
        let _ = c
            .client
            .query(&format!("OPTIMIZE TABLE {table} FINAL"))
            .execute()
            .await;
    }
    let logs: u64 = c
        .client
        .query("SELECT count() FROM otel_logs")
        .fetch_one()
        .await
        .unwrap();
    let rollup: u64 = c
        .client
        .query("SELECT count() FROM otel_traces_red_1m")
        .fetch_one()
        .await
        .unwrap();
    println!(
        "{spans} spans ({traces} traces of 10 + one of 5000), {logs} log lines, \
         otel_traces_red_1m {rollup} rows; generated in {:.1} s",
        loaded.as_secs_f64()
    );

    let small_trace: String = c
        .client
        .query("SELECT concat(lower(hex(cityHash64(toUInt64(77), 7))), lower(hex(cityHash64(toUInt64(77), 8))))")
        .fetch_one()
        .await
        .unwrap();
    let pages = [
        ("Services", "/?range=1h".to_string()),
        (
            "Service (checkout)",
            "/service/checkout?range=1h".to_string(),
        ),
        ("Trace search, newest", "/traces?range=1h".to_string()),
        (
            "Trace search, filtered, slowest",
            "/traces?range=1h&service=checkout&name=POST%20%2Forders&min_ms=20&sort=slowest"
                .to_string(),
        ),
        (
            "Trace search, attribute",
            "/traces?range=1h&attr=http.route%3D%2Fcart".to_string(),
        ),
        ("Trace (10 spans)", format!("/trace/{small_trace}")),
        ("Trace (5,000 spans)", format!("/trace/{big_trace}")),
        ("Logs, newest", "/logs?range=1h".to_string()),
        (
            "Logs, text search",
            "/logs?range=1h&q=payment%20declined".to_string(),
        ),
        ("Service map", "/map?range=1h".to_string()),
        ("Collector", "/collector?range=1h".to_string()),
    ];
    let base = format!("http://{}", c.collector.ui_addr.unwrap());
    let http = reqwest::Client::new();
    println!("| page | median | p99 | size |\n|---|---|---|---|");
    for (name, path) in pages {
        let mut times = Vec::new();
        let mut size = 0;
        for round in 0..=rounds {
            let resp = http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 200, "{path}");
            let ms: f64 = resp
                .headers()
                .get("server-timing")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("page;dur="))
                .and_then(|v| v.parse().ok())
                .expect("Server-Timing");
            size = resp.bytes().await.unwrap().len();
            // The first request warms caches and is not counted.
            if round > 0 {
                times.push(ms);
            }
        }
        times.sort_by(f64::total_cmp);
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {} KiB |",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            size / 1024
        );
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    c.stop().await;
}

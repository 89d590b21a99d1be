//! The web UI over real stored data: the official OpenTelemetry Rust SDK exports
//! spans and logs of three services to a real collector, which writes them into
//! ClickHouse; every page is then fetched over HTTP and checked for the services,
//! figures, spans, parents, logs and edges that data must show. Hostile search
//! values must come back as text, not SQL.

use crate::ui_fixture;

use std::time::Duration;

use testkit::{eventually, TestCollector};
use ui_fixture::{load, Fixture};

async fn get(c: &TestCollector, path: &str) -> (u16, String) {
    let addr = c.collector.ui_addr.expect("the UI is on");
    let resp = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("the UI answers");
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

/// The page once it shows `marker` (rollup rows and views land a moment after
/// the spans).
async fn page_with(c: &TestCollector, path: &str, marker: &str) -> String {
    eventually(Duration::from_secs(30), || async {
        let (status, body) = get(c, path).await;
        (status == 200 && body.contains(marker)).then_some(body)
    })
    .await
    .unwrap_or_else(|| {
        let (status, body) = futures_block(get(c, path));
        panic!("{path} never showed {marker:?}: {status}\n{body}")
    })
}

fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// The `<tr …>` element that contains `needle`.
fn row_with<'a>(html: &'a str, needle: &str) -> &'a str {
    let at = html
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not on the page"));
    let start = html[..at].rfind("<tr").expect("inside a row");
    let end = at + html[at..].find("</tr>").expect("row ends");
    &html[start..end]
}

/// The millisecond figures (`12.3 ms`) of a row, in order.
fn millis(row: &str) -> Vec<f64> {
    row.split('>')
        .filter_map(|cell| cell.strip_suffix(" ms</td"))
        .filter_map(|v| v.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_the_stored_data() {
    let c = TestCollector::start("ui_pages").await;
    let f: Fixture = load(&c).await;

    // Services: both serving services with their figures, versions for the canary.
    // (The rollups' views write a moment after the spans' own table.)
    let home = page_with(&c, "/?range=1h", "version 2.1-canary").await;
    let frontend = row_with(&home, "href=\"/service/frontend?range=1h\"");
    // 1 checkout request + 30 product requests, 3 of which failed.
    assert!(frontend.contains(">31</td>"), "{frontend}");
    assert!(frontend.contains(">9.68</td>"), "{frontend}");
    assert!(
        home.contains("worker"),
        "the consumer-only service is listed"
    );
    assert!(home.contains("<svg"), "charts are drawn");

    // Service: its routes with quantiles from the rollup (every product request
    // took 20 ms, so each quantile is 20 ms within the sketch's 1 %).
    let svc = page_with(&c, "/service/frontend?range=1h", "/products").await;
    let products = row_with(&svc, "<td>/products</td>");
    let q = millis(products);
    assert_eq!(q.len(), 4, "{products}");
    assert!(q.iter().all(|v| (19.8..=20.2).contains(v)), "{products}");
    assert!(svc.contains("id=\"downstream\""), "downstream calls listed");
    assert!(
        svc.contains(&f.order_trace),
        "the slowest request is the order"
    );
    let checkout = page_with(&c, "/service/checkout?range=1h", "charge card").await;
    assert!(checkout.contains("worker"), "checkout calls the worker");

    // Trace search: the order trace by route, by attribute, by errors; ordering.
    let found = page_with(
        &c,
        "/traces?range=1h&service=checkout&name=POST%20%2Forders",
        &f.order_trace,
    )
    .await;
    let hit = row_with(&found, &format!("/trace/{}", f.order_trace));
    assert!(hit.contains(">7</td>"), "span count: {hit}");
    assert!(hit.contains(">3</td>"), "services: {hit}");
    let by_attr = get(&c, "/traces?range=1h&attr=order.id%3D42").await.1;
    assert!(by_attr.contains(&f.order_trace));
    assert!(!by_attr.contains(&f.product_traces[0]));
    let errors = get(&c, "/traces?range=1h&service=frontend&errors=1")
        .await
        .1;
    assert_eq!(
        f.product_traces
            .iter()
            .filter(|t| errors.contains(t.as_str()))
            .count(),
        3,
        "the three failed product requests"
    );
    let slow = get(&c, "/traces?range=1h&min_ms=90&sort=slowest").await.1;
    assert!(slow.contains(&f.order_trace) && !slow.contains(&f.product_traces[0]));
    let slowest = get(&c, "/traces?range=1h&sort=slowest").await.1;
    let first_trace = slowest.find("/trace/").unwrap();
    assert!(
        slowest[first_trace..].starts_with(&format!("/trace/{}", f.big_trace)),
        "the 1500-span trace is the slowest"
    );

    // Trace: tree order, parents, critical path, attributes, exception, logs.
    let trace = page_with(&c, &format!("/trace/{}", f.order_trace), "charge card").await;
    let positions: Vec<usize> = f
        .order_spans
        .iter()
        .map(|(name, id, _)| {
            trace
                .find(&format!("data-span-id=\"{id}\""))
                .unwrap_or_else(|| panic!("span {name} missing"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "depth-first order"
    );
    for (name, id, parent) in &f.order_spans {
        assert!(
            trace.contains(&format!(
                "data-span-id=\"{id}\" data-parent-id=\"{parent}\""
            )),
            "{name}'s parent"
        );
    }
    assert!(
        trace.contains("class=\"wf-row crit"),
        "critical path marked"
    );
    assert!(trace.contains("Exception"), "exception event shown");
    assert!(trace.contains("CardDeclined"));
    assert!(trace.contains("order.id"), "attributes shown");
    assert!(trace.contains("service.version"), "resource shown");
    assert!(trace.contains("payment declined"), "the trace's log lines");
    assert!(trace.contains("Links"), "the consumer's link");
    let big = page_with(&c, &format!("/trace/{}", f.big_trace), "batch").await;
    assert_eq!(big.matches("data-span-id=").count(), 1500);

    // Logs: by service, severity, text, trace id; lines link to their trace.
    let logs = page_with(&c, "/logs?range=1h&severity=error", "payment declined").await;
    assert!(
        !logs.contains("checkout started"),
        "INFO lines filtered out"
    );
    assert!(logs.contains(&format!("/trace/{}", f.order_trace)));
    let by_trace = get(&c, &format!("/logs?range=1h&trace_id={}", f.order_trace))
        .await
        .1;
    assert_eq!(
        by_trace.matches("<td class=\"body\">").count(),
        3,
        "{by_trace}"
    );
    let by_text = get(&c, "/logs?range=1h&q=Order%20PROCESSED").await.1;
    assert_eq!(by_text.matches("<td class=\"body\">").count(), 1);
    let by_service = get(&c, "/logs?range=1h&service=worker").await.1;
    assert!(by_service.contains("order processed") && !by_service.contains("payment"));

    // Service map: the call and the messaging edge, once each.
    let map = page_with(&c, "/map?range=1h", "data-child=\"worker\"").await;
    let call = row_with(
        &map,
        "<tr class=\"edge\" data-parent=\"frontend\" data-child=\"checkout\"",
    );
    assert!(
        call.contains(">call</td>") && call.contains(">1</td>"),
        "{call}"
    );
    let messaging = row_with(
        &map,
        "<tr class=\"edge\" data-parent=\"checkout\" data-child=\"worker\"",
    );
    assert!(
        messaging.contains(">messaging</td>") && messaging.contains(">1</td>"),
        "the link to the producer is not counted again: {messaging}"
    );
    assert_eq!(map.matches("<tr class=\"edge\"").count(), 2, "{map}");
    assert!(map.contains("id=\"service-map\""));

    // Collector: the counters of /metrics.
    let (_, metrics) = c.admin_get("/metrics").await;
    let accepted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("collector_items_accepted_total{signal=\"traces\"} "))
        .unwrap()
        .to_string();
    let own = get(&c, "/collector").await.1;
    let traces_row = row_with(&own, "<td>traces</td>");
    assert!(
        traces_row.contains(&format!(">{accepted}</td>")),
        "{traces_row}"
    );
    assert!(own.contains("otel_traces"), "per-table INSERTs");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_search_values_are_text() {
    let c = TestCollector::start("ui_hostile").await;
    let f = load(&c).await;
    let hostile = [
        "' OR 1=1 --",
        "\\' OR ''='",
        "x'); DROP TABLE otel_traces; --",
        "\\\\\"}{from:UInt32}",
        "%27%3B",
    ];
    for h in hostile {
        let v = enc(h);
        for path in [
            format!("/traces?range=1h&service={v}"),
            format!("/traces?range=1h&name={v}"),
            format!("/traces?range=1h&attr={v}%3D{v}"),
            format!("/logs?range=1h&q={v}&service={v}"),
            format!("/logs?range=1h&trace_id={v}"),
            format!("/service/{v}?range=1h"),
        ] {
            let (status, body) = get(&c, &path).await;
            assert_eq!(status, 200, "{path}: {body}");
            assert!(
                !body.contains(&f.order_trace) && !body.contains("payment declined"),
                "{path} matched data"
            );
        }
        let (status, _) = get(&c, &format!("/trace/{v}")).await;
        assert_eq!(status, 404);
    }
    // The quote-and-backslash log line is found by exactly its text.
    let logs = page_with(
        &c,
        &format!("/logs?range=1h&q={}", enc("card 'x' \\ rejected")),
        "payment declined",
    )
    .await;
    assert_eq!(logs.matches("<td class=\"body\">").count(), 1);
    // Shown escaped, never as markup.
    assert!(logs.contains("&lt;b&gt;"), "HTML in a log body is escaped");
    // Tables are all still there and nothing was written by the UI.
    let n: u64 = c
        .client
        .query("SELECT count() FROM otel_traces")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(n, f.spans as u64);
    // Bad input is a 400 with the reason.
    for (path, why) in [
        ("/traces?min_ms=fast", "not a number"),
        ("/traces?attr=novalue", "key=value"),
        ("/logs?severity=loud", "severity"),
        ("/?range=2w", "unknown range"),
        ("/?from=2026-01-02T00:00&to=2026-01-01T00:00", "ends before"),
    ] {
        let (status, body) = get(&c, path).await;
        assert_eq!(status, 400, "{path}");
        assert!(body.contains(why), "{path}: {body}");
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_pages_say_what_to_do() {
    let c = TestCollector::start("ui_empty").await;
    for path in ["/", "/traces", "/logs", "/map"] {
        let (status, body) = get(&c, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            body.contains("Point an OTLP exporter at this collector")
                && body.contains(&c.collector.grpc_addr.to_string()),
            "{path}: {body}"
        );
    }
    let (status, body) = get(&c, "/trace/0123456789abcdef0123456789abcdef").await;
    assert_eq!(status, 404);
    assert!(body.contains("search the traces"));
    let (status, _) = get(&c, "/nowhere").await;
    assert_eq!(status, 404);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_disabling() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let users = dir.path().join("users");
    std::fs::write(&tokens, "ui-token\n").unwrap();
    std::fs::write(&users, "ann:s3cret\n").unwrap();
    let db = testkit::unique_database("ui_auth");
    let mut config = testkit::test_config(&db);
    config.ui.auth_tokens_file = tokens.display().to_string();
    config.ui.basic_auth_file = users.display().to_string();
    let c = TestCollector::start_with(config).await;
    let url = format!("http://{}/", c.collector.ui_addr.unwrap());
    let http = reqwest::Client::new();
    let anonymous = http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    let bearer = http.get(&url).bearer_auth("ui-token").send().await.unwrap();
    assert_eq!(bearer.status().as_u16(), 200);
    let basic = http
        .get(&url)
        .basic_auth("ann", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status().as_u16(), 200);
    let wrong = http
        .get(&url)
        .basic_auth("ann", Some("guess"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    c.stop().await;

    let db = testkit::unique_database("ui_off");
    let mut config = testkit::test_config(&db);
    config.ui.addr = String::new();
    let c = TestCollector::start_with(config).await;
    assert!(c.collector.ui_addr.is_none());
    c.stop().await;
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

//! The web UI in a real headless browser (Debian's `chromium` driven through
//! `chromedriver` with fantoccini): every page of a collector holding the SDK
//! fixture loads without console errors, the waterfall's bars stand in the tree's
//! order with widths and offsets in proportion to the spans' times, and the links
//! between pages lead where they say. Screenshots of every page are written to
//! `target/tmp/ui-screenshots/`.
//!
//! Needs `chromium` and `chromium-driver` (scripts/test.sh installs them).

use crate::ui_fixture;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use testkit::{eventually, free_port, TestCollector};

/// `chromedriver` on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (apt-get install chromium chromium-driver; scripts/test.sh does)");
        let d = Driver { child, port };
        let status = format!("http://127.0.0.1:{port}/status");
        eventually(Duration::from_secs(20), || async {
            let r = reqwest::get(&status).await.ok()?;
            r.status().is_success().then_some(())
        })
        .await
        .expect("chromedriver answers");
        d
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver's browser log (`console.*` and page errors), which WebDriver
/// itself does not define.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a browser session")
}

/// Console entries at error level since the last call.
async fn console_errors(b: &Client) -> Vec<String> {
    let log = b.issue_cmd(BrowserLog).await.expect("browser log");
    log.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

struct Visit<'a> {
    b: &'a Client,
    shots: std::path::PathBuf,
}

impl Visit<'_> {
    /// Checks the page has loaded clean and keeps a screenshot of it.
    async fn check(&self, name: &str, heading: &str) {
        let h1 = self
            .b
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css("main h1"))
            .await
            .unwrap_or_else(|e| panic!("{name}: no heading: {e}"));
        let text = h1.text().await.unwrap();
        assert!(text.starts_with(heading), "{name}: heading {text:?}");
        let errors = console_errors(self.b).await;
        assert!(errors.is_empty(), "{name}: console errors {errors:?}");
        let png = self.b.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    async fn path(&self) -> String {
        self.b.current_url().await.unwrap().path().to_string()
    }

    async fn click(&self, css: &str) {
        self.b
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_in_a_real_browser() {
    let c = TestCollector::start("ui_browser").await;
    let f = ui_fixture::load(&c).await;
    let base = format!("http://{}", c.collector.ui_addr.unwrap());
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let b = browser(&driver, profile.path()).await;
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let v = Visit {
        b: &b,
        shots: shots.clone(),
    };

    // Services, then the link to one service.
    b.goto(&format!("{base}/?range=1h")).await.unwrap();
    // The rollup rows arrive a moment after the spans.
    eventually(Duration::from_secs(30), || async {
        b.refresh().await.ok()?;
        b.find(Locator::Css("#services a[href^='/service/checkout']"))
            .await
            .ok()
    })
    .await
    .expect("checkout listed");
    v.check("services", "Services").await;
    v.click("#services a[href^='/service/frontend']").await;
    assert_eq!(v.path().await, "/service/frontend");
    v.check("service", "Service frontend").await;

    // Its slowest request opens the order trace.
    v.click(&format!("#slowest a[href='/trace/{}']", f.order_trace))
        .await;
    assert_eq!(v.path().await, format!("/trace/{}", f.order_trace));
    v.check("trace", "Trace").await;
    let bars = b
        .execute(
            "return Array.from(document.querySelectorAll('#waterfall .wf-row')).map(function (r) {
               var t = r.querySelector('.wf-track').getBoundingClientRect();
               var b = r.querySelector('.wf-bar').getBoundingClientRect();
               return [r.dataset.spanId, b.left - t.left, b.width, t.width, r.classList.contains('crit')];
             });",
            vec![],
        )
        .await
        .unwrap();
    let bars: Vec<(String, f64, f64, f64, bool)> = serde_json::from_value(bars).unwrap();
    let ids: Vec<&str> = bars.iter().map(|b| b.0.as_str()).collect();
    let expected: Vec<&str> = f.order_spans.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(ids, expected, "bars in the tree's order");
    let track = bars[0].3;
    for ((id, left, width, _, _), (start_ms, dur_ms)) in bars.iter().zip(&f.order_times) {
        // The trace lasts 100 ms: a millisecond is 1 % of the track.
        let (want_left, want_width) = (
            track * *start_ms as f64 / 100.0,
            track * *dur_ms as f64 / 100.0,
        );
        assert!(
            (left - want_left).abs() <= 1.5,
            "{id}: left {left} want {want_left}"
        );
        assert!(
            (width - want_width).abs() <= 1.5,
            "{id}: width {width} want {want_width}"
        );
    }
    assert!(
        bars[0].4 && bars[1].4 && bars[2].4,
        "root → call → checkout on the critical path"
    );
    // A span's fold-out shows its exception.
    v.click(&format!("#span-{} > summary", f.order_spans[4].1))
        .await;
    let detail = b
        .find(Locator::Css(&format!(
            "#span-{} .exception",
            f.order_spans[4].1
        )))
        .await
        .unwrap();
    assert!(detail.text().await.unwrap().contains("CardDeclined"));
    v.check("trace-open", "Trace").await;
    // A log line's span link jumps to the span.
    v.click("#trace-logs a[href^='#span-']").await;

    // Search: the navigation link, then a result.
    v.click("header nav a[href^='/traces']").await;
    v.check("traces", "Traces").await;
    b.goto(&format!(
        "{base}/traces?range=1h&service=checkout&sort=slowest"
    ))
    .await
    .unwrap();
    v.check("traces-checkout", "Traces").await;
    v.click(&format!("#traces a[href='/trace/{}']", f.order_trace))
        .await;
    assert_eq!(v.path().await, format!("/trace/{}", f.order_trace));

    // Logs: a line's trace link.
    v.click("header nav a[href^='/logs']").await;
    v.check("logs", "Logs").await;
    v.click(&format!("#logs a[href^='/trace/{}']", f.order_trace))
        .await;
    assert_eq!(v.path().await, format!("/trace/{}", f.order_trace));

    // Map: nodes and edges drawn; a node opens its service.
    v.click("header nav a[href^='/map']").await;
    v.check("map", "Service map").await;
    let drawn = b
        .execute(
            "return [document.querySelectorAll('#service-map g.node').length,
                     document.querySelectorAll('#service-map g.edge').length];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(drawn, json!([4, 2]), "4 services, 2 edges");
    v.click("#service-map a[href^='/service/worker']").await;
    assert_eq!(v.path().await, "/service/worker");
    v.check("service-worker", "Service worker").await;

    // The collector's own page, and the range picker.
    v.click("header nav a[href^='/collector']").await;
    v.check("collector", "Collector").await;
    let picker = b.find(Locator::Css("select#range")).await.unwrap();
    picker.select_by_value("6h").await.unwrap();
    eventually(Duration::from_secs(10), || async {
        let url = b.current_url().await.ok()?;
        url.query().unwrap_or("").contains("range=6h").then_some(())
    })
    .await
    .expect("the picker reloads with the new range");
    v.check("collector-6h", "Collector").await;
    let value: Value = b
        .execute(
            "return document.querySelector('select#range').value;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(value, json!("6h"));

    b.close().await.unwrap();
    drop(driver);
    c.stop().await;
    println!("screenshots in {}", shots.display());
}

//! The RED report: printed as a table, written as JSON by `--json FILE`. Both show the same
//! numbers. JSON fields (stable; `schema` changes when they do):
//!
//! ```text
//! schema              "loadgen.report.v1"
//! seed                u64, the mix seed (given or drawn)
//! base_urls           [string]
//! concurrency, principals, products      the flags
//! elapsed_s           f64, wall time from the start until every worker and the burst
//!                     task finished
//! stopped_by          "requests" | "duration" | "no_answer" | "interrupted"
//! requests            u64, requests sent (= total.requests)
//! held_back           u64, times a request waited or a scenario moved to another principal
//!                     because of a Retry-After (429 / 503)
//! bursts              [{principal: "user-N", sent, rate_limited, shed}]
//! routes              [route], one per route that saw a request, in the order below
//! total               route, all routes together ("route": "total")
//! sample_order_traces [{trace_id, span_id, order_id, location}] for up to 10 new orders
//!                     (202, not replayed), when traceparent headers were sent
//!
//! route:
//!   route             "GET /categories" | "GET /products/{id}" | "POST /orders" |
//!                     "GET /orders/{id}" | "GET /orders/{id}/summary"
//!   requests          u64
//!   rate_rps          f64, requests / elapsed_s
//!   error_pct         f64, 100 × (5xx other than 503 + transport errors) / requests
//!   latency_ms        {p50, p95, p99, p999, max, mean}, f64 ms of the answered requests
//!                     (null when none was answered)
//!   statuses          {"200": n, "404": n, …}, answered requests by status code
//!   outcomes          {ok, expected_4xx, unexpected_status, rate_limited, shed,
//!                      server_error, transport_error}; they add up to requests
//!   replayed          u64, responses with `Idempotent-Replayed: true`
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::{OutcomeCounts, Route, RouteStats, Stats};

pub const SCHEMA: &str = "loadgen.report.v1";

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub seed: u64,
    pub base_urls: Vec<String>,
    pub concurrency: u32,
    pub principals: u32,
    pub products: u32,
    pub elapsed_s: f64,
    pub stopped_by: StopReason,
    pub requests: u64,
    pub held_back: u64,
    pub bursts: Vec<Burst>,
    pub routes: Vec<RouteReport>,
    pub total: RouteReport,
    pub sample_order_traces: Vec<OrderTrace>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Requests,
    Duration,
    NoAnswer,
    Interrupted,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Burst {
    pub principal: String,
    pub sent: u64,
    pub rate_limited: u64,
    pub shed: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OrderTrace {
    pub trace_id: String,
    pub span_id: String,
    pub order_id: String,
    pub location: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteReport {
    pub route: String,
    pub requests: u64,
    pub rate_rps: f64,
    pub error_pct: f64,
    pub latency_ms: Option<Latency>,
    pub statuses: BTreeMap<String, u64>,
    pub outcomes: OutcomeCounts,
    pub replayed: u64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

pub struct RunFacts {
    pub seed: u64,
    pub base_urls: Vec<String>,
    pub concurrency: u32,
    pub principals: u32,
    pub products: u32,
    pub elapsed_s: f64,
    pub stopped_by: StopReason,
    pub held_back: u64,
    pub bursts: Vec<Burst>,
    pub sample_order_traces: Vec<OrderTrace>,
}

fn ms(us: u64) -> f64 {
    // Microsecond histogram → milliseconds with microsecond resolution.
    us as f64 / 1000.0
}

pub fn route_report(name: &str, s: &RouteStats, elapsed_s: f64) -> RouteReport {
    let requests = s.requests();
    let h = &s.latency_us;
    let latency_ms = (!h.is_empty()).then(|| Latency {
        p50: ms(h.value_at_quantile(0.50)),
        p95: ms(h.value_at_quantile(0.95)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
        mean: h.mean().round() / 1000.0,
    });
    RouteReport {
        route: name.to_string(),
        requests,
        rate_rps: if elapsed_s > 0.0 {
            requests as f64 / elapsed_s
        } else {
            0.0
        },
        error_pct: if requests == 0 {
            0.0
        } else {
            100.0 * s.outcomes.errors() as f64 / requests as f64
        },
        latency_ms,
        statuses: s
            .statuses
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        outcomes: s.outcomes,
        replayed: s.replayed,
    }
}

impl Report {
    pub fn new(stats: &Stats, facts: RunFacts) -> Self {
        let routes: Vec<RouteReport> = Route::ALL
            .iter()
            .filter_map(|r| {
                stats
                    .routes
                    .get(r)
                    .map(|s| route_report(r.template(), s, facts.elapsed_s))
            })
            .collect();
        let total = route_report("total", &stats.total(), facts.elapsed_s);
        Self {
            schema: SCHEMA,
            seed: facts.seed,
            base_urls: facts.base_urls,
            concurrency: facts.concurrency,
            principals: facts.principals,
            products: facts.products,
            elapsed_s: facts.elapsed_s,
            stopped_by: facts.stopped_by,
            requests: total.requests,
            held_back: facts.held_back,
            bursts: facts.bursts,
            routes,
            total,
            sample_order_traces: facts.sample_order_traces,
        }
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let header = [
            "route", "requests", "rate/s", "error%", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms",
        ];
        let _ = writeln!(
            out,
            "{:<26} {:>9} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9}  statuses",
            header[0], header[1], header[2], header[3], header[4], header[5], header[6], header[7]
        );
        for r in self.routes.iter().chain(std::iter::once(&self.total)) {
            let (p50, p95, p99, p999) = match r.latency_ms {
                Some(l) => (fmt_ms(l.p50), fmt_ms(l.p95), fmt_ms(l.p99), fmt_ms(l.p999)),
                None => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            let _ = writeln!(
                out,
                "{:<26} {:>9} {:>9.1} {:>7.2} {:>9} {:>9} {:>9} {:>9}  {}",
                r.route,
                r.requests,
                r.rate_rps,
                r.error_pct,
                p50,
                p95,
                p99,
                p999,
                status_column(r)
            );
        }
        let t = &self.total.outcomes;
        let _ = writeln!(
            out,
            "{} requests in {:.2} s (stopped by {}); ok {}, expected 4xx {}, unexpected {}, \
             rate-limited {}, shed {}, 5xx {}, transport errors {}; replayed {}; held back {}",
            self.requests,
            self.elapsed_s,
            match self.stopped_by {
                StopReason::Requests => "--requests",
                StopReason::Duration => "--duration",
                StopReason::NoAnswer => "no answer",
                StopReason::Interrupted => "Ctrl-C",
            },
            t.ok,
            t.expected_4xx,
            t.unexpected_status,
            t.rate_limited,
            t.shed,
            t.server_error,
            t.transport_error,
            self.total.replayed,
            self.held_back,
        );
        out
    }
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// `200:950 404:40 429:10 transport:2`
fn status_column(r: &RouteReport) -> String {
    let mut parts: Vec<String> = r.statuses.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    if r.outcomes.transport_error > 0 {
        parts.push(format!("transport:{}", r.outcomes.transport_error));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn known_stats() -> Stats {
        let mut s = Stats::default();
        // 1..=1000 ms, one each: p50 = 500 ms, p95 = 950, p99 = 990, p99.9 = 999.
        for ms in 1..=1000u64 {
            let status = if ms % 100 == 0 { 500 } else { 200 };
            s.record(
                Route::Product,
                Some(status),
                &[],
                Duration::from_millis(ms),
                false,
            );
        }
        s.record(Route::Product, None, &[], Duration::ZERO, false);
        s.record(
            Route::Product,
            Some(429),
            &[],
            Duration::from_millis(1),
            false,
        );
        s.record(
            Route::Product,
            Some(503),
            &[],
            Duration::from_millis(1),
            false,
        );
        s.record(
            Route::CreateOrder,
            Some(409),
            &[409],
            Duration::from_millis(4),
            false,
        );
        s.record(
            Route::CreateOrder,
            Some(202),
            &[409],
            Duration::from_millis(4),
            true,
        );
        s
    }

    fn facts() -> RunFacts {
        RunFacts {
            seed: 7,
            base_urls: vec!["http://127.0.0.1:8080/".into()],
            concurrency: 4,
            principals: 2,
            products: 200,
            elapsed_s: 2.0,
            stopped_by: StopReason::Requests,
            held_back: 3,
            bursts: vec![Burst {
                principal: "user-1".into(),
                sent: 20,
                rate_limited: 4,
                shed: 0,
            }],
            sample_order_traces: vec![OrderTrace {
                trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
                span_id: "b7ad6b7169203331".into(),
                order_id: "o-1".into(),
                location: "/orders/o-1".into(),
            }],
        }
    }

    fn close(a: f64, b: f64) -> bool {
        // hdrhistogram with 3 significant digits: values are exact to 0.1 %.
        (a - b).abs() <= b * 0.001 + 0.001
    }

    #[test]
    fn red_numbers_from_a_known_histogram() {
        let report = Report::new(&known_stats(), facts());
        let p = &report.routes[0];
        assert_eq!(p.route, "GET /products/{id}");
        assert_eq!(p.requests, 1003);
        assert!((p.rate_rps - 501.5).abs() < 1e-9);
        // 10 × 500 + 1 transport error; 429 and 503 are not errors.
        assert!((p.error_pct - 100.0 * 11.0 / 1003.0).abs() < 1e-9);
        let l = p.latency_ms.unwrap();
        // 1002 answered samples: 1..=1000 ms plus two at 1 ms.
        assert!(close(l.p50, 499.0), "p50 {}", l.p50);
        assert!(close(l.p95, 950.0), "p95 {}", l.p95);
        assert!(close(l.p99, 990.0), "p99 {}", l.p99);
        assert!(close(l.p999, 999.0), "p99.9 {}", l.p999);
        assert!(close(l.max, 1000.0));
        assert_eq!(p.statuses["200"], 990);
        assert_eq!(p.statuses["500"], 10);
        assert_eq!(p.statuses["429"], 1);
        assert_eq!(p.statuses["503"], 1);
        assert_eq!(p.outcomes.rate_limited, 1);
        assert_eq!(p.outcomes.shed, 1);
        assert_eq!(p.outcomes.transport_error, 1);

        let o = &report.routes[1];
        assert_eq!(o.route, "POST /orders");
        assert_eq!(o.error_pct, 0.0);
        assert_eq!(o.outcomes.expected_4xx, 1);
        assert_eq!(o.replayed, 1);

        assert_eq!(report.total.requests, 1005);
        assert_eq!(report.requests, 1005);
    }

    #[test]
    fn table_has_a_row_per_route_and_the_status_breakdown() {
        let table = Report::new(&known_stats(), facts()).table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("route"));
        assert!(lines[0].contains("p99.9 ms"));
        assert!(lines[1].starts_with("GET /products/{id}"));
        assert!(lines[1].contains("200:990 429:1 500:10 503:1 transport:1"));
        assert!(lines[1].contains("1.10"), "error % column: {}", lines[1]);
        assert!(lines[2].starts_with("POST /orders"));
        assert!(lines[3].starts_with("total"));
        assert!(lines[4].contains("1005 requests"));
    }

    #[test]
    fn json_shape_is_stable() {
        let v = serde_json::to_value(Report::new(&known_stats(), facts())).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut expected = vec![
            "schema",
            "seed",
            "base_urls",
            "concurrency",
            "principals",
            "products",
            "elapsed_s",
            "stopped_by",
            "requests",
            "held_back",
            "bursts",
            "routes",
            "total",
            "sample_order_traces",
        ];
        let mut got = keys.clone();
        got.sort_unstable();
        expected.sort_unstable();
        assert_eq!(got, expected);
        assert_eq!(v["schema"], "loadgen.report.v1");
        assert_eq!(v["stopped_by"], "requests");
        let route = &v["routes"][0];
        for k in [
            "route",
            "requests",
            "rate_rps",
            "error_pct",
            "latency_ms",
            "statuses",
            "outcomes",
            "replayed",
        ] {
            assert!(route.get(k).is_some(), "route field {k}");
        }
        for k in ["p50", "p95", "p99", "p999", "max", "mean"] {
            assert!(route["latency_ms"][k].is_f64(), "latency field {k}");
        }
        for k in [
            "ok",
            "expected_4xx",
            "unexpected_status",
            "rate_limited",
            "shed",
            "server_error",
            "transport_error",
        ] {
            assert!(route["outcomes"][k].is_u64(), "outcome field {k}");
        }
        assert_eq!(route["statuses"]["200"], 990);
        assert_eq!(v["total"]["route"], "total");
        assert_eq!(v["bursts"][0]["principal"], "user-1");
        assert_eq!(
            v["sample_order_traces"][0]["trace_id"],
            "0af7651916cd43dd8448eb211c80319c"
        );
    }

    #[test]
    fn a_route_without_answers_has_null_latency() {
        let mut s = Stats::default();
        s.record(Route::Categories, None, &[], Duration::ZERO, false);
        let v = serde_json::to_value(Report::new(&s, facts())).unwrap();
        assert!(v["routes"][0]["latency_ms"].is_null());
        assert_eq!(v["routes"][0]["error_pct"], 100.0);
        assert!(Report::new(&s, facts()).table().contains(" - "));
    }
}

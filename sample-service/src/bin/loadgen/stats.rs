//! What was measured: per route, the status codes, the outcome classes and a latency
//! histogram. Each worker keeps its own [`Stats`] (no locks on the hot path); they are merged
//! once at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Route templates, named as the service's server spans are (`http.route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    Categories,
    Product,
    CreateOrder,
    GetOrder,
    OrderSummary,
}

impl Route {
    pub const ALL: [Route; 5] = [
        Route::Categories,
        Route::Product,
        Route::CreateOrder,
        Route::GetOrder,
        Route::OrderSummary,
    ];

    pub fn template(self) -> &'static str {
        match self {
            Route::Categories => "GET /categories",
            Route::Product => "GET /products/{id}",
            Route::CreateOrder => "POST /orders",
            Route::GetOrder => "GET /orders/{id}",
            Route::OrderSummary => "GET /orders/{id}/summary",
        }
    }
}

/// How one request ended. Only `ServerError` and `Transport` count as errors: 429 and 503
/// are the service protecting itself, and the expected 4xx are answers the mix provoked on
/// purpose (unknown / malformed ids, duplicate and mismatched idempotency keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Expected4xx,
    UnexpectedStatus,
    RateLimited,
    Shed,
    ServerError,
    Transport,
}

/// `status` is `None` when no response came (connect error, reset, timeout); `expected`
/// lists the 4xx statuses the scenario provoked deliberately.
pub fn classify(status: Option<u16>, expected: &[u16]) -> Outcome {
    match status {
        None => Outcome::Transport,
        Some(429) => Outcome::RateLimited,
        Some(503) => Outcome::Shed,
        Some(s) if (200..300).contains(&s) => Outcome::Ok,
        Some(s) if (400..500).contains(&s) && expected.contains(&s) => Outcome::Expected4xx,
        Some(s) if (500..600).contains(&s) => Outcome::ServerError,
        Some(_) => Outcome::UnexpectedStatus,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeCounts {
    pub ok: u64,
    pub expected_4xx: u64,
    pub unexpected_status: u64,
    pub rate_limited: u64,
    pub shed: u64,
    pub server_error: u64,
    pub transport_error: u64,
}

impl OutcomeCounts {
    fn add(&mut self, outcome: Outcome) {
        let slot = match outcome {
            Outcome::Ok => &mut self.ok,
            Outcome::Expected4xx => &mut self.expected_4xx,
            Outcome::UnexpectedStatus => &mut self.unexpected_status,
            Outcome::RateLimited => &mut self.rate_limited,
            Outcome::Shed => &mut self.shed,
            Outcome::ServerError => &mut self.server_error,
            Outcome::Transport => &mut self.transport_error,
        };
        *slot += 1;
    }

    fn merge(&mut self, o: &OutcomeCounts) {
        self.ok += o.ok;
        self.expected_4xx += o.expected_4xx;
        self.unexpected_status += o.unexpected_status;
        self.rate_limited += o.rate_limited;
        self.shed += o.shed;
        self.server_error += o.server_error;
        self.transport_error += o.transport_error;
    }

    pub fn total(&self) -> u64 {
        self.ok
            + self.expected_4xx
            + self.unexpected_status
            + self.rate_limited
            + self.shed
            + self.server_error
            + self.transport_error
    }

    /// The "E" of RED.
    pub fn errors(&self) -> u64 {
        self.server_error + self.transport_error
    }
}

/// Latencies are recorded in microseconds, up to one hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

#[derive(Debug, Clone)]
pub struct RouteStats {
    pub statuses: BTreeMap<u16, u64>,
    pub outcomes: OutcomeCounts,
    /// Responses carrying `Idempotent-Replayed: true`.
    pub replayed: u64,
    /// Latency of the requests that got a response (transport errors have no latency).
    pub latency_us: Histogram<u64>,
}

impl Default for RouteStats {
    fn default() -> Self {
        Self {
            statuses: BTreeMap::new(),
            outcomes: OutcomeCounts::default(),
            replayed: 0,
            latency_us: new_histogram(),
        }
    }
}

impl RouteStats {
    pub fn requests(&self) -> u64 {
        self.outcomes.total()
    }

    pub fn merge(&mut self, other: &RouteStats) {
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        self.outcomes.merge(&other.outcomes);
        self.replayed += other.replayed;
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share their bounds");
    }
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub routes: BTreeMap<Route, RouteStats>,
}

impl Stats {
    pub fn record(
        &mut self,
        route: Route,
        status: Option<u16>,
        expected: &[u16],
        latency: Duration,
        replayed: bool,
    ) {
        let r = self.routes.entry(route).or_default();
        r.outcomes.add(classify(status, expected));
        if let Some(s) = status {
            *r.statuses.entry(s).or_default() += 1;
            let us = u64::try_from(latency.as_micros())
                .unwrap_or(u64::MAX)
                .max(1);
            r.latency_us.saturating_record(us);
        }
        if replayed {
            r.replayed += 1;
        }
    }

    pub fn merge(&mut self, other: &Stats) {
        for (route, s) in &other.routes {
            self.routes.entry(*route).or_default().merge(s);
        }
    }

    pub fn total(&self) -> RouteStats {
        let mut t = RouteStats::default();
        for s in self.routes.values() {
            t.merge(s);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify(Some(200), &[]), Outcome::Ok);
        assert_eq!(classify(Some(202), &[409]), Outcome::Ok);
        assert_eq!(classify(Some(404), &[404]), Outcome::Expected4xx);
        assert_eq!(classify(Some(404), &[]), Outcome::UnexpectedStatus);
        assert_eq!(classify(Some(409), &[409]), Outcome::Expected4xx);
        assert_eq!(classify(Some(422), &[409]), Outcome::UnexpectedStatus);
        assert_eq!(classify(Some(401), &[]), Outcome::UnexpectedStatus);
        assert_eq!(classify(Some(302), &[]), Outcome::UnexpectedStatus);
        assert_eq!(classify(Some(429), &[]), Outcome::RateLimited);
        assert_eq!(classify(Some(503), &[]), Outcome::Shed);
        assert_eq!(classify(Some(500), &[]), Outcome::ServerError);
        assert_eq!(classify(Some(504), &[]), Outcome::ServerError);
        assert_eq!(classify(None, &[]), Outcome::Transport);
    }

    #[test]
    fn record_and_merge() {
        let mut a = Stats::default();
        a.record(
            Route::Product,
            Some(200),
            &[],
            Duration::from_millis(2),
            false,
        );
        a.record(
            Route::Product,
            Some(404),
            &[404],
            Duration::from_millis(1),
            false,
        );
        a.record(Route::Product, None, &[], Duration::from_secs(10), false);
        let mut b = Stats::default();
        b.record(
            Route::CreateOrder,
            Some(202),
            &[409],
            Duration::from_millis(5),
            true,
        );
        b.record(
            Route::Product,
            Some(500),
            &[],
            Duration::from_millis(3),
            false,
        );
        a.merge(&b);
        let p = &a.routes[&Route::Product];
        assert_eq!(p.requests(), 4);
        assert_eq!(p.statuses, BTreeMap::from([(200, 1), (404, 1), (500, 1)]));
        assert_eq!(p.outcomes.errors(), 2);
        assert_eq!(p.latency_us.len(), 3, "no latency for the transport error");
        let t = a.total();
        assert_eq!(t.requests(), 5);
        assert_eq!(t.replayed, 1);
        assert_eq!(t.outcomes.ok, 2);
        assert_eq!(t.outcomes.expected_4xx, 1);
    }
}

//! RED (rate, errors, duration) per (method, route, status class), with an
//! hdrhistogram per series for exact percentiles.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::series_map::SeriesMap;

/// Upper bounds of `http.server.request.duration` (seconds) from the HTTP
/// semantic conventions.
pub const DURATION_BUCKETS_SECONDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The same bounds in microseconds, compared against on the hot path.
const DURATION_BUCKETS_MICROS: [u64; 14] = [
    5_000, 10_000, 25_000, 50_000, 75_000, 100_000, 250_000, 500_000, 750_000, 1_000_000,
    2_500_000, 5_000_000, 7_500_000, 10_000_000,
];

/// The quantiles exported in the summary; 1.0 is the maximum.
pub const QUANTILES: [f64; 5] = [0.5, 0.95, 0.99, 0.999, 1.0];

/// Route label of the series new keys fold into once the cap is reached.
pub const OVERFLOW_ROUTE: &str = "_overflow";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
    Other,
}

impl StatusClass {
    pub fn of(status: u16) -> StatusClass {
        match status {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            500..=599 => StatusClass::ServerError,
            _ => StatusClass::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
            StatusClass::Other => "_OTHER",
        }
    }
}

struct SeriesState {
    requests: u64,
    errors: u64,
    sum_micros: u64,
    buckets: [u64; DURATION_BUCKETS_MICROS.len() + 1],
    histogram: Histogram<u64>,
}

/// One series' request count, errors and durations (also the unit of the gRPC
/// RED in `rpc.rs`).
pub(crate) struct Series {
    method: &'static str,
    route: Arc<str>,
    status_class: StatusClass,
    state: Mutex<SeriesState>,
}

impl Series {
    pub(crate) fn new(method: &'static str, route: Arc<str>, status_class: StatusClass) -> Series {
        Series {
            method,
            route,
            status_class,
            state: Mutex::new(SeriesState {
                requests: 0,
                errors: 0,
                sum_micros: 0,
                buckets: [0; DURATION_BUCKETS_MICROS.len() + 1],
                // 3 significant digits; auto-resizing, so memory follows the
                // largest duration actually seen (about 80 KB up to a second).
                // `new` only fails for more than 5 significant digits.
                histogram: Histogram::new(3).expect("3 significant digits is valid"),
            }),
        }
    }

    pub(crate) fn record(&self, micros: u64, error: bool) {
        let bucket = DURATION_BUCKETS_MICROS
            .iter()
            .position(|b| micros <= *b)
            .unwrap_or(DURATION_BUCKETS_MICROS.len());
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.requests += 1;
        s.errors += u64::from(error);
        s.sum_micros += micros;
        s.buckets[bucket] += 1;
        // `record` grows the auto-resizing histogram; `saturating_record` would
        // clamp to its current range instead.
        if s.histogram.record(micros).is_err() {
            s.histogram.saturating_record(micros);
        }
    }

    pub(crate) fn snapshot(&self) -> SeriesSnapshot {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let quantiles_micros = QUANTILES.map(|q| {
            if s.histogram.is_empty() {
                0
            } else if q >= 1.0 {
                s.histogram.max()
            } else {
                s.histogram.value_at_quantile(q)
            }
        });
        SeriesSnapshot {
            method: self.method,
            route: self.route.clone(),
            status_class: self.status_class,
            requests: s.requests,
            errors: s.errors,
            sum_seconds: s.sum_micros as f64 / 1e6,
            bucket_counts: s.buckets.to_vec(),
            min_seconds: if s.histogram.is_empty() {
                0.0
            } else {
                s.histogram.min() as f64 / 1e6
            },
            quantiles_micros,
        }
    }
}

/// One series at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesSnapshot {
    pub method: &'static str,
    /// The matched route template; empty when no route matched.
    pub route: Arc<str>,
    pub status_class: StatusClass,
    pub requests: u64,
    /// Requests answered 5xx (or that failed without a response).
    pub errors: u64,
    pub sum_seconds: f64,
    /// Counts per [`DURATION_BUCKETS_SECONDS`] bucket, plus the +Inf bucket.
    pub bucket_counts: Vec<u64>,
    pub min_seconds: f64,
    /// Durations in µs at [`QUANTILES`] (p50, p95, p99, p99.9, max).
    pub quantiles_micros: [u64; 5],
}

impl SeriesSnapshot {
    pub fn quantile_seconds(&self, i: usize) -> f64 {
        self.quantiles_micros.get(i).copied().unwrap_or(0) as f64 / 1e6
    }

    pub fn is_overflow(&self) -> bool {
        &*self.route == OVERFLOW_ROUTE
    }
}

pub(crate) struct RedMetrics {
    series: SeriesMap<Series>,
    overflow: Arc<Series>,
}

impl RedMetrics {
    pub(crate) fn new(max_series: usize) -> RedMetrics {
        RedMetrics {
            series: SeriesMap::new(max_series),
            overflow: Arc::new(Series::new(
                "_OTHER",
                Arc::from(OVERFLOW_ROUTE),
                StatusClass::Other,
            )),
        }
    }

    pub(crate) fn record(&self, method: &'static str, route: &str, status: u16, elapsed: Duration) {
        let class = StatusClass::of(status);
        let error = status >= 500;
        let micros = elapsed.as_micros().min(u64::MAX as u128) as u64;
        let series = self
            .series
            .get(
                format_args!("{method}\u{0}{route}\u{0}{}", class.as_str()),
                || Series::new(method, Arc::from(route), class),
            )
            .unwrap_or_else(|| self.overflow.clone());
        series.record(micros, error);
    }

    pub(crate) fn snapshot(&self) -> Vec<SeriesSnapshot> {
        let mut out: Vec<SeriesSnapshot> =
            self.series.values().iter().map(|s| s.snapshot()).collect();
        let overflow = self.overflow.snapshot();
        if overflow.requests > 0 {
            out.push(overflow);
        }
        out.sort_by(|a, b| {
            (&*a.route, a.method, a.status_class.as_str()).cmp(&(
                &*b.route,
                b.method,
                b.status_class.as_str(),
            ))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_buckets_follow_the_recorded_durations() {
        let red = RedMetrics::new(16);
        // 1..=1000 ms: p50 = 500 ms, p99 = 990 ms, exactly known.
        for ms in 1..=1000u64 {
            red.record("GET", "/items/{id}", 200, Duration::from_millis(ms));
        }
        red.record("GET", "/items/{id}", 503, Duration::from_millis(1));
        let snap = red.snapshot();
        let ok = snap
            .iter()
            .find(|s| s.status_class == StatusClass::Success)
            .expect("2xx series");
        assert_eq!(ok.requests, 1000);
        assert_eq!(ok.errors, 0);
        let within = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 1e-3;
        assert!(
            within(ok.quantiles_micros[0], 500_000),
            "{:?}",
            ok.quantiles_micros
        );
        assert!(
            within(ok.quantiles_micros[2], 990_000),
            "{:?}",
            ok.quantiles_micros
        );
        assert!(
            within(ok.quantiles_micros[4], 1_000_000),
            "{:?}",
            ok.quantiles_micros
        );
        // ≤5 ms: 5 requests; (750 ms, 1 s]: 250 requests.
        assert_eq!(ok.bucket_counts[0], 5);
        assert_eq!(ok.bucket_counts[9], 250);
        assert_eq!(ok.bucket_counts.iter().sum::<u64>(), 1000);
        let err = snap
            .iter()
            .find(|s| s.status_class == StatusClass::ServerError)
            .expect("5xx series");
        assert_eq!((err.requests, err.errors), (1, 1));
    }

    #[test]
    fn series_beyond_the_cap_fold_into_overflow() {
        let red = RedMetrics::new(2);
        for route in ["/a", "/b", "/c", "/d"] {
            red.record("GET", route, 200, Duration::from_micros(10));
        }
        let snap = red.snapshot();
        assert_eq!(snap.len(), 3);
        let overflow = snap.iter().find(|s| s.is_overflow()).expect("overflow");
        assert_eq!(overflow.requests, 2);
    }
}

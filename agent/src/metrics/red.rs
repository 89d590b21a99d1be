//! RED (rate, errors, duration) per series of the HTTP semantic-convention
//! attributes (method, route, status code, error type, scheme, protocol
//! version). Counts, sums and the explicit buckets are cumulative; the exact
//! percentiles (hdrhistogram), the exponential histogram and the exemplar cover
//! one window, closed at each metrics export: two windows per series are
//! swapped, so the request path neither allocates nor waits for a reader.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;

use super::exponential::{ExpHistogram, ExpHistogramSnapshot};
use super::series_map::SeriesMap;
use crate::clock::unix_nanos;
use crate::context::{SpanId, TraceId};

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

/// The slowest sampled request of a window: links a latency to its trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exemplar {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub value_micros: u64,
    pub time_unix_nanos: u64,
}

/// What one export interval saw: exact quantiles (hdrhistogram), the
/// mergeable exponential histogram and the exemplar.
struct Window {
    start_unix_nanos: u64,
    hdr: Histogram<u64>,
    exponential: ExpHistogram,
    exemplar: Option<Exemplar>,
}

impl Window {
    fn new(start_unix_nanos: u64) -> Window {
        Window {
            start_unix_nanos,
            // 3 significant digits; auto-resizing, so memory follows the
            // largest duration actually seen (about 80 KB up to a second).
            // `new` only fails for more than 5 significant digits.
            hdr: Histogram::new(3).expect("3 significant digits is valid"),
            exponential: ExpHistogram::default(),
            exemplar: None,
        }
    }

    /// Empties the window for reuse from `start`, keeping its memory.
    fn reset(&mut self, start_unix_nanos: u64) {
        self.start_unix_nanos = start_unix_nanos;
        self.hdr.reset();
        self.exponential.reset();
        self.exemplar = None;
    }

    fn snapshot(&self, end_unix_nanos: Option<u64>) -> WindowSnapshot {
        WindowSnapshot {
            start_unix_nanos: self.start_unix_nanos,
            end_unix_nanos,
            exponential: self.exponential.snapshot(),
            exemplar: self.exemplar,
        }
    }

    fn quantiles_micros(&self) -> [u64; 5] {
        QUANTILES.map(|q| {
            if self.hdr.is_empty() {
                0
            } else if q >= 1.0 {
                self.hdr.max()
            } else {
                self.hdr.value_at_quantile(q)
            }
        })
    }
}

/// Cumulative since the series was created, plus the open window.
struct SeriesState {
    requests: u64,
    errors: u64,
    sum_micros: u64,
    min_micros: u64,
    max_micros: u64,
    buckets: [u64; DURATION_BUCKETS_MICROS.len() + 1],
    window: Window,
}

/// The last closed window; swapped with the open one at each export, so the
/// request path never waits for quantiles to be read.
struct Closed {
    window: Window,
    end_unix_nanos: u64,
    /// False until the first close: readers then see the open window.
    closed_once: bool,
}

/// One series' request count, errors and durations (also the unit of the gRPC
/// RED in `rpc.rs`).
pub(crate) struct Series {
    state: Mutex<SeriesState>,
    closed: Mutex<Closed>,
}

impl Series {
    pub(crate) fn new() -> Series {
        let now = unix_nanos(SystemTime::now());
        Series {
            state: Mutex::new(SeriesState {
                requests: 0,
                errors: 0,
                sum_micros: 0,
                min_micros: u64::MAX,
                max_micros: 0,
                buckets: [0; DURATION_BUCKETS_MICROS.len() + 1],
                window: Window::new(now),
            }),
            closed: Mutex::new(Closed {
                window: Window::new(now),
                end_unix_nanos: now,
                closed_once: false,
            }),
        }
    }

    /// Records one duration; `sampled` (the request's trace and span, when the
    /// span is exported) may become the window's exemplar. Allocates nothing
    /// once the histograms have grown to the durations seen.
    pub(crate) fn record(&self, micros: u64, error: bool, sampled: Option<(TraceId, SpanId)>) {
        let bucket = DURATION_BUCKETS_MICROS
            .iter()
            .position(|b| micros <= *b)
            .unwrap_or(DURATION_BUCKETS_MICROS.len());
        let seconds = micros as f64 / 1e6;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.requests += 1;
        s.errors += u64::from(error);
        s.sum_micros += micros;
        s.min_micros = s.min_micros.min(micros);
        s.max_micros = s.max_micros.max(micros);
        s.buckets[bucket] += 1;
        let w = &mut s.window;
        // `record` grows the auto-resizing histogram; `saturating_record` would
        // clamp to its current range instead.
        if w.hdr.record(micros).is_err() {
            w.hdr.saturating_record(micros);
        }
        w.exponential.record(seconds);
        if let Some((trace_id, span_id)) = sampled {
            if w.exemplar.is_none_or(|e| micros > e.value_micros) {
                w.exemplar = Some(Exemplar {
                    trace_id,
                    span_id,
                    value_micros: micros,
                    time_unix_nanos: unix_nanos(SystemTime::now()),
                });
            }
        }
    }

    /// Ends the open window at `now` and starts the next one: the two windows
    /// swap, so neither side allocates.
    pub(crate) fn close_window(&self, now_unix_nanos: u64) {
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        closed.window.reset(now_unix_nanos);
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut s.window, &mut closed.window);
        }
        closed.end_unix_nanos = now_unix_nanos;
        closed.closed_once = true;
    }

    /// Cumulative counts with the last closed window (the open one before the
    /// first close); the attributes are left for the caller to fill.
    pub(crate) fn snapshot(&self) -> SeriesSnapshot {
        let closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (window, quantiles_micros) = if closed.closed_once {
            (
                closed.window.snapshot(Some(closed.end_unix_nanos)),
                closed.window.quantiles_micros(),
            )
        } else {
            (s.window.snapshot(None), s.window.quantiles_micros())
        };
        SeriesSnapshot {
            method: "",
            route: Arc::from(""),
            status_code: 0,
            status_class: StatusClass::Other,
            error_type: None,
            scheme: "",
            protocol_version: "",
            requests: s.requests,
            errors: s.errors,
            sum_seconds: s.sum_micros as f64 / 1e6,
            bucket_counts: s.buckets.to_vec(),
            min_seconds: if s.requests == 0 {
                0.0
            } else {
                s.min_micros as f64 / 1e6
            },
            max_seconds: s.max_micros as f64 / 1e6,
            quantiles_micros,
            window,
        }
    }
}

/// One export interval of a series.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowSnapshot {
    pub start_unix_nanos: u64,
    /// When the window was closed; `None` while it is still open (no export
    /// has closed one yet).
    pub end_unix_nanos: Option<u64>,
    /// The window's durations in seconds, mergeable across replicas.
    pub exponential: ExpHistogramSnapshot,
    /// The slowest sampled request of the window.
    pub exemplar: Option<Exemplar>,
}

/// One series at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesSnapshot {
    pub method: &'static str,
    /// The matched route template; empty when no route matched.
    pub route: Arc<str>,
    /// `http.response.status_code` (499 for a request cancelled before its
    /// response, 500 when the service failed without one).
    pub status_code: u16,
    pub status_class: StatusClass,
    /// `error.type`: the 5xx status code, or why no response came.
    pub error_type: Option<Arc<str>>,
    /// `url.scheme`.
    pub scheme: &'static str,
    /// `network.protocol.version` (`1.1`, `2`, …).
    pub protocol_version: &'static str,
    /// Cumulative since the series was created, like `errors`, `sum_seconds`,
    /// `bucket_counts`, `min_seconds` and `max_seconds`.
    pub requests: u64,
    /// Requests answered 5xx (or that failed without a response).
    pub errors: u64,
    pub sum_seconds: f64,
    /// Counts per [`DURATION_BUCKETS_SECONDS`] bucket, plus the +Inf bucket.
    pub bucket_counts: Vec<u64>,
    pub min_seconds: f64,
    pub max_seconds: f64,
    /// Durations in µs at [`QUANTILES`] (p50, p95, p99, p99.9, max) over the
    /// window only: the last export interval.
    pub quantiles_micros: [u64; 5],
    pub window: WindowSnapshot,
}

impl SeriesSnapshot {
    pub fn quantile_seconds(&self, i: usize) -> f64 {
        self.quantiles_micros.get(i).copied().unwrap_or(0) as f64 / 1e6
    }

    pub fn is_overflow(&self) -> bool {
        &*self.route == OVERFLOW_ROUTE
    }
}

/// The semantic-convention attributes of one HTTP request's RED record.
#[derive(Clone, Copy, Debug)]
pub struct RequestAttributes<'a> {
    /// `http.request.method` (`_OTHER` for unknown methods).
    pub method: &'static str,
    /// `http.route`; empty when no route matched.
    pub route: &'a str,
    pub status_code: u16,
    /// `error.type`: set for 5xx (the code) and for requests without response.
    pub error_type: Option<&'a str>,
    pub scheme: &'static str,
    pub protocol_version: &'static str,
}

impl<'a> RequestAttributes<'a> {
    /// The attributes of a request answered `status_code`, `error.type` the
    /// code for 5xx, as the conventions ask.
    pub fn new(method: &'static str, route: &'a str, status_code: u16) -> Self {
        RequestAttributes {
            method,
            route,
            status_code,
            error_type: None,
            scheme: "http",
            protocol_version: "1.1",
        }
    }
}

/// A RED series' attributes next to its durations.
struct Entry {
    method: &'static str,
    route: Arc<str>,
    status_code: u16,
    error_type: Option<Arc<str>>,
    scheme: &'static str,
    protocol_version: &'static str,
    series: Series,
}

impl Entry {
    fn new(a: &RequestAttributes<'_>, error_type: Option<&str>) -> Entry {
        Entry {
            method: a.method,
            route: Arc::from(a.route),
            status_code: a.status_code,
            error_type: error_type.map(Arc::from),
            scheme: a.scheme,
            protocol_version: a.protocol_version,
            series: Series::new(),
        }
    }

    fn snapshot(&self) -> SeriesSnapshot {
        SeriesSnapshot {
            method: self.method,
            route: self.route.clone(),
            status_code: self.status_code,
            status_class: StatusClass::of(self.status_code),
            error_type: self.error_type.clone(),
            scheme: self.scheme,
            protocol_version: self.protocol_version,
            ..self.series.snapshot()
        }
    }
}

/// The three digits of an HTTP status code without allocating.
fn status_digits(code: u16, buf: &mut [u8; 3]) -> &str {
    let code = code.min(999);
    *buf = [
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ];
    std::str::from_utf8(buf).unwrap_or("")
}

pub(crate) struct RedMetrics {
    series: SeriesMap<Entry>,
    overflow: Arc<Entry>,
}

impl RedMetrics {
    pub(crate) fn new(max_series: usize) -> RedMetrics {
        RedMetrics {
            series: SeriesMap::new(max_series),
            overflow: Arc::new(Entry::new(
                &RequestAttributes {
                    method: "_OTHER",
                    route: OVERFLOW_ROUTE,
                    status_code: 0,
                    error_type: None,
                    scheme: "",
                    protocol_version: "",
                },
                None,
            )),
        }
    }

    /// Records one request; `sampled` is its trace and span when the span is
    /// exported (a candidate exemplar).
    pub(crate) fn record(
        &self,
        a: &RequestAttributes<'_>,
        elapsed: Duration,
        sampled: Option<(TraceId, SpanId)>,
    ) {
        let error = a.status_code >= 500;
        let mut digits = [0u8; 3];
        let error_type = match a.error_type {
            Some(t) => Some(t),
            None if error => Some(status_digits(a.status_code, &mut digits)),
            None => None,
        };
        let micros = elapsed.as_micros().min(u64::MAX as u128) as u64;
        let entry = self
            .series
            .get(
                format_args!(
                    "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
                    a.method,
                    a.route,
                    a.status_code,
                    error_type.unwrap_or(""),
                    a.scheme,
                    a.protocol_version
                ),
                || Entry::new(a, error_type),
            )
            .unwrap_or_else(|| self.overflow.clone());
        entry.series.record(micros, error, sampled);
    }

    pub(crate) fn close_window(&self, now_unix_nanos: u64) {
        for e in self.series.values() {
            e.series.close_window(now_unix_nanos);
        }
        self.overflow.series.close_window(now_unix_nanos);
    }

    pub(crate) fn snapshot(&self) -> Vec<SeriesSnapshot> {
        let mut out: Vec<SeriesSnapshot> =
            self.series.values().iter().map(|s| s.snapshot()).collect();
        let overflow = self.overflow.snapshot();
        if overflow.requests > 0 {
            out.push(overflow);
        }
        out.sort_by(|a, b| {
            (&*a.route, a.method, a.status_code, &a.error_type).cmp(&(
                &*b.route,
                b.method,
                b.status_code,
                &b.error_type,
            ))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(route: &str, status: u16) -> RequestAttributes<'_> {
        RequestAttributes::new("GET", route, status)
    }

    #[test]
    fn percentiles_and_buckets_follow_the_recorded_durations() {
        let red = RedMetrics::new(16);
        // 1..=1000 ms: p50 = 500 ms, p99 = 990 ms, exactly known.
        for ms in 1..=1000u64 {
            red.record(&get("/items/{id}", 200), Duration::from_millis(ms), None);
        }
        red.record(&get("/items/{id}", 503), Duration::from_millis(1), None);
        let snap = red.snapshot();
        let ok = snap
            .iter()
            .find(|s| s.status_class == StatusClass::Success)
            .expect("2xx series");
        assert_eq!((ok.requests, ok.status_code, ok.errors), (1000, 200, 0));
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
        assert_eq!(ok.window.exponential.count, 1000);
        let p99 = ok.window.exponential.quantile(0.99);
        assert!((p99 - 0.99).abs() <= 0.99 * 0.0055, "{p99}");
        let err = snap
            .iter()
            .find(|s| s.status_class == StatusClass::ServerError)
            .expect("5xx series");
        assert_eq!((err.requests, err.errors), (1, 1));
        assert_eq!(err.error_type.as_deref(), Some("503"));
    }

    #[test]
    fn each_window_has_its_own_quantiles_and_exemplar() {
        let red = RedMetrics::new(16);
        let ids = |n: u8| Some((TraceId([n; 16]), SpanId([n; 8])));
        for ms in [10, 30, 20] {
            red.record(&get("/a", 200), Duration::from_millis(ms), ids(ms as u8));
        }
        red.record(&get("/a", 200), Duration::from_millis(90), None);
        red.close_window(1);
        // A step change: the next window sees only the new latency.
        for _ in 0..100 {
            red.record(&get("/a", 200), Duration::from_millis(500), None);
        }
        let first = &red.snapshot()[0];
        assert_eq!(first.window.end_unix_nanos, Some(1));
        assert!(
            first.quantiles_micros[4].abs_diff(90_000) <= 90,
            "{:?}",
            first.quantiles_micros
        );
        let exemplar = first.window.exemplar.expect("the slowest sampled request");
        assert_eq!(
            (exemplar.value_micros, exemplar.trace_id),
            (30_000, TraceId([30; 16]))
        );
        red.close_window(2);
        let second = &red.snapshot()[0];
        assert_eq!(second.requests, 104, "counts stay cumulative");
        assert_eq!(second.window.start_unix_nanos, 1);
        let within = |got: u64| got.abs_diff(500_000) <= 500;
        assert!(
            within(second.quantiles_micros[2]),
            "{:?}",
            second.quantiles_micros
        );
        assert!(
            within(second.quantiles_micros[0]),
            "{:?}",
            second.quantiles_micros
        );
        assert_eq!(second.window.exponential.count, 100);
        assert_eq!(second.window.exemplar, None);
    }

    #[test]
    fn series_beyond_the_cap_fold_into_overflow() {
        let red = RedMetrics::new(2);
        for route in ["/a", "/b", "/c", "/d"] {
            red.record(&get(route, 200), Duration::from_micros(10), None);
        }
        let snap = red.snapshot();
        assert_eq!(snap.len(), 3);
        let overflow = snap.iter().find(|s| s.is_overflow()).expect("overflow");
        assert_eq!(overflow.requests, 2);
    }

    #[test]
    fn status_digits_are_written_without_allocating() {
        let mut buf = [0u8; 3];
        assert_eq!(status_digits(503, &mut buf), "503");
        assert_eq!(status_digits(99, &mut buf), "099");
    }
}

//! RED of gRPC calls per (side, service, method, status code), recorded by the
//! tonic layers: the same count, error count, buckets and hdrhistogram as the
//! HTTP series, exported as `rpc.{server,client}.call.duration`.

use std::sync::Arc;
use std::time::Duration;

use super::red::Series;
use super::series_map::SeriesMap;
use super::SeriesSnapshot;

/// Which end of the call recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RpcSide {
    Server,
    Client,
}

impl RpcSide {
    pub fn as_str(self) -> &'static str {
        match self {
            RpcSide::Server => "server",
            RpcSide::Client => "client",
        }
    }
}

/// One gRPC series at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcSeriesSnapshot {
    pub side: RpcSide,
    /// `rpc.service` (`package.Service`); `_overflow` past the series cap.
    pub service: Arc<str>,
    /// `rpc.method`.
    pub method: Arc<str>,
    /// `rpc.grpc.status_code`.
    pub code: i32,
    /// Counts and durations (its HTTP attributes are unused).
    pub durations: SeriesSnapshot,
}

impl RpcSeriesSnapshot {
    pub fn is_overflow(&self) -> bool {
        &*self.service == super::red::OVERFLOW_ROUTE
    }
}

struct Entry {
    side: RpcSide,
    service: Arc<str>,
    method: Arc<str>,
    code: i32,
    series: Series,
}

impl Entry {
    fn new(side: RpcSide, service: &str, method: &str, code: i32) -> Entry {
        Entry {
            side,
            service: Arc::from(service),
            method: Arc::from(method),
            code,
            series: Series::new(),
        }
    }
}

pub(crate) struct RpcMetrics {
    series: SeriesMap<Entry>,
    overflow: [Arc<Entry>; 2],
}

impl RpcMetrics {
    pub(crate) fn new(max_series: usize) -> RpcMetrics {
        let overflow = |side| Arc::new(Entry::new(side, super::red::OVERFLOW_ROUTE, "", -1));
        RpcMetrics {
            series: SeriesMap::new(max_series),
            overflow: [overflow(RpcSide::Server), overflow(RpcSide::Client)],
        }
    }

    pub(crate) fn record(
        &self,
        side: RpcSide,
        service: &str,
        method: &str,
        code: i32,
        error: bool,
        elapsed: Duration,
    ) {
        let micros = elapsed.as_micros().min(u64::MAX as u128) as u64;
        let entry = self
            .series
            .get(
                format_args!("{}\u{0}{service}\u{0}{method}\u{0}{code}", side.as_str()),
                || Entry::new(side, service, method, code),
            )
            .unwrap_or_else(|| self.overflow[side as usize].clone());
        entry.series.record(micros, error, None);
    }

    pub(crate) fn close_window(&self, now_unix_nanos: u64) {
        for e in self.series.values().iter().chain(self.overflow.iter()) {
            e.series.close_window(now_unix_nanos);
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<RpcSeriesSnapshot> {
        let mut out: Vec<RpcSeriesSnapshot> = self
            .series
            .values()
            .iter()
            .chain(self.overflow.iter())
            .map(|e| RpcSeriesSnapshot {
                side: e.side,
                service: e.service.clone(),
                method: e.method.clone(),
                code: e.code,
                durations: e.series.snapshot(),
            })
            .filter(|s| s.durations.requests > 0)
            .collect();
        out.sort_by(|a, b| {
            (a.side, &*a.service, &*a.method, a.code).cmp(&(
                b.side,
                &*b.service,
                &*b.method,
                b.code,
            ))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_per_method_and_code_with_errors_and_overflow() {
        let rpc = RpcMetrics::new(2);
        let ms = Duration::from_millis(1);
        rpc.record(
            RpcSide::Server,
            "grpc.health.v1.Health",
            "Check",
            0,
            false,
            ms,
        );
        rpc.record(
            RpcSide::Server,
            "grpc.health.v1.Health",
            "Check",
            0,
            false,
            ms,
        );
        rpc.record(
            RpcSide::Server,
            "grpc.health.v1.Health",
            "Check",
            13,
            true,
            ms,
        );
        rpc.record(
            RpcSide::Client,
            "grpc.health.v1.Health",
            "Watch",
            0,
            false,
            ms,
        );
        let snap = rpc.snapshot();
        assert_eq!(snap.len(), 3, "{snap:?}");
        let ok = &snap[0];
        assert_eq!(
            (ok.side, &*ok.method, ok.code, ok.durations.requests),
            (RpcSide::Server, "Check", 0, 2)
        );
        assert_eq!(snap[1].code, 13);
        assert_eq!(snap[1].durations.errors, 1);
        // The cap of 2 was reached: the client call folded into overflow.
        assert!(snap[2].is_overflow() && snap[2].side == RpcSide::Client);
    }
}

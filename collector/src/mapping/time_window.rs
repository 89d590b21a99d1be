//! The window of timestamps the collector accepts around now.
//!
//! Every table is partitioned by day, and ClickHouse refuses an INSERT block
//! touching more than 100 partitions: one request with spans on 101 days would
//! fail every batch it joins. A clock gone wrong does the same over time. Items
//! whose time (a span's start, a log record's time, a data point's time) is more
//! than `max_past_secs` before now or `max_future_secs` after it are rejected
//! (counted in `partial_success`) or, with `action = "clamp"`, moved to the edge
//! of the window (a span keeps its duration) with a note in `partial_success`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutOfWindow {
    Reject,
    Clamp,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TimestampWindow {
    /// How far back an item's time may be (0: no bound).
    pub max_past_secs: u64,
    /// How far ahead (0: no bound).
    pub max_future_secs: u64,
    pub action: OutOfWindow,
}

impl TimestampWindow {
    /// No bounds.
    pub const OFF: TimestampWindow = TimestampWindow {
        max_past_secs: 0,
        max_future_secs: 0,
        action: OutOfWindow::Reject,
    };
}

impl Default for TimestampWindow {
    fn default() -> Self {
        TimestampWindow {
            max_past_secs: 30 * 86_400,
            max_future_secs: 3_600,
            action: OutOfWindow::Reject,
        }
    }
}

/// What the window says about one timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Inside,
    /// Rejected, or clamped to this time.
    Outside {
        clamped: Option<u64>,
    },
}

/// The window as bounds for one request (read the clock once).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    low: u64,
    high: u64,
    action: OutOfWindow,
}

const NANOS: u64 = 1_000_000_000;

impl TimestampWindow {
    pub fn bounds(&self, now_nanos: u64) -> Bounds {
        let span = |secs: u64| secs.saturating_mul(NANOS);
        Bounds {
            low: if self.max_past_secs == 0 {
                0
            } else {
                now_nanos.saturating_sub(span(self.max_past_secs))
            },
            high: if self.max_future_secs == 0 {
                u64::MAX
            } else {
                now_nanos.saturating_add(span(self.max_future_secs))
            },
            action: self.action,
        }
    }

    pub fn bounds_now(&self) -> Bounds {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.bounds(now)
    }
}

impl Bounds {
    /// Everything passes (for tests and callers without a window).
    pub fn open() -> Bounds {
        Bounds {
            low: 0,
            high: u64::MAX,
            action: OutOfWindow::Reject,
        }
    }

    /// A time of 0 means "not set" in OTLP and is left to the mapping.
    pub fn check(&self, nanos: u64) -> Verdict {
        if nanos == 0 || (self.low..=self.high).contains(&nanos) {
            return Verdict::Inside;
        }
        Verdict::Outside {
            clamped: (self.action == OutOfWindow::Clamp).then(|| nanos.clamp(self.low, self.high)),
        }
    }

    /// Why an item was rejected, for `partial_success`.
    pub fn reason(&self, what: &str, nanos: u64) -> String {
        format!(
            "{what} {nanos} is outside the accepted window [{}, {}] (receivers.timestamps)",
            self.low, self.high
        )
    }
}

/// Counts items clamped while mapping a request, for the note to the client.
#[derive(Debug, Default, Clone, Copy)]
pub struct Clamped(pub u64);

impl Clamped {
    pub fn note(&self, items: &str) -> Option<String> {
        (self.0 > 0).then(|| {
            format!(
                "{} {items} had times outside the accepted window and were moved to its edge (receivers.timestamps)",
                self.0
            )
        })
    }
}

/// Items a pre-pass removed or clamped (logs and metrics, mapped from prost's
/// messages; traces are checked while read off the wire).
#[derive(Debug, Default)]
pub struct Outside {
    rejected: u64,
    first: Option<String>,
    clamped: u64,
}

impl Outside {
    /// Keeps `*time` if inside, clamps it, or says to drop the item.
    fn keep(&mut self, bounds: &Bounds, what: &str, time: &mut u64) -> bool {
        match bounds.check(*time) {
            Verdict::Inside => true,
            Verdict::Outside { clamped: Some(t) } => {
                *time = t;
                self.clamped += 1;
                true
            }
            Verdict::Outside { clamped: None } => {
                self.rejected += 1;
                if self.first.is_none() {
                    self.first = Some(bounds.reason(what, *time));
                }
                false
            }
        }
    }

    /// Adds the rejections and the note to what mapping the rest produced.
    pub fn fold_into(self, mapped: &mut super::Mapped, items: &str) {
        if let Some(first) = self.first {
            mapped.rejected += self.rejected;
            super::with_note(
                &mut mapped.error_message,
                &format!("{} {items} rejected; first: {first}", self.rejected),
            );
        }
        if let Some(note) = Clamped(self.clamped).note(items) {
            super::with_note(&mut mapped.error_message, &note);
        }
    }
}

/// Applies the window to a logs request's records (their time, else their
/// observed time).
pub fn logs(
    request: &mut opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest,
    bounds: &Bounds,
) -> Outside {
    let mut out = Outside::default();
    for rl in &mut request.resource_logs {
        for sl in &mut rl.scope_logs {
            sl.log_records.retain_mut(|r| {
                let time = if r.time_unix_nano != 0 {
                    &mut r.time_unix_nano
                } else {
                    &mut r.observed_time_unix_nano
                };
                out.keep(bounds, "log record time_unix_nano", time)
            });
        }
    }
    out
}

/// Applies the window to a metrics request's data points (their time).
pub fn metrics(
    request: &mut opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
    bounds: &Bounds,
) -> Outside {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let mut out = Outside::default();
    let what = "data point time_unix_nano";
    for rm in &mut request.resource_metrics {
        for sm in &mut rm.scope_metrics {
            for m in &mut sm.metrics {
                match &mut m.data {
                    None => {}
                    Some(Data::Gauge(g)) => g
                        .data_points
                        .retain_mut(|p| out.keep(bounds, what, &mut p.time_unix_nano)),
                    Some(Data::Sum(g)) => g
                        .data_points
                        .retain_mut(|p| out.keep(bounds, what, &mut p.time_unix_nano)),
                    Some(Data::Histogram(g)) => g
                        .data_points
                        .retain_mut(|p| out.keep(bounds, what, &mut p.time_unix_nano)),
                    Some(Data::ExponentialHistogram(g)) => g
                        .data_points
                        .retain_mut(|p| out.keep(bounds, what, &mut p.time_unix_nano)),
                    Some(Data::Summary(g)) => g
                        .data_points
                        .retain_mut(|p| out.keep(bounds, what, &mut p.time_unix_nano)),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_or_clamps_outside_the_window_and_zero_is_unset() {
        let now = 1_000_000 * NANOS;
        let mut w = TimestampWindow {
            max_past_secs: 10,
            max_future_secs: 5,
            action: OutOfWindow::Reject,
        };
        let b = w.bounds(now);
        assert_eq!(b.check(now), Verdict::Inside);
        assert_eq!(b.check(0), Verdict::Inside);
        assert_eq!(b.check(now - 10 * NANOS), Verdict::Inside);
        assert_eq!(
            b.check(now - 11 * NANOS),
            Verdict::Outside { clamped: None }
        );
        w.action = OutOfWindow::Clamp;
        let b = w.bounds(now);
        assert_eq!(
            b.check(now + 6 * NANOS),
            Verdict::Outside {
                clamped: Some(now + 5 * NANOS)
            }
        );
        let open = TimestampWindow {
            max_past_secs: 0,
            max_future_secs: 0,
            action: OutOfWindow::Reject,
        }
        .bounds(now);
        assert_eq!(open.check(1), Verdict::Inside);
    }

    #[test]
    fn logs_and_metrics_outside_the_window_are_dropped_and_counted() {
        use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
        use opentelemetry_proto::tonic::metrics::v1::{
            metric::Data, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
        };
        let now = 1_000_000 * NANOS;
        let b = TimestampWindow {
            max_past_secs: 10,
            max_future_secs: 10,
            action: OutOfWindow::Reject,
        }
        .bounds(now);
        let record = |t: u64, observed: u64| LogRecord {
            time_unix_nano: t,
            observed_time_unix_nano: observed,
            ..Default::default()
        };
        let mut request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![record(now, 0), record(0, now - 60 * NANOS), record(1, now)],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let out = logs(&mut request, &b);
        assert_eq!(out.rejected, 2);
        assert_eq!(request.resource_logs[0].scope_logs[0].log_records.len(), 1);
        let mut mapped = super::super::Mapped::default();
        out.fold_into(&mut mapped, "log records");
        assert_eq!(mapped.rejected, 2);
        assert!(mapped
            .error_message
            .starts_with("2 log records rejected; first: log record time_unix_nano"));

        let point = |t: u64| NumberDataPoint {
            time_unix_nano: t,
            ..Default::default()
        };
        let mut request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        data: Some(Data::Gauge(Gauge {
                            data_points: vec![point(now), point(now + 7_200 * NANOS)],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let clamp = TimestampWindow {
            action: OutOfWindow::Clamp,
            ..TimestampWindow::default()
        }
        .bounds(now);
        let out = metrics(&mut request, &clamp);
        assert_eq!((out.rejected, out.clamped), (0, 1));
        let Some(Data::Gauge(g)) = &request.resource_metrics[0].scope_metrics[0].metrics[0].data
        else {
            unreachable!()
        };
        assert_eq!(g.data_points[1].time_unix_nano, now + 3_600 * NANOS);
    }
}

//! Counters and histograms, rendered as Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::schema::{Table, ALL_TABLES};

pub const SIGNALS: [&str; 3] = ["traces", "logs", "metrics"];

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Partial,
    /// A retry of a request already stored: acknowledged, not stored again.
    Duplicate,
    Malformed,
    Unsupported,
    TooLarge,
    Overloaded,
    Unavailable,
}

const OUTCOMES: [(Outcome, &str); 8] = [
    (Outcome::Accepted, "accepted"),
    (Outcome::Partial, "partial"),
    (Outcome::Duplicate, "duplicate"),
    (Outcome::Malformed, "malformed"),
    (Outcome::Unsupported, "unsupported"),
    (Outcome::TooLarge, "too_large"),
    (Outcome::Overloaded, "overloaded"),
    (Outcome::Unavailable, "unavailable"),
];

struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    sum_bits: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        let _ = self.sum_bits.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + v).to_bits())
        });
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.buckets) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            f64::from_bits(self.sum_bits.load(Relaxed))
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

const ROW_BOUNDS: &[f64] = &[1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];
const SECONDS_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct SignalCounters {
    requests: [AtomicU64; OUTCOMES.len()],
    received: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
}

/// What the receivers' limits and auth did, per signal.
#[derive(Default)]
struct LimitCounters {
    attributes_dropped: AtomicU64,
    values_truncated: AtomicU64,
    values_too_deep: AtomicU64,
    unauthenticated: AtomicU64,
    rate_limited: AtomicU64,
    /// Refused because the budget of request bytes in flight stayed spent.
    over_budget: AtomicU64,
    /// Bodies not received within the body timeout.
    body_timeouts: AtomicU64,
}

/// The listeners whose refused connections are counted.
pub const LISTENERS: [&str; 2] = ["grpc", "http"];

struct TableCounters {
    exported_rows: AtomicU64,
    /// Rows given up on (ClickHouse will not take them): in the dead-letter store.
    failed_rows: AtomicU64,
    dead_letter_batches: AtomicU64,
    retries: AtomicU64,
    batch_rows: Histogram,
    insert_seconds: Histogram,
}

pub struct Metrics {
    signals: [SignalCounters; 3],
    limits: [LimitCounters; 3],
    /// Per listener: connections closed at once for being over the limit.
    connections_refused: [AtomicU64; 2],
    tables: Vec<TableCounters>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            signals: Default::default(),
            limits: Default::default(),
            connections_refused: Default::default(),
            tables: ALL_TABLES
                .iter()
                .map(|_| TableCounters {
                    exported_rows: AtomicU64::new(0),
                    failed_rows: AtomicU64::new(0),
                    dead_letter_batches: AtomicU64::new(0),
                    retries: AtomicU64::new(0),
                    batch_rows: Histogram::new(ROW_BOUNDS),
                    insert_seconds: Histogram::new(SECONDS_BOUNDS),
                })
                .collect(),
        }
    }
}

fn signal_index(signal: &str) -> usize {
    SIGNALS.iter().position(|s| *s == signal).unwrap_or(0)
}

impl Metrics {
    pub fn request(
        &self,
        signal: &str,
        outcome: Outcome,
        received: u64,
        accepted: u64,
        rejected: u64,
    ) {
        let s = &self.signals[signal_index(signal)];
        let i = OUTCOMES
            .iter()
            .position(|(o, _)| *o == outcome)
            .unwrap_or(0);
        s.requests[i].fetch_add(1, Relaxed);
        s.received.fetch_add(received, Relaxed);
        s.accepted.fetch_add(accepted, Relaxed);
        s.rejected.fetch_add(rejected, Relaxed);
    }

    /// Attributes dropped, values truncated and values nested too deep in one request.
    pub fn limited(&self, signal: &str, dropped: u64, truncated: u64, too_deep: u64) {
        let l = &self.limits[signal_index(signal)];
        l.attributes_dropped.fetch_add(dropped, Relaxed);
        l.values_truncated.fetch_add(truncated, Relaxed);
        l.values_too_deep.fetch_add(too_deep, Relaxed);
    }

    /// A request refused for a missing or wrong bearer token.
    pub fn unauthenticated(&self, signal: &str) {
        self.limits[signal_index(signal)]
            .unauthenticated
            .fetch_add(1, Relaxed);
    }

    /// A request refused by the per-token rate limit.
    pub fn rate_limited(&self, signal: &str) {
        self.limits[signal_index(signal)]
            .rate_limited
            .fetch_add(1, Relaxed);
    }

    /// A request refused because no budget for its bytes came free in time.
    pub fn over_budget(&self, signal: &str) {
        self.limits[signal_index(signal)]
            .over_budget
            .fetch_add(1, Relaxed);
    }

    /// A request whose body did not arrive within the body timeout.
    pub fn body_timeout(&self, signal: &str) {
        self.limits[signal_index(signal)]
            .body_timeouts
            .fetch_add(1, Relaxed);
    }

    /// A connection closed at once because `listener` held its limit.
    pub fn connection_refused(&self, listener: &str) {
        let i = LISTENERS.iter().position(|l| *l == listener).unwrap_or(0);
        self.connections_refused[i].fetch_add(1, Relaxed);
    }

    pub fn exported(&self, table: &Table, rows: u64, took: Duration) {
        let t = &self.tables[table.id as usize];
        t.exported_rows.fetch_add(rows, Relaxed);
        t.batch_rows.observe(rows as f64);
        t.insert_seconds.observe(took.as_secs_f64());
    }

    /// Rows ClickHouse will not take, written to the dead-letter store as one letter.
    pub fn dead_lettered(&self, table: &Table, rows: u64) {
        let t = &self.tables[table.id as usize];
        t.failed_rows.fetch_add(rows, Relaxed);
        t.dead_letter_batches.fetch_add(1, Relaxed);
    }

    pub fn retried(&self, table: &Table) {
        self.tables[table.id as usize].retries.fetch_add(1, Relaxed);
    }

    pub fn exported_rows(&self, table: &Table) -> u64 {
        self.tables[table.id as usize].exported_rows.load(Relaxed)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# TYPE collector_requests_total counter\n");
        for (sig, s) in SIGNALS.iter().zip(&self.signals) {
            for ((_, name), c) in OUTCOMES.iter().zip(&s.requests) {
                let _ = writeln!(
                    out,
                    "collector_requests_total{{signal=\"{sig}\",outcome=\"{name}\"}} {}",
                    c.load(Relaxed)
                );
            }
        }
        // The same count under the name operators look for.
        out.push_str("# TYPE collector_duplicate_requests_total counter\n");
        let duplicate = OUTCOMES
            .iter()
            .position(|(o, _)| *o == Outcome::Duplicate)
            .unwrap_or(0);
        for (sig, s) in SIGNALS.iter().zip(&self.signals) {
            let _ = writeln!(
                out,
                "collector_duplicate_requests_total{{signal=\"{sig}\"}} {}",
                s.requests[duplicate].load(Relaxed)
            );
        }
        for (metric, pick) in [
            ("collector_items_received_total", 0),
            ("collector_items_accepted_total", 1),
            ("collector_items_rejected_total", 2),
        ] {
            let _ = writeln!(out, "# TYPE {metric} counter");
            for (sig, s) in SIGNALS.iter().zip(&self.signals) {
                let c = [&s.received, &s.accepted, &s.rejected][pick];
                let _ = writeln!(out, "{metric}{{signal=\"{sig}\"}} {}", c.load(Relaxed));
            }
        }
        for (metric, pick) in [
            ("collector_attributes_dropped_total", 0),
            ("collector_values_truncated_total", 1),
            ("collector_values_too_deep_total", 2),
            ("collector_unauthenticated_requests_total", 3),
            ("collector_rate_limited_requests_total", 4),
            ("collector_request_budget_refused_total", 5),
            ("collector_request_body_timeouts_total", 6),
        ] {
            let _ = writeln!(out, "# TYPE {metric} counter");
            for (sig, l) in SIGNALS.iter().zip(&self.limits) {
                let c = [
                    &l.attributes_dropped,
                    &l.values_truncated,
                    &l.values_too_deep,
                    &l.unauthenticated,
                    &l.rate_limited,
                    &l.over_budget,
                    &l.body_timeouts,
                ][pick];
                let _ = writeln!(out, "{metric}{{signal=\"{sig}\"}} {}", c.load(Relaxed));
            }
        }
        out.push_str("# TYPE collector_connections_refused_total counter\n");
        for (listener, c) in LISTENERS.iter().zip(&self.connections_refused) {
            let _ = writeln!(
                out,
                "collector_connections_refused_total{{listener=\"{listener}\"}} {}",
                c.load(Relaxed)
            );
        }
        for (metric, pick) in [
            ("collector_exported_rows_total", 0),
            ("collector_failed_rows_total", 1),
            ("collector_insert_retries_total", 2),
            ("collector_dead_letter_rows_total", 1),
            ("collector_dead_letter_batches_total", 3),
        ] {
            let _ = writeln!(out, "# TYPE {metric} counter");
            for (table, t) in ALL_TABLES.iter().zip(&self.tables) {
                let c = [
                    &t.exported_rows,
                    &t.failed_rows,
                    &t.retries,
                    &t.dead_letter_batches,
                ][pick];
                let _ = writeln!(
                    out,
                    "{metric}{{table=\"{}\"}} {}",
                    table.name,
                    c.load(Relaxed)
                );
            }
        }
        out.push_str("# TYPE collector_batch_rows histogram\n");
        for (table, t) in ALL_TABLES.iter().zip(&self.tables) {
            t.batch_rows.render(
                &mut out,
                "collector_batch_rows",
                &format!("table=\"{}\"", table.name),
            );
        }
        out.push_str("# TYPE collector_insert_duration_seconds histogram\n");
        for (table, t) in ALL_TABLES.iter().zip(&self.tables) {
            t.insert_seconds.render(
                &mut out,
                "collector_insert_duration_seconds",
                &format!("table=\"{}\"", table.name),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::TRACES;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.request("logs", Outcome::Partial, 5, 4, 1);
        m.request("traces", Outcome::Duplicate, 0, 0, 0);
        m.exported(&TRACES, 250, Duration::from_millis(20));
        m.dead_lettered(&TRACES, 7);
        let text = m.render();
        assert!(text.contains("collector_dead_letter_rows_total{table=\"otel_traces\"} 7"));
        assert!(text.contains("collector_dead_letter_batches_total{table=\"otel_traces\"} 1"));
        assert!(text.contains("collector_failed_rows_total{table=\"otel_traces\"} 7"));
        assert!(text.contains("collector_requests_total{signal=\"logs\",outcome=\"partial\"} 1"));
        assert!(text.contains("collector_items_rejected_total{signal=\"logs\"} 1"));
        assert!(
            text.contains("collector_requests_total{signal=\"traces\",outcome=\"duplicate\"} 1")
        );
        assert!(text.contains("collector_duplicate_requests_total{signal=\"traces\"} 1"));
        assert!(text.contains("collector_exported_rows_total{table=\"otel_traces\"} 250"));
        assert!(text.contains("collector_batch_rows_bucket{table=\"otel_traces\",le=\"100\"} 0"));
        assert!(text.contains("collector_batch_rows_bucket{table=\"otel_traces\",le=\"1000\"} 1"));
        assert!(text.contains("collector_batch_rows_sum{table=\"otel_traces\"} 250"));
    }

    #[test]
    fn renders_limit_and_auth_counters() {
        let m = Metrics::default();
        m.limited("traces", 99_744, 2, 1);
        m.unauthenticated("logs");
        m.rate_limited("metrics");
        m.over_budget("logs");
        m.body_timeout("traces");
        m.connection_refused("grpc");
        let text = m.render();
        assert!(text.contains("collector_request_budget_refused_total{signal=\"logs\"} 1"));
        assert!(text.contains("collector_request_body_timeouts_total{signal=\"traces\"} 1"));
        assert!(text.contains("collector_connections_refused_total{listener=\"grpc\"} 1"));
        assert!(text.contains("collector_connections_refused_total{listener=\"http\"} 0"));
        assert!(text.contains("collector_attributes_dropped_total{signal=\"traces\"} 99744"));
        assert!(text.contains("collector_values_truncated_total{signal=\"traces\"} 2"));
        assert!(text.contains("collector_values_too_deep_total{signal=\"traces\"} 1"));
        assert!(text.contains("collector_unauthenticated_requests_total{signal=\"logs\"} 1"));
        assert!(text.contains("collector_rate_limited_requests_total{signal=\"metrics\"} 1"));
    }
}

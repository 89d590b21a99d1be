//! The collector's own instruments, typed, in one [`Registry`] (see `registry.rs`).

use std::sync::Arc;
use std::time::Duration;

use super::registry::{Counter, Histogram, Registry, Snapshot};
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

const ROW_BOUNDS: &[f64] = &[1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];
const SECONDS_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Per signal, in [`SIGNALS`] order.
struct SignalInstruments {
    /// In [`OUTCOMES`] order.
    requests: Vec<Arc<Counter>>,
    received: Arc<Counter>,
    accepted: Arc<Counter>,
    rejected: Arc<Counter>,
    /// What the receivers' limits and auth did.
    attributes_dropped: Arc<Counter>,
    values_truncated: Arc<Counter>,
    values_too_deep: Arc<Counter>,
    unauthenticated: Arc<Counter>,
    rate_limited: Arc<Counter>,
    over_budget: Arc<Counter>,
    body_timeouts: Arc<Counter>,
}

/// Per table, in [`ALL_TABLES`] order.
struct TableInstruments {
    exported_rows: Arc<Counter>,
    failed_rows: Arc<Counter>,
    retries: Arc<Counter>,
    dead_letter_batches: Arc<Counter>,
    batch_rows: Arc<Histogram>,
    insert_seconds: Arc<Histogram>,
}

/// The listeners whose refused connections are counted.
pub const LISTENERS: [&str; 2] = ["grpc", "http"];

pub struct Metrics {
    registry: Registry,
    signals: Vec<SignalInstruments>,
    tables: Vec<TableInstruments>,
    /// Per listener: connections closed at once for being over the limit.
    connections_refused: Vec<Arc<Counter>>,
}

/// One counter per signal, registered under `name{signal=…}`.
fn per_signal(r: &Registry, name: &'static str) -> Vec<Arc<Counter>> {
    SIGNALS
        .iter()
        .map(|s| r.counter(name, &[("signal", s)]))
        .collect()
}

/// One counter per table, registered under `name{table=…}`.
fn per_table(r: &Registry, name: &'static str) -> Vec<Arc<Counter>> {
    ALL_TABLES
        .iter()
        .map(|t| r.counter(name, &[("table", t.name)]))
        .collect()
}

impl Default for Metrics {
    /// Registers every series; the registration order is the order `/metrics` shows.
    fn default() -> Self {
        let r = Registry::default();
        let requests: Vec<Vec<Arc<Counter>>> = SIGNALS
            .iter()
            .map(|s| {
                OUTCOMES
                    .iter()
                    .map(|(_, o)| {
                        r.counter("collector_requests_total", &[("signal", s), ("outcome", o)])
                    })
                    .collect()
            })
            .collect();
        // The same count under the name operators look for.
        for (s, counters) in SIGNALS.iter().zip(&requests) {
            let duplicate = OUTCOMES
                .iter()
                .position(|(o, _)| *o == Outcome::Duplicate)
                .unwrap_or(0);
            r.add_counter(
                "collector_duplicate_requests_total",
                &[("signal", s)],
                counters[duplicate].clone(),
            );
        }
        let mut received = per_signal(&r, "collector_items_received_total").into_iter();
        let mut accepted = per_signal(&r, "collector_items_accepted_total").into_iter();
        let mut rejected = per_signal(&r, "collector_items_rejected_total").into_iter();
        let mut dropped = per_signal(&r, "collector_attributes_dropped_total").into_iter();
        let mut truncated = per_signal(&r, "collector_values_truncated_total").into_iter();
        let mut too_deep = per_signal(&r, "collector_values_too_deep_total").into_iter();
        let mut unauthenticated =
            per_signal(&r, "collector_unauthenticated_requests_total").into_iter();
        let mut rate_limited = per_signal(&r, "collector_rate_limited_requests_total").into_iter();
        let mut over_budget = per_signal(&r, "collector_request_budget_refused_total").into_iter();
        let mut body_timeouts = per_signal(&r, "collector_request_body_timeouts_total").into_iter();
        let signals = requests
            .into_iter()
            .map(|requests| SignalInstruments {
                requests,
                received: received.next().expect("one per signal"),
                accepted: accepted.next().expect("one per signal"),
                rejected: rejected.next().expect("one per signal"),
                attributes_dropped: dropped.next().expect("one per signal"),
                values_truncated: truncated.next().expect("one per signal"),
                values_too_deep: too_deep.next().expect("one per signal"),
                unauthenticated: unauthenticated.next().expect("one per signal"),
                rate_limited: rate_limited.next().expect("one per signal"),
                over_budget: over_budget.next().expect("one per signal"),
                body_timeouts: body_timeouts.next().expect("one per signal"),
            })
            .collect();

        let connections_refused = LISTENERS
            .iter()
            .map(|l| r.counter("collector_connections_refused_total", &[("listener", l)]))
            .collect();
        let mut exported = per_table(&r, "collector_exported_rows_total").into_iter();
        let failed_rows = per_table(&r, "collector_failed_rows_total");
        // Rows given up on are the rows in the dead-letter store: one count, two names.
        for (t, c) in ALL_TABLES.iter().zip(&failed_rows) {
            r.add_counter(
                "collector_dead_letter_rows_total",
                &[("table", t.name)],
                c.clone(),
            );
        }
        let mut failed = failed_rows.into_iter();
        let mut retries = per_table(&r, "collector_insert_retries_total").into_iter();
        let mut dead_letter_batches =
            per_table(&r, "collector_dead_letter_batches_total").into_iter();
        let batch_rows: Vec<_> = ALL_TABLES
            .iter()
            .map(|t| r.histogram("collector_batch_rows", &[("table", t.name)], ROW_BOUNDS))
            .collect();
        let insert_seconds: Vec<_> = ALL_TABLES
            .iter()
            .map(|t| {
                r.histogram(
                    "collector_insert_duration_seconds",
                    &[("table", t.name)],
                    SECONDS_BOUNDS,
                )
            })
            .collect();
        let tables = batch_rows
            .into_iter()
            .zip(insert_seconds)
            .map(|(batch_rows, insert_seconds)| TableInstruments {
                exported_rows: exported.next().expect("one per table"),
                failed_rows: failed.next().expect("one per table"),
                retries: retries.next().expect("one per table"),
                dead_letter_batches: dead_letter_batches.next().expect("one per table"),
                batch_rows,
                insert_seconds,
            })
            .collect();
        Metrics {
            registry: r,
            signals,
            tables,
            connections_refused,
        }
    }
}

fn signal_index(signal: &str) -> usize {
    SIGNALS.iter().position(|s| *s == signal).unwrap_or(0)
}

impl Metrics {
    /// Where a new instrument is registered: one line, e.g.
    /// `metrics.registry().counter("collector_x_total", &[("table", name)])`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every series now (see [`Snapshot::render_text`] and [`Snapshot::to_otlp`]).
    pub fn snapshot(&self) -> Snapshot {
        self.registry.snapshot()
    }

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
        s.requests[i].inc();
        s.received.inc_by(received);
        s.accepted.inc_by(accepted);
        s.rejected.inc_by(rejected);
    }

    /// Attributes dropped, values truncated and values nested too deep in one request.
    pub fn limited(&self, signal: &str, dropped: u64, truncated: u64, too_deep: u64) {
        let s = &self.signals[signal_index(signal)];
        s.attributes_dropped.inc_by(dropped);
        s.values_truncated.inc_by(truncated);
        s.values_too_deep.inc_by(too_deep);
    }

    /// A request refused for a missing or wrong bearer token.
    pub fn unauthenticated(&self, signal: &str) {
        self.signals[signal_index(signal)].unauthenticated.inc();
    }

    /// A request refused by the per-token rate limit.
    pub fn rate_limited(&self, signal: &str) {
        self.signals[signal_index(signal)].rate_limited.inc();
    }

    pub fn exported(&self, table: &Table, rows: u64, took: Duration) {
        let t = &self.tables[table.id as usize];
        t.exported_rows.inc_by(rows);
        t.batch_rows.observe(rows as f64);
        t.insert_seconds.observe(took.as_secs_f64());
    }

    /// Rows ClickHouse will not take, written to the dead-letter store as one letter.
    pub fn dead_lettered(&self, table: &Table, rows: u64) {
        let t = &self.tables[table.id as usize];
        t.failed_rows.inc_by(rows);
        t.dead_letter_batches.inc();
    }

    /// A request refused because no budget for its bytes came free in time.
    pub fn over_budget(&self, signal: &str) {
        self.signals[signal_index(signal)].over_budget.inc();
    }

    /// A request whose body did not arrive within the body timeout.
    pub fn body_timeout(&self, signal: &str) {
        self.signals[signal_index(signal)].body_timeouts.inc();
    }

    /// A connection closed at once because `listener` held its limit.
    pub fn connection_refused(&self, listener: &str) {
        let i = LISTENERS.iter().position(|l| *l == listener).unwrap_or(0);
        self.connections_refused[i].inc();
    }

    pub fn retried(&self, table: &Table) {
        self.tables[table.id as usize].retries.inc();
    }

    pub fn exported_rows(&self, table: &Table) -> u64 {
        self.tables[table.id as usize].exported_rows.get()
    }

    /// The Prometheus text of these instruments.
    pub fn render(&self) -> String {
        self.snapshot().render_text()
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

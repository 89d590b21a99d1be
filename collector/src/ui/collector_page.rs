//! `/collector`: what this collector's `/metrics` says, readable — items
//! accepted and refused per signal, the spool, INSERT latency and failures —
//! and the spool's history from the metrics it writes into its own tables.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use maud::{html, Markup};

use super::charts::{self, line_chart, Series, Unit, PALETTE};
use super::layout::{self, Nav, Page};
use super::params::{Params, TimeRange};
use super::queries;
use super::{PageResult, Ui};
use crate::telemetry::{Readiness, Snapshot, Value};

/// One sample as the Prometheus text exposition shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// The snapshot's series as the Prometheus samples `/metrics` shows (a histogram
/// as its cumulative `_bucket{le=…}`, `_sum` and `_count`), read from the typed
/// values, not from the text.
pub fn samples(snapshot: &Snapshot) -> Vec<Sample> {
    let mut out = Vec::new();
    for family in &snapshot.0 {
        for (labels, value) in &family.series {
            let labels: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            let mut push = |suffix: &str, extra: Option<String>, value: f64| {
                let mut labels = labels.clone();
                labels.extend(extra.map(|le| ("le".to_string(), le)));
                out.push(Sample {
                    name: format!("{}{suffix}", family.name),
                    labels,
                    value,
                });
            };
            match value {
                Value::Count(n) => push("", None, *n as f64),
                Value::Level(v) => push("", None, *v),
                Value::Histogram(h) => {
                    let mut cumulative = 0;
                    for (bound, count) in h.bounds.iter().zip(&h.counts) {
                        cumulative += count;
                        push("_bucket", Some(bound.to_string()), cumulative as f64);
                    }
                    push("_bucket", Some("+Inf".into()), h.count as f64);
                    push("_sum", None, h.sum);
                    push("_count", None, h.count as f64);
                }
            }
        }
    }
    out
}

struct Metrics(Vec<Sample>);

impl Metrics {
    fn get(&self, name: &str, key: &str, value: &str) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name && (key.is_empty() || s.label(key) == value))
            .map(|s| s.value)
            .sum()
    }

    fn values_of(&self, name: &str, key: &str) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        for s in self.0.iter().filter(|s| s.name == name) {
            let v = s.label(key).to_string();
            if !seen.contains(&v) {
                seen.push(v);
            }
        }
        seen
    }

    /// The upper bound of the bucket holding the `q` quantile of a histogram.
    fn bucket_quantile(&self, name: &str, table: &str, q: f64) -> Option<f64> {
        let buckets: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter(|s| s.name == format!("{name}_bucket") && s.label("table") == table)
            .map(|s| {
                (
                    s.label("le").parse::<f64>().unwrap_or(f64::INFINITY),
                    s.value,
                )
            })
            .collect();
        let total = buckets.last()?.1;
        if total == 0.0 {
            return None;
        }
        buckets
            .iter()
            .find(|(_, c)| *c >= q * total)
            .map(|(le, _)| *le)
    }
}

pub async fn page(State(ui): State<Ui>, Query(p): Query<Params>) -> PageResult {
    let range = TimeRange::parse(&p)?;
    let m = Metrics(samples(&ui.health.snapshot()));
    let step = range.step(15);
    let history = queries::spool_history(&ui.client, &range, step).await?;
    let state = match ui.health.readiness() {
        Readiness::NotReady(why) => format!("not ready: {why}"),
        Readiness::Degraded(why) => format!("degraded: {why}"),
        Readiness::Ready => "ready".to_string(),
    };
    let spool = m.get("collector_spool_bytes", "", "");
    let budget = m.get("collector_spool_budget_bytes", "", "");
    let body = html! {
        div.cards {
            div.card #state { "state" b.bad[state != "ready"] { (state) } }
            div.card #spool { "spool" b { (charts::bytes(spool)) } span.muted { "of " (charts::bytes(budget)) " (" (format!("{:.1}", 100.0 * spool / budget.max(1.0))) " %)" } }
            div.card #oldest { "oldest spooled data" b { (format!("{:.0} s", m.get("collector_spool_oldest_age_seconds", "", ""))) } }
            div.card { "failed rows (given up)" b.bad[m.get("collector_failed_rows_total", "", "") > 0.0] { (m.get("collector_failed_rows_total", "", "")) } }
        }
        h2 { "Items per signal" }
        table #signals {
            thead { tr { th { "signal" } th.num { "received" } th.num { "accepted" } th.num { "rejected" }
                th.num { "requests accepted" } th.num { "requests refused" } th.num { "unauthenticated" } th.num { "rate-limited" }
                th.num { "attributes dropped" } th.num { "values truncated" } } }
            tbody {
                @for sig in m.values_of("collector_items_received_total", "signal") {
                    @let requests = m.get("collector_requests_total", "signal", &sig);
                    @let ok = m.0.iter().filter(|s| s.name == "collector_requests_total" && s.label("signal") == sig
                        && matches!(s.label("outcome"), "accepted" | "partial")).map(|s| s.value).sum::<f64>();
                    tr {
                        td { (sig) }
                        td.num { (m.get("collector_items_received_total", "signal", &sig)) }
                        td.num { (m.get("collector_items_accepted_total", "signal", &sig)) }
                        td.num.bad[m.get("collector_items_rejected_total", "signal", &sig) > 0.0] { (m.get("collector_items_rejected_total", "signal", &sig)) }
                        td.num { (ok) }
                        td.num.bad[requests - ok > 0.0] { (requests - ok) }
                        td.num { (m.get("collector_unauthenticated_requests_total", "signal", &sig)) }
                        td.num { (m.get("collector_rate_limited_requests_total", "signal", &sig)) }
                        td.num { (m.get("collector_attributes_dropped_total", "signal", &sig)) }
                        td.num { (m.get("collector_values_truncated_total", "signal", &sig)) }
                    }
                }
            }
        }
        (refusals(&m))
        h2 { "Writing to ClickHouse" }
        table #tables {
            thead { tr { th { "table" } th.num { "rows written" } th.num { "INSERTs" } th.num { "rows / INSERT" }
                th.num { "mean INSERT" } th.num { "p99 INSERT (bucket)" } th.num { "retries" } th.num { "failed rows" } } }
            tbody {
                @for t in m.values_of("collector_exported_rows_total", "table") {
                    @let inserts = m.get("collector_insert_duration_seconds_count", "table", &t);
                    tr {
                        td.mono { (t) }
                        td.num { (m.get("collector_exported_rows_total", "table", &t)) }
                        td.num { (inserts) }
                        td.num { (charts::number(m.get("collector_batch_rows_sum", "table", &t) / inserts.max(1.0))) }
                        td.num { @if inserts > 0.0 { (format!("{:.1} ms", 1000.0 * m.get("collector_insert_duration_seconds_sum", "table", &t) / inserts)) } @else { "–" } }
                        td.num { @match m.bucket_quantile("collector_insert_duration_seconds", &t, 0.99) {
                            Some(le) if le.is_finite() => { "≤ " (format!("{:.0} ms", le * 1000.0)) },
                            Some(_) => "> 10 s",
                            None => "–",
                        } }
                        td.num.bad[m.get("collector_insert_retries_total", "table", &t) > 0.0] { (m.get("collector_insert_retries_total", "table", &t)) }
                        td.num.bad[m.get("collector_failed_rows_total", "table", &t) > 0.0] { (m.get("collector_failed_rows_total", "table", &t)) }
                    }
                }
            }
        }
        h2 { "Spool over time" }
        (history_charts(&history, &range))
        p.muted { "Counters since this collector started, as its " code { "/metrics" } " shows them; the charts read what it writes into "
            code { "otel_metrics_gauge" } " every " code { "telemetry.export_interval_ms" } "." }
    };
    Ok(layout::render(
        Page {
            title: "Collector".into(),
            nav: Nav::Collector,
            range: &range,
            keep: vec![],
        },
        body,
    ))
}

fn refusals(m: &Metrics) -> Markup {
    let refused: Vec<&Sample> =
        m.0.iter()
            .filter(|s| {
                s.name == "collector_requests_total"
                    && !matches!(s.label("outcome"), "accepted" | "partial")
                    && s.value > 0.0
            })
            .collect();
    html! {
        @if !refused.is_empty() {
            h2 { "Refused requests" }
            table #refused {
                thead { tr { th { "signal" } th { "why" } th.num { "requests" } } }
                tbody { @for s in refused { tr { td { (s.label("signal")) } td { (s.label("outcome")) } td.num { (s.value) } } } }
            }
        }
    }
}

fn history_charts(history: &[queries::GaugePoint], range: &TimeRange) -> Markup {
    let mut by_name: BTreeMap<&str, Vec<(u32, f64)>> = BTreeMap::new();
    for p in history {
        by_name
            .entry(p.name.as_str())
            .or_default()
            .push((p.t, p.value));
    }
    let series = |name: &str, color| Series {
        label: name.to_string(),
        color,
        points: by_name.get(name).cloned().unwrap_or_default(),
    };
    html! {
        div.grid2 {
            (line_chart("Spool size", Unit::Bytes, range, &[series("collector_spool_bytes", PALETTE[0])]))
            (line_chart("Oldest spooled data", Unit::Seconds, range, &[series("collector_spool_oldest_age_seconds", PALETTE[3])]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_collectors_snapshot() {
        let r = crate::telemetry::Registry::default();
        r.counter("collector_items_accepted_total", &[("signal", "traces")])
            .inc_by(12);
        r.gauge_fn("collector_spool_bytes", &[], || 4096.0);
        let h = r.histogram("h", &[("table", "t")], &[0.1]);
        for v in [0.05, 0.05, 0.05, 7.0] {
            h.observe(v);
        }
        let s = samples(&r.snapshot());
        assert_eq!(s.len(), 6);
        assert_eq!(s[0].labels, [("signal".to_string(), "traces".to_string())]);
        let m = Metrics(s);
        assert_eq!(
            m.get("collector_items_accepted_total", "signal", "traces"),
            12.0
        );
        assert_eq!(m.get("collector_spool_bytes", "", ""), 4096.0);
        assert_eq!(m.bucket_quantile("h", "t", 0.5), Some(0.1));
        assert_eq!(m.bucket_quantile("h", "t", 0.99), Some(f64::INFINITY));
    }
}

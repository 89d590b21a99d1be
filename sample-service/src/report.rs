//! `sample-service report`: what the collector stored, read back from ClickHouse and
//! printed in the terminal — the RED table per service and route, one complete order
//! trace as a waterfall (request → relay → worker), that trace's log lines, and where
//! to keep exploring.
//!
//! The queries live in [`run`]; everything that turns rows into text is a pure
//! function of hand-checkable rows so it is tested without ClickHouse.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use thiserror::Error;

/// The three queues an order's events go to; a complete order trace has a CONSUMER
/// span `process <prefix>.<queue>` for each.
pub const ORDER_QUEUES: [&str; 3] = ["payment", "email", "sms"];

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// ClickHouse HTTP URL the collector writes to.
    #[arg(long, env = "CLICKHOUSE_URL")]
    pub clickhouse_url: String,
    /// Database of the collector's tables.
    #[arg(long, default_value = "otel", value_parser = parse_database)]
    pub database: String,
    /// The window: spans that started within the last this many seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub since_seconds: u64,
    /// Show this trace (32 hex digits) instead of the latest complete order trace.
    #[arg(long, value_parser = parse_trace_id)]
    pub trace_id: Option<String>,
    /// The collector's OTLP gRPC address, for the closing notes.
    #[arg(long, default_value = "127.0.0.1:4317")]
    pub collector_grpc: String,
    /// The collector's OTLP HTTP address, for the closing notes.
    #[arg(long, default_value = "127.0.0.1:4318")]
    pub collector_http: String,
    /// The collector's health and metrics address, for the closing notes.
    #[arg(long, default_value = "127.0.0.1:13133")]
    pub collector_admin: String,
    /// The shop's base URL, for the closing notes (left out when not given).
    #[arg(long)]
    pub shop_url: Option<String>,
}

fn parse_database(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a plain database name (letters, digits, underscore)"
        ))
    }
}

fn parse_trace_id(s: &str) -> Result<String, String> {
    let id = s.trim().to_ascii_lowercase();
    if id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()) && id != "0".repeat(32) {
        Ok(id)
    } else {
        Err(format!(
            "{s:?} is not a trace id (32 hex digits, not all zero)"
        ))
    }
}

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("querying ClickHouse at {url} ({what})")]
    Query {
        url: String,
        what: &'static str,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error(
        "no SERVER spans in {database}.otel_traces from the last {since_seconds} s: \
         is the service exporting to the collector, and the collector writing to this ClickHouse?"
    )]
    NoServerSpans {
        database: String,
        since_seconds: u64,
    },
    #[error(
        "no trace from the last {0} s has a `POST /orders` SERVER span and CONSUMER spans \
         for payment, email and sms (yet)"
    )]
    NoCompleteTrace(u64),
    #[error("trace {0} has no spans in otel_traces")]
    TraceNotFound(String),
    #[error("writing the report")]
    Io(#[from] std::io::Error),
}

/// One line of the RED table: SERVER spans of one service and route.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Deserialize)]
pub struct RedLine {
    pub service: String,
    pub route: String,
    pub requests: u64,
    pub errors: u64,
    /// p50, p95, p99, p99.9 of the duration, ms.
    pub quantiles_ms: Vec<f64>,
    /// Start of the first and of the last span, Unix ns.
    pub first_ns: i64,
    pub last_ns: i64,
}

/// One span of the shown trace.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Deserialize)]
pub struct TraceSpan {
    pub span_id: String,
    pub parent: String,
    pub name: String,
    /// As stored: `Server`, `Client`, `Producer`, `Consumer`, `Internal`.
    pub kind: String,
    pub service: String,
    /// As stored: `Ok`, `Error`, `Unset`.
    pub status: String,
    pub message: String,
    pub start_ns: i64,
    pub duration_ns: u64,
}

impl TraceSpan {
    fn end_ns(&self) -> i64 {
        self.start_ns
            .saturating_add(self.duration_ns.min(i64::MAX as u64) as i64)
    }
}

/// One log line of the shown trace.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Deserialize)]
pub struct LogLine {
    pub ts_ns: i64,
    pub service: String,
    pub severity: String,
    pub body: String,
    /// `key=value` pairs of the record's attributes, space-separated.
    pub attributes: String,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct TraceIdRow {
    trace_id: String,
}

/// Runs the queries and writes the report to `out`, section by section.
pub async fn run(args: &ReportArgs, out: &mut impl std::io::Write) -> Result<(), ReportError> {
    let client = clickhouse::Client::default().with_url(&args.clickhouse_url);
    let db = format!("`{}`", args.database);
    let window = format!(
        "Timestamp >= now64(9) - toIntervalSecond({})",
        args.since_seconds
    );
    let query_err = |what: &'static str| {
        let url = args.clickhouse_url.clone();
        move |source| ReportError::Query { url, what, source }
    };

    let red: Vec<RedLine> = client
        .query(&format!(
            "SELECT ServiceName AS service, SpanName AS route, count() AS requests, \
             countIf(StatusCode = 'Error') AS errors, \
             arrayMap(q -> q / 1e6, quantilesExact(0.5, 0.95, 0.99, 0.999)(toFloat64(Duration))) AS quantiles_ms, \
             toUnixTimestamp64Nano(min(Timestamp)) AS first_ns, \
             toUnixTimestamp64Nano(max(Timestamp)) AS last_ns \
             FROM {db}.otel_traces WHERE SpanKind = 'Server' AND {window} \
             GROUP BY service, route ORDER BY service, route"
        ))
        .fetch_all()
        .await
        .map_err(query_err("the RED table"))?;
    if red.is_empty() {
        return Err(ReportError::NoServerSpans {
            database: args.database.clone(),
            since_seconds: args.since_seconds,
        });
    }
    out.write_all(red_table(&red).as_bytes())?;
    out.flush()?;

    let trace_id = match &args.trace_id {
        Some(id) => id.clone(),
        None => {
            let consumers: Vec<String> = ORDER_QUEUES
                .iter()
                .map(|q| {
                    format!(
                        "countIf(SpanKind = 'Consumer' AND startsWith(SpanName, 'process ') \
                         AND endsWith(SpanName, '.{q}')) > 0"
                    )
                })
                .collect();
            // Latest first, but a trace without errors (no poison payment, no retry)
            // before one with them: it shows the path as it is meant to run.
            client
                .query(&format!(
                    "SELECT TraceId AS trace_id FROM {db}.otel_traces WHERE {window} AND TraceId != '' \
                     GROUP BY TraceId \
                     HAVING countIf(SpanKind = 'Server' AND SpanName = 'POST /orders') > 0 AND {} \
                     ORDER BY countIf(StatusCode = 'Error') = 0 DESC, min(Timestamp) DESC LIMIT 1",
                    consumers.join(" AND ")
                ))
                .fetch_optional::<TraceIdRow>()
                .await
                .map_err(query_err("the latest complete order trace"))?
                .ok_or(ReportError::NoCompleteTrace(args.since_seconds))?
                .trace_id
        }
    };

    let spans: Vec<TraceSpan> = client
        .query(&format!(
            "SELECT SpanId AS span_id, ParentSpanId AS parent, SpanName AS name, SpanKind AS kind, \
             ServiceName AS service, StatusCode AS status, StatusMessage AS message, \
             toUnixTimestamp64Nano(Timestamp) AS start_ns, Duration AS duration_ns \
             FROM {db}.otel_traces WHERE TraceId = ? ORDER BY Timestamp, SpanId"
        ))
        .bind(&trace_id)
        .fetch_all()
        .await
        .map_err(query_err("the trace's spans"))?;
    if spans.is_empty() {
        return Err(ReportError::TraceNotFound(trace_id));
    }
    writeln!(out)?;
    out.write_all(waterfall(&trace_id, &spans, BAR_WIDTH).as_bytes())?;
    out.flush()?;

    let logs: Vec<LogLine> = client
        .query(&format!(
            "SELECT toUnixTimestamp64Nano(Timestamp) AS ts_ns, ServiceName AS service, \
             SeverityText AS severity, Body AS body, \
             arrayStringConcat(arraySort(arrayMap((k, v) -> concat(k, '=', v), \
               mapKeys(LogAttributes), mapValues(LogAttributes))), ' ') AS attributes \
             FROM {db}.otel_logs WHERE TraceId = ? ORDER BY Timestamp"
        ))
        .bind(&trace_id)
        .fetch_all()
        .await
        .map_err(query_err("the trace's log lines"))?;
    let t0 = spans.iter().map(|s| s.start_ns).min().unwrap_or_default();
    writeln!(out)?;
    out.write_all(log_lines(&trace_id, &logs, t0).as_bytes())?;
    writeln!(out)?;
    out.write_all(explore(args, &trace_id).as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Width of the waterfall's duration bar, in cells.
pub const BAR_WIDTH: usize = 40;

/// Lays out rows with each column as wide as its widest cell; `right[i]` aligns
/// column `i` to the right. Columns are two spaces apart; no trailing blanks.
fn aligned(rows: &[Vec<String>], right: &[bool]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let w = widths[c];
            if right.get(c).copied().unwrap_or(false) {
                let _ = write!(line, "{cell:>w$}");
            } else {
                let _ = write!(line, "{cell:<w$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn ms(ns: f64) -> String {
    format!("{:.3}", ns / 1e6)
}

/// The RED table. The rate of every line is over the same window: from the first to
/// the last SERVER span seen in it (at least one second), so quiet routes read low.
pub fn red_table(lines: &[RedLine]) -> String {
    let first = lines.iter().map(|l| l.first_ns).min().unwrap_or_default();
    let last = lines.iter().map(|l| l.last_ns).max().unwrap_or_default();
    let window_s = ((last - first) as f64 / 1e9).max(1.0);
    let total: u64 = lines.iter().map(|l| l.requests).sum();
    let mut out = format!(
        "RED per service and route — {total} SERVER spans from {} to {} ({window_s:.1} s)\n\n",
        clock(first),
        clock(last)
    );
    let mut rows = vec![[
        "service", "route", "requests", "rate/s", "error%", "p50 ms", "p95 ms", "p99 ms",
        "p99.9 ms",
    ]
    .map(String::from)
    .to_vec()];
    for l in lines {
        let q = |i: usize| {
            l.quantiles_ms
                .get(i)
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "-".into())
        };
        rows.push(vec![
            l.service.clone(),
            l.route.clone(),
            l.requests.to_string(),
            format!("{:.1}", l.requests as f64 / window_s),
            format!(
                "{:.2}",
                100.0 * l.errors as f64 / (l.requests.max(1)) as f64
            ),
            q(0),
            q(1),
            q(2),
            q(3),
        ]);
    }
    out.push_str(&aligned(
        &rows,
        &[false, false, true, true, true, true, true, true, true],
    ));
    out
}

/// `HH:MM:SS.mmm` UTC of a Unix-ns time.
fn clock(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%H:%M:%S%.3f UTC")
        .to_string()
}

/// The spans in tree order (depth first, children by start time) with the prefix that
/// draws their branch. Spans whose parent is not in the trace (the caller's span, or
/// one not exported) are roots.
pub fn tree(spans: &[TraceSpan]) -> Vec<(String, &TraceSpan)> {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&TraceSpan>> = HashMap::new();
    let mut roots = Vec::new();
    for s in spans {
        if !s.parent.is_empty() && s.parent != s.span_id && ids.contains(s.parent.as_str()) {
            children.entry(s.parent.as_str()).or_default().push(s);
        } else {
            roots.push(s);
        }
    }
    let by_start = |a: &&TraceSpan, b: &&TraceSpan| {
        (a.start_ns, &a.name, &a.span_id).cmp(&(b.start_ns, &b.name, &b.span_id))
    };
    roots.sort_by(by_start);
    for list in children.values_mut() {
        list.sort_by(by_start);
    }

    let mut out = Vec::with_capacity(spans.len());
    let mut seen: HashSet<&str> = HashSet::new();
    // (span, prefix of its own line, prefix its children continue)
    let mut stack: Vec<(&TraceSpan, String, String)> = roots
        .iter()
        .rev()
        .map(|s| (*s, String::new(), String::new()))
        .collect();
    while let Some((span, line_prefix, child_prefix)) = stack.pop() {
        if !seen.insert(span.span_id.as_str()) {
            continue;
        }
        out.push((line_prefix, span));
        if let Some(kids) = children.get(span.span_id.as_str()) {
            for (i, kid) in kids.iter().enumerate().rev() {
                let last = i + 1 == kids.len();
                stack.push((
                    kid,
                    format!("{child_prefix}{}", if last { "└─ " } else { "├─ " }),
                    format!("{child_prefix}{}", if last { "   " } else { "│  " }),
                ));
            }
        }
    }
    // A parent cycle (malformed data) is unreachable from the roots: show it anyway.
    for s in spans {
        if seen.insert(s.span_id.as_str()) {
            out.push((String::new(), s));
        }
    }
    out
}

/// The cells `[from, to)` of a bar `width` cells wide for a span in a trace of
/// `total_ns` starting at `t0`; at least one cell.
pub fn bar_cells(t0: i64, total_ns: i64, span: &TraceSpan, width: usize) -> (usize, usize) {
    let total = total_ns.max(1) as f64;
    let cell = |ns: i64| ((ns - t0) as f64 / total * width as f64).clamp(0.0, width as f64);
    let from = (cell(span.start_ns).floor() as usize).min(width.saturating_sub(1));
    let to = (cell(span.end_ns()).ceil() as usize).clamp(from + 1, width);
    (from, to)
}

fn bar(t0: i64, total_ns: i64, span: &TraceSpan, width: usize) -> String {
    let (from, to) = bar_cells(t0, total_ns, span, width);
    let mut s = String::with_capacity(width + 2);
    s.push('|');
    s.extend(std::iter::repeat_n(' ', from));
    s.extend(std::iter::repeat_n('█', to - from));
    s.extend(std::iter::repeat_n(' ', width - to));
    s.push('|');
    s
}

fn status(span: &TraceSpan) -> String {
    match span.status.as_str() {
        "Error" if span.message.is_empty() => "ERROR".into(),
        "Error" => format!("ERROR {}", one_line(&span.message, 60)),
        "Ok" => "ok".into(),
        "" | "Unset" => "-".into(),
        other => other.to_ascii_lowercase(),
    }
}

fn one_line(s: &str, max_chars: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > max_chars {
        let cut: String = flat.chars().take(max_chars.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

/// The trace as a waterfall: one row per span in tree order with its service, kind,
/// name (indented by depth), start offset, a bar on the trace's time scale, duration
/// and status.
pub fn waterfall(trace_id: &str, spans: &[TraceSpan], width: usize) -> String {
    let t0 = spans.iter().map(|s| s.start_ns).min().unwrap_or_default();
    let end = spans.iter().map(TraceSpan::end_ns).max().unwrap_or(t0);
    let total = end - t0;
    let services: HashSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    let mut out = format!(
        "Trace {trace_id} — {} spans, {} service{}, {} ms, from {}\n\n",
        spans.len(),
        services.len(),
        if services.len() == 1 { "" } else { "s" },
        ms(total as f64),
        clock(t0)
    );
    let mut rows = vec![[
        "service",
        "kind",
        "span",
        "start ms",
        "",
        "duration ms",
        "status",
    ]
    .map(String::from)
    .to_vec()];
    for (prefix, s) in tree(spans) {
        rows.push(vec![
            s.service.clone(),
            s.kind.to_ascii_uppercase(),
            format!("{prefix}{}", s.name),
            ms((s.start_ns - t0) as f64),
            bar(t0, total, s, width),
            ms(s.duration_ns as f64),
            status(s),
        ]);
    }
    out.push_str(&aligned(
        &rows,
        &[false, false, false, true, false, true, false],
    ));
    out
}

/// The trace's log lines, with their offset from the trace's first span.
pub fn log_lines(trace_id: &str, logs: &[LogLine], t0: i64) -> String {
    let mut out = format!("Log lines of trace {trace_id} ({})\n\n", logs.len());
    if logs.is_empty() {
        out.push_str("(none carry this trace id)\n");
        return out;
    }
    let mut rows = vec![["offset ms", "service", "severity", "message"]
        .map(String::from)
        .to_vec()];
    for l in logs {
        let message = if l.attributes.is_empty() {
            one_line(&l.body, 200)
        } else {
            one_line(&format!("{}  {}", l.body, l.attributes), 200)
        };
        rows.push(vec![
            format!("{:+.3}", (l.ts_ns - t0) as f64 / 1e6),
            l.service.clone(),
            l.severity.clone(),
            message,
        ]);
    }
    out.push_str(&aligned(&rows, &[true, false, false, false]));
    out
}

fn http_url(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.trim_end_matches('/').to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Where to look next: the collector's endpoints and ad-hoc SQL over ClickHouse HTTP.
pub fn explore(args: &ReportArgs, trace_id: &str) -> String {
    let ch = args.clickhouse_url.trim_end_matches('/');
    let db = &args.database;
    let admin = http_url(&args.collector_admin);
    let mut out = String::from("Keep exploring\n\n");
    let _ = writeln!(out, "  ClickHouse HTTP    {ch}   (database `{db}`: otel_traces, otel_logs, otel_metrics_*, otel_traces_red_1m)");
    let _ = writeln!(
        out,
        "    echo \"SELECT SpanKind, SpanName, count() FROM {db}.otel_traces GROUP BY ALL ORDER BY 3 DESC\" | curl -s --data-binary @- {ch}/"
    );
    let _ = writeln!(
        out,
        "    echo \"SELECT Timestamp, ServiceName, SpanName, Duration FROM {db}.otel_traces WHERE TraceId = '{trace_id}' ORDER BY Timestamp FORMAT PrettyCompact\" | curl -s --data-binary @- {ch}/"
    );
    let _ = writeln!(
        out,
        "  collector          OTLP gRPC {}, OTLP HTTP {}/v1/{{traces,logs,metrics}}",
        args.collector_grpc,
        http_url(&args.collector_http)
    );
    let _ = writeln!(
        out,
        "                     {admin}/health/ready, {admin}/metrics"
    );
    if let Some(shop) = &args.shop_url {
        let _ = writeln!(
            out,
            "  shop               {}/health/ready, {}/metrics",
            shop.trim_end_matches('/'),
            shop.trim_end_matches('/')
        );
    }
    let _ = writeln!(
        out,
        "  this report again  sample-service report --clickhouse-url {ch} --trace-id {trace_id}"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    fn span(
        id: &str,
        parent: &str,
        name: &str,
        kind: &str,
        start_ms: i64,
        dur_ms: i64,
    ) -> TraceSpan {
        TraceSpan {
            span_id: id.into(),
            parent: parent.into(),
            name: name.into(),
            kind: kind.into(),
            service: "shop".into(),
            status: "Unset".into(),
            message: String::new(),
            start_ns: 1_700_000_000_000 * MS + start_ms * MS,
            duration_ns: (dur_ms * MS) as u64,
        }
    }

    /// An order trace as the shop writes it, shuffled: the caller's span is not in it.
    fn order_trace() -> Vec<TraceSpan> {
        vec![
            span("c1", "p1", "process shop.payment", "Consumer", 30, 10),
            span("s", "caller", "POST /orders", "Server", 0, 20),
            span("p2", "s", "publish shop.email", "Producer", 26, 2),
            span("d1", "s", "INSERT orders", "Client", 5, 10),
            span("p1", "s", "publish shop.payment", "Producer", 25, 2),
            span("w1", "c1", "INSERT processed_messages", "Client", 32, 5),
            span("c2", "p2", "process shop.email", "Consumer", 35, 5),
        ]
    }

    #[test]
    fn the_tree_nests_children_under_parents_in_start_order() {
        let spans = order_trace();
        let rows: Vec<String> = tree(&spans)
            .into_iter()
            .map(|(prefix, s)| format!("{prefix}{}", s.name))
            .collect();
        assert_eq!(
            rows,
            [
                "POST /orders",
                "├─ INSERT orders",
                "├─ publish shop.payment",
                "│  └─ process shop.payment",
                "│     └─ INSERT processed_messages",
                "└─ publish shop.email",
                "   └─ process shop.email",
            ]
        );
    }

    #[test]
    fn spans_with_missing_parents_are_roots_and_cycles_are_still_shown() {
        let spans = vec![
            span("b", "a", "second", "Internal", 10, 1),
            span("a", "b", "first", "Internal", 0, 1),
            span("x", "gone", "orphan", "Server", 5, 1),
        ];
        let names: Vec<(String, &str)> = tree(&spans)
            .into_iter()
            .map(|(p, s)| (p, s.name.as_str()))
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names[0], (String::new(), "orphan"));
        assert!(names.iter().any(|(_, n)| *n == "first"));
        assert!(names.iter().any(|(_, n)| *n == "second"));
    }

    #[test]
    fn bars_are_scaled_to_the_trace() {
        let spans = order_trace();
        let t0 = spans.iter().map(|s| s.start_ns).min().unwrap();
        let total = 40 * MS; // the email consumer ends at 40 ms
        let by_name = |n: &str| spans.iter().find(|s| s.name == n).unwrap();
        // 40 cells for 40 ms: one cell per millisecond.
        assert_eq!(bar_cells(t0, total, by_name("POST /orders"), 40), (0, 20));
        assert_eq!(bar_cells(t0, total, by_name("INSERT orders"), 40), (5, 15));
        assert_eq!(
            bar_cells(t0, total, by_name("process shop.email"), 40),
            (35, 40)
        );
        // Half the width: a 2 ms span at 25 ms covers cells 12..14.
        assert_eq!(
            bar_cells(t0, total, by_name("publish shop.payment"), 20),
            (12, 14)
        );
        // Zero duration still shows one cell, also at the very end.
        let mut instant = span("i", "s", "instant", "Internal", 40, 0);
        assert_eq!(bar_cells(t0, total, &instant, 40), (39, 40));
        instant.start_ns = t0;
        assert_eq!(bar_cells(t0, total, &instant, 40), (0, 1));
    }

    #[test]
    fn the_waterfall_shows_service_kind_indented_names_offsets_bars_and_status() {
        let mut spans = order_trace();
        spans[0].status = "Error".into();
        spans[0].message = "card declined\nretry later".into();
        spans[1].status = "Ok".into();
        let text = waterfall("0af7651916cd43dd8448eb211c80319c", &spans, 20);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with(
            "Trace 0af7651916cd43dd8448eb211c80319c — 7 spans, 1 service, 40.000 ms, from "
        ));
        assert_eq!(lines[1], "");
        let header = lines[2];
        let rows = &lines[3..];
        assert_eq!(rows.len(), 7);
        // Every bar starts in the same column (in characters) and has the same width.
        let column = |line: &str, c: char| line.chars().position(|x| x == c);
        let bar_col = column(rows[0], '|').unwrap();
        for row in rows {
            assert_eq!(column(row, '|'), Some(bar_col), "{row}");
            let bar: String = row
                .chars()
                .skip(bar_col + 1)
                .take_while(|c| *c != '|')
                .collect();
            assert_eq!(bar.chars().count(), 20, "{row}");
        }
        assert_eq!(
            header.find("start ms").unwrap() + "start ms".len() + 2,
            bar_col
        );
        assert_eq!(
            rows[0],
            format!(
                "shop     SERVER    POST /orders                           0.000  |{}{}|       20.000  ok",
                "█".repeat(10),
                " ".repeat(10)
            )
        );
        let payment = rows
            .iter()
            .find(|r| r.contains("process shop.payment"))
            .unwrap();
        assert!(
            payment.contains("CONSUMER  │  └─ process shop.payment"),
            "{payment}"
        );
        assert!(
            payment.ends_with("10.000  ERROR card declined retry later"),
            "{payment}"
        );
        let relay = rows
            .iter()
            .find(|r| r.contains("publish shop.payment"))
            .unwrap();
        assert!(
            relay.contains("PRODUCER  ├─ publish shop.payment"),
            "{relay}"
        );
        assert!(
            relay.contains(&format!("|{}██{}|", " ".repeat(12), " ".repeat(6))),
            "{relay}"
        );
        assert!(rows.iter().all(|r| r == &r.trim_end()));
    }

    #[test]
    fn the_red_table_is_aligned_with_one_rate_window() {
        let base = 1_700_000_000_000 * MS;
        let lines = vec![
            RedLine {
                service: "inventory".into(),
                route: "GET /inventory/{id}".into(),
                requests: 9,
                errors: 0,
                quantiles_ms: vec![0.2, 0.4, 0.5, 0.5],
                first_ns: base + 1_000 * MS,
                last_ns: base + 9_000 * MS,
            },
            RedLine {
                service: "shop".into(),
                route: "POST /orders".into(),
                requests: 200,
                errors: 3,
                quantiles_ms: vec![4.25, 12.5, 20.125, 31.0],
                first_ns: base,
                last_ns: base + 10_000 * MS,
            },
        ];
        let text = red_table(&lines);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "RED per service and route — 209 SERVER spans from 22:13:20.000 UTC to 22:13:30.000 UTC (10.0 s)"
        );
        assert_eq!(
            &lines[2..],
            [
                "service    route                requests  rate/s  error%  p50 ms  p95 ms  p99 ms  p99.9 ms",
                "inventory  GET /inventory/{id}         9     0.9    0.00   0.200   0.400   0.500     0.500",
                "shop       POST /orders              200    20.0    1.50   4.250  12.500  20.125    31.000",
            ]
        );
    }

    #[test]
    fn log_lines_show_offset_service_severity_body_and_attributes() {
        let t0 = 1_700_000_000_000 * MS;
        let logs = vec![
            LogLine {
                ts_ns: t0 + 12_345_678,
                service: "shop".into(),
                severity: "INFO".into(),
                body: "order accepted".into(),
                attributes: "order_id=42 total_cents=900".into(),
            },
            LogLine {
                ts_ns: t0 - 500_000,
                service: "inventory".into(),
                severity: "WARN".into(),
                body: "two\nlines".into(),
                attributes: String::new(),
            },
        ];
        let text = log_lines("abc", &logs, t0);
        assert_eq!(
            text,
            "Log lines of trace abc (2)\n\n\
             offset ms  service    severity  message\n\
             \x20 +12.346  shop       INFO      order accepted  order_id=42 total_cents=900\n\
             \x20  -0.500  inventory  WARN      two lines\n"
        );
        assert!(log_lines("abc", &[], t0).ends_with("(none carry this trace id)\n"));
    }

    #[test]
    fn trace_ids_and_database_names_are_checked() {
        assert_eq!(
            parse_trace_id(" 0AF7651916CD43DD8448EB211C80319C ").unwrap(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(parse_trace_id("0af7651916cd43dd").is_err());
        assert!(parse_trace_id(&"0".repeat(32)).is_err());
        assert!(parse_trace_id(&"g".repeat(32)).is_err());
        assert_eq!(parse_database("otel_2").unwrap(), "otel_2");
        assert!(parse_database("otel`; DROP").is_err());
        assert!(parse_database("").is_err());
    }

    #[test]
    fn the_closing_notes_name_every_endpoint() {
        let args = ReportArgs {
            clickhouse_url: "http://127.0.0.1:18123/".into(),
            database: "otel".into(),
            since_seconds: 60,
            trace_id: None,
            collector_grpc: "127.0.0.1:14317".into(),
            collector_http: "127.0.0.1:14318".into(),
            collector_admin: "127.0.0.1:14133".into(),
            shop_url: Some("http://127.0.0.1:18080".into()),
        };
        let text = explore(&args, "abc");
        for expected in [
            "ClickHouse HTTP    http://127.0.0.1:18123 ",
            "| curl -s --data-binary @- http://127.0.0.1:18123/",
            "WHERE TraceId = 'abc'",
            "OTLP gRPC 127.0.0.1:14317, OTLP HTTP http://127.0.0.1:14318/v1/{traces,logs,metrics}",
            "http://127.0.0.1:14133/health/ready, http://127.0.0.1:14133/metrics",
            "shop               http://127.0.0.1:18080/health/ready",
            "--clickhouse-url http://127.0.0.1:18123 --trace-id abc",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
    }
}

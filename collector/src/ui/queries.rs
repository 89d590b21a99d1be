//! Every query the UI runs, with the rows they return.
//!
//! The expressions shared with the Grafana dashboards and the rollups (route,
//! error, quantiles, the hourly switch) are the constants below; tests check that
//! the rollup views and the dashboards' SQL use exactly these, so a figure means
//! the same in the UI and in Grafana. Visitor input only ever appears as a query
//! parameter (`{name:Type}`); the few values formatted into SQL text are table
//! names and fragments from this file.

use clickhouse::{Client, Row};
use serde::Deserialize;

use super::params::TimeRange;
use crate::schema::{LOGS, TRACES, TRACES_RED_1H, TRACES_RED_1M};

/// From this range on, readers use the hourly rollup (the dashboards'
/// `$__range_s >= 259200`).
pub const HOURLY_FROM_SECS: u32 = 259_200;

/// p50, p95, p99, p99.9 (in this order, nanoseconds) from a rollup's sketches.
pub const QUANTILES: &str = "quantilesDDMerge(0.01, 0.5, 0.95, 0.99, 0.999)(DurationQuantiles)";

/// What the rollups call a route: `http.route`, else the span name.
pub const ROUTE: &str =
    "if(SpanAttributes['http.route'] != '', SpanAttributes['http.route'], SpanName)";

/// A failed span: status Error or an HTTP 5xx (the rollups' `Errors`).
pub const IS_ERROR: &str = "StatusCode = 'Error' OR toUInt16OrZero(if(SpanAttributes['http.response.status_code'] != '', SpanAttributes['http.response.status_code'], SpanAttributes['http.status_code'])) >= 500";

/// `col` within the range's `{from:UInt32}` … `{to:UInt32}` (the data source's
/// `$__timeFilter`).
fn in_range(col: &str) -> String {
    format!("{col} >= toDateTime({{from:UInt32}}) AND {col} <= toDateTime({{to:UInt32}})")
}

/// The rollup that answers `range`, and its grain in seconds.
pub fn rollup(range: &TimeRange) -> (&'static str, u32) {
    if range.seconds() >= HOURLY_FROM_SECS {
        (TRACES_RED_1H.name, 3600)
    } else {
        (TRACES_RED_1M.name, 60)
    }
}

fn ranged(client: &Client, sql: &str, range: &TimeRange) -> clickhouse::query::Query {
    client
        .query(sql)
        .param("from", range.from)
        .param("to", range.to)
}

type Result<T> = std::result::Result<T, clickhouse::error::Error>;

// ---------------------------------------------------------------- RED (rollups)

/// How RED figures are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedBy {
    Service,
    ServiceVersion,
    Route,
}

impl RedBy {
    fn keys(self) -> &'static str {
        match self {
            RedBy::Service => "ServiceName AS key, '' AS sub",
            RedBy::ServiceVersion => "ServiceName AS key, ServiceVersion AS sub",
            RedBy::Route => "Route AS key, '' AS sub",
        }
    }
}

#[derive(Debug, Clone, Row, Deserialize)]
pub struct RedRow {
    pub key: String,
    pub sub: String,
    pub requests: u64,
    pub errors: u64,
    /// p50, p95, p99, p99.9 in nanoseconds.
    pub q: Vec<f64>,
}

impl RedRow {
    pub fn error_pct(&self) -> f64 {
        100.0 * self.errors as f64 / self.requests.max(1) as f64
    }

    pub fn quantile(&self, i: usize) -> f64 {
        self.q.get(i).copied().unwrap_or(f64::NAN)
    }
}

/// RED per `by` from the rollup; `service` (empty: all) narrows it.
pub async fn red(
    client: &Client,
    range: &TimeRange,
    by: RedBy,
    service: &str,
) -> Result<Vec<RedRow>> {
    let (table, _) = rollup(range);
    let sql = format!(
        "SELECT {keys}, sum(Requests) AS requests, sum(Errors) AS errors, {QUANTILES} AS q \
         FROM {table} WHERE {time} AND ({{service:String}} = '' OR ServiceName = {{service:String}}) \
         GROUP BY key, sub ORDER BY key, sub",
        keys = by.keys(),
        time = in_range("Timestamp"),
    );
    ranged(client, &sql, range)
        .param("service", service)
        .fetch_all()
        .await
}

#[derive(Debug, Clone, Row, Deserialize)]
pub struct RedPoint {
    pub t: u32,
    pub key: String,
    pub requests: u64,
    pub errors: u64,
    pub q: Vec<f64>,
}

/// RED per bucket of `step` seconds and service (or route within `service`).
pub async fn red_series(
    client: &Client,
    range: &TimeRange,
    by: RedBy,
    service: &str,
    step: u32,
) -> Result<Vec<RedPoint>> {
    let (table, _) = rollup(range);
    let key = match by {
        RedBy::Route => "Route",
        _ => "ServiceName",
    };
    let sql = format!(
        "SELECT toUInt32(toStartOfInterval(Timestamp, toIntervalSecond({{step:UInt32}}))) AS t, \
                {key} AS key, sum(Requests) AS requests, sum(Errors) AS errors, {QUANTILES} AS q \
         FROM {table} WHERE {time} AND ({{service:String}} = '' OR ServiceName = {{service:String}}) \
         GROUP BY t, key ORDER BY t, key",
        time = in_range("Timestamp"),
    );
    ranged(client, &sql, range)
        .param("service", service)
        .param("step", step)
        .fetch_all()
        .await
}

// ---------------------------------------------------------------- raw spans

#[derive(Debug, Clone, Row, Deserialize)]
pub struct ServiceSpans {
    pub service: String,
    pub spans: u64,
    pub server_spans: u64,
}

/// Every service that sent spans in the range, also those without SERVER spans
/// (which the rollups do not count: workers, batch jobs).
pub async fn services_with_spans(client: &Client, range: &TimeRange) -> Result<Vec<ServiceSpans>> {
    let sql = format!(
        "SELECT ServiceName AS service, count() AS spans, countIf(SpanKind = 'Server') AS server_spans \
         FROM {t} WHERE {time} GROUP BY service ORDER BY service",
        t = TRACES.name,
        time = in_range("Timestamp"),
    );
    ranged(client, &sql, range).fetch_all().await
}

/// One span as lists show it.
#[derive(Debug, Clone, Row, Deserialize)]
pub struct SpanSummary {
    pub trace_id: String,
    pub ts: i64,
    pub service: String,
    pub kind: String,
    pub name: String,
    pub route: String,
    pub http_status: String,
    pub status: String,
    pub message: String,
    pub duration: u64,
}

fn span_summary_columns() -> String {
    format!(
        "TraceId AS trace_id, toUnixTimestamp64Nano(Timestamp) AS ts, ServiceName AS service, \
         SpanKind AS kind, SpanName AS name, {ROUTE} AS route, \
         if(SpanAttributes['http.response.status_code'] != '', SpanAttributes['http.response.status_code'], SpanAttributes['http.status_code']) AS http_status, \
         StatusCode AS status, StatusMessage AS message, Duration AS duration"
    )
}

/// Which of a service's spans a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanList {
    /// Its slowest SERVER spans (the Traces dashboard's *Matching requests, slowest
    /// first*).
    SlowestRequests,
    /// Its newest failed spans (the Traces dashboard's *Recent errors*).
    RecentErrors,
}

pub async fn service_spans(
    client: &Client,
    range: &TimeRange,
    service: &str,
    which: SpanList,
    limit: u32,
) -> Result<Vec<SpanSummary>> {
    let (filter, order) = match which {
        SpanList::SlowestRequests => ("SpanKind = 'Server'".to_string(), "Duration DESC"),
        SpanList::RecentErrors => (format!("({IS_ERROR})"), "Timestamp DESC"),
    };
    let sql = format!(
        "SELECT {cols} FROM {t} WHERE {time} AND ServiceName = {{service:String}} AND {filter} \
         ORDER BY {order} LIMIT {{limit:UInt32}}",
        cols = span_summary_columns(),
        t = TRACES.name,
        time = in_range("Timestamp"),
    );
    ranged(client, &sql, range)
        .param("service", service)
        .param("limit", limit)
        .fetch_all()
        .await
}

#[derive(Debug, Clone, Row, Deserialize)]
pub struct OutgoingRow {
    pub name: String,
    pub kind: String,
    pub calls: u64,
    pub errors: u64,
    pub p99: f64,
}

/// What the service calls: its CLIENT and PRODUCER spans by name.
pub async fn outgoing(
    client: &Client,
    range: &TimeRange,
    service: &str,
) -> Result<Vec<OutgoingRow>> {
    let sql = format!(
        "SELECT SpanName AS name, SpanKind AS kind, count() AS calls, countIf({IS_ERROR}) AS errors, \
                quantile(0.99)(Duration) AS p99 \
         FROM {t} WHERE {time} AND ServiceName = {{service:String}} AND SpanKind IN ('Client', 'Producer') \
         GROUP BY name, kind ORDER BY calls DESC LIMIT 50",
        t = TRACES.name,
        time = in_range("Timestamp"),
    );
    ranged(client, &sql, range)
        .param("service", service)
        .fetch_all()
        .await
}

/// Names of services that sent spans (or logs) in the range, for filters.
pub async fn service_names(client: &Client, range: &TimeRange, logs: bool) -> Result<Vec<String>> {
    let table = if logs { LOGS.name } else { TRACES.name };
    let sql = format!(
        "SELECT DISTINCT ServiceName FROM {table} WHERE {time} ORDER BY ServiceName",
        time = in_range("Timestamp"),
    );
    ranged(client, &sql, range).fetch_all().await
}

// ---------------------------------------------------------------- trace search

#[derive(Debug, Clone, Default)]
pub struct TraceFilter {
    pub service: String,
    /// A span name or route.
    pub name: String,
    pub min_ns: u64,
    /// 0: no upper bound.
    pub max_ns: u64,
    pub errors_only: bool,
    pub attr_key: String,
    pub attr_value: String,
    pub slowest_first: bool,
}

#[derive(Debug, Clone, Row, Deserialize)]
pub struct TraceHit {
    pub trace_id: String,
    pub start: i64,
    pub service: String,
    pub name: String,
    pub duration: u64,
    pub spans: u64,
    pub services: u64,
    pub errors: u64,
}

/// Traces with a span matching every filter: the matching spans (newest or
/// slowest first, at most 1000) pick the traces, which are then measured whole.
pub async fn search_traces(
    client: &Client,
    range: &TimeRange,
    f: &TraceFilter,
    limit: u32,
) -> Result<Vec<TraceHit>> {
    let (inner_order, outer_order) = if f.slowest_first {
        ("Duration DESC", "duration DESC")
    } else {
        ("Timestamp DESC", "start DESC")
    };
    let sql = format!(
        "SELECT TraceId AS trace_id, min(toUnixTimestamp64Nano(Timestamp)) AS start, \
                argMin(ServiceName, Timestamp) AS service, argMin(SpanName, Timestamp) AS name, \
                toUInt64(max(toUnixTimestamp64Nano(Timestamp) + Duration) - min(toUnixTimestamp64Nano(Timestamp))) AS duration, \
                count() AS spans, uniqExact(ServiceName) AS services, countIf({IS_ERROR}) AS errors \
         FROM {t} \
         WHERE {time} AND TraceId IN ( \
             SELECT TraceId FROM {t} \
             WHERE {time} AND TraceId != '' \
               AND ({{service:String}} = '' OR ServiceName = {{service:String}}) \
               AND ({{name:String}} = '' OR SpanName = {{name:String}} OR SpanAttributes['http.route'] = {{name:String}}) \
               AND Duration >= {{min_ns:UInt64}} AND ({{max_ns:UInt64}} = 0 OR Duration <= {{max_ns:UInt64}}) \
               AND (NOT {{errors:Bool}} OR ({IS_ERROR})) \
               AND ({{attr_key:String}} = '' OR SpanAttributes[{{attr_key:String}}] = {{attr_value:String}} \
                    OR ResourceAttributes[{{attr_key:String}}] = {{attr_value:String}}) \
             ORDER BY {inner_order} LIMIT 1000) \
         GROUP BY trace_id ORDER BY {outer_order} LIMIT {{limit:UInt32}}",
        t = TRACES.name,
        time = in_range("Timestamp"),
    );
    ranged(client, &sql, range)
        .param("service", &f.service)
        .param("name", &f.name)
        .param("min_ns", f.min_ns)
        .param("max_ns", f.max_ns)
        .param("errors", f.errors_only)
        .param("attr_key", &f.attr_key)
        .param("attr_value", &f.attr_value)
        .param("limit", limit)
        .fetch_all()
        .await
}

/// Span names and routes seen in the range, for the search form's suggestions.
pub async fn span_names(client: &Client, range: &TimeRange, service: &str) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT DISTINCT SpanName FROM {t} WHERE {time} \
           AND ({{service:String}} = '' OR ServiceName = {{service:String}}) ORDER BY SpanName LIMIT 500",
        t = TRACES.name,
        time = in_range("Timestamp"),
    );
    ranged(client, &sql, range)
        .param("service", service)
        .fetch_all()
        .await
}

// ---------------------------------------------------------------- one trace

/// Where a trace lies in time, from the trace-id lookup table (second precision:
/// `max(End) + 1`, as Grafana reads it).
#[derive(Debug, Clone, Copy, Row, Deserialize)]
pub struct TraceBounds {
    pub start: u32,
    pub end: u32,
}

pub async fn trace_bounds(client: &Client, trace_id: &str) -> Result<Option<TraceBounds>> {
    let sql = "SELECT toUInt32(min(Start)) AS start, toUInt32(toUInt32(max(End)) + 1) AS end \
               FROM otel_traces_trace_id_ts WHERE TraceId = {trace_id:String}";
    let b: TraceBounds = client
        .query(sql)
        .param("trace_id", trace_id)
        .fetch_one()
        .await?;
    Ok((b.start > 0).then_some(b))
}

#[derive(Debug, Clone, Row, Deserialize)]
pub struct SpanRow {
    pub ts: i64,
    pub span_id: String,
    pub parent_id: String,
    pub name: String,
    pub kind: String,
    pub service: String,
    pub duration: u64,
    pub status: String,
    pub message: String,
    pub scope: String,
    pub attr_keys: Vec<String>,
    pub attr_values: Vec<String>,
    pub res_keys: Vec<String>,
    pub res_values: Vec<String>,
    pub event_ts: Vec<i64>,
    pub event_names: Vec<String>,
    pub event_attrs: Vec<Vec<(String, String)>>,
    pub link_trace_ids: Vec<String>,
    pub link_span_ids: Vec<String>,
}

/// Every span of a trace within its bounds.
pub async fn trace_spans(
    client: &Client,
    trace_id: &str,
    bounds: TraceBounds,
) -> Result<Vec<SpanRow>> {
    let sql = format!(
        "SELECT toUnixTimestamp64Nano(Timestamp) AS ts, SpanId AS span_id, ParentSpanId AS parent_id, \
                SpanName AS name, SpanKind AS kind, ServiceName AS service, Duration AS duration, \
                StatusCode AS status, StatusMessage AS message, ScopeName AS scope, \
                mapKeys(SpanAttributes) AS attr_keys, mapValues(SpanAttributes) AS attr_values, \
                mapKeys(ResourceAttributes) AS res_keys, mapValues(ResourceAttributes) AS res_values, \
                arrayMap(t -> toUnixTimestamp64Nano(t), Events.Timestamp) AS event_ts, \
                arrayMap(n -> toString(n), Events.Name) AS event_names, \
                arrayMap(a -> arrayZip(arrayMap(k -> toString(k), mapKeys(a)), mapValues(a)), Events.Attributes) AS event_attrs, \
                Links.TraceId AS link_trace_ids, Links.SpanId AS link_span_ids \
         FROM {t} \
         WHERE TraceId = {{trace_id:String}} \
           AND Timestamp >= toDateTime({{from:UInt32}}) AND Timestamp <= toDateTime({{to:UInt32}}) \
         ORDER BY Timestamp",
        t = TRACES.name,
    );
    client
        .query(&sql)
        .param("trace_id", trace_id)
        .param("from", bounds.start)
        .param("to", bounds.end)
        .fetch_all()
        .await
}

// ---------------------------------------------------------------- logs

#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub service: String,
    /// Minimum `SeverityNumber` (0: all).
    pub min_severity: u8,
    pub text: String,
    pub trace_id: String,
}

#[derive(Debug, Clone, Row, Deserialize)]
pub struct LogRow {
    pub ts: i64,
    pub service: String,
    pub severity: String,
    pub severity_number: u8,
    pub body: String,
    pub trace_id: String,
    pub span_id: String,
}

/// The words of a search text as the body index (`tokenbf_v1` on `lower(Body)`)
/// splits them: runs of ASCII letters and digits (and any non-ASCII), lowercased.
pub fn body_tokens(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_ascii() && !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| t.to_ascii_lowercase())
        .take(8)
        .collect()
}

/// Log lines matching every filter, newest first. A text search needs each of its
/// words as a whole token (`hasToken`, which the body index serves) and the whole
/// text as a case-insensitive substring.
pub async fn logs(
    client: &Client,
    range: &TimeRange,
    f: &LogFilter,
    limit: u32,
) -> Result<Vec<LogRow>> {
    let tokens = body_tokens(&f.text);
    let token_filter: String = (0..tokens.len())
        .map(|i| format!(" AND hasToken(lower(Body), {{tok{i}:String}})"))
        .collect();
    let sql = format!(
        "SELECT toUnixTimestamp64Nano(Timestamp) AS ts, ServiceName AS service, SeverityText AS severity, \
                SeverityNumber AS severity_number, Body AS body, TraceId AS trace_id, SpanId AS span_id \
         FROM {t} \
         WHERE {time} \
           AND ({{service:String}} = '' OR ServiceName = {{service:String}}) \
           AND SeverityNumber >= {{min_severity:UInt8}} \
           AND ({{trace_id:String}} = '' OR TraceId = {{trace_id:String}}){token_filter} \
           AND ({{text:String}} = '' OR positionCaseInsensitive(Body, {{text:String}}) > 0) \
         ORDER BY Timestamp DESC LIMIT {{limit:UInt32}}",
        t = LOGS.name,
        time = in_range("Timestamp"),
    );
    let mut q = ranged(client, &sql, range)
        .param("service", &f.service)
        .param("min_severity", f.min_severity)
        .param("trace_id", &f.trace_id)
        .param("text", &f.text)
        .param("limit", limit);
    for (i, t) in tokens.iter().enumerate() {
        q = q.param(&format!("tok{i}"), t);
    }
    q.fetch_all().await
}

/// A trace's log lines, oldest first: within its bounds and a minute around them.
pub async fn trace_logs(
    client: &Client,
    trace_id: &str,
    bounds: TraceBounds,
) -> Result<Vec<LogRow>> {
    let sql = format!(
        "SELECT toUnixTimestamp64Nano(Timestamp) AS ts, ServiceName AS service, SeverityText AS severity, \
                SeverityNumber AS severity_number, Body AS body, TraceId AS trace_id, SpanId AS span_id \
         FROM {t} \
         WHERE TraceId = {{trace_id:String}} \
           AND Timestamp >= toDateTime({{from:UInt32}}) - 60 AND Timestamp <= toDateTime({{to:UInt32}}) + 60 \
         ORDER BY Timestamp LIMIT 2000",
        t = LOGS.name,
    );
    client
        .query(&sql)
        .param("trace_id", trace_id)
        .param("from", bounds.start)
        .param("to", bounds.end)
        .fetch_all()
        .await
}

// ---------------------------------------------------------------- service map

#[derive(Debug, Clone, Row, Deserialize)]
pub struct EdgeRow {
    pub parent: String,
    pub child: String,
    /// `messaging` (producer → consumer) or `call`.
    pub via: String,
    pub calls: u64,
    pub errors: u64,
    /// Of the callee's span, nanoseconds.
    pub p99: f64,
}

/// Which calls [`edges`] returns.
#[derive(Debug, Clone, Copy)]
pub enum EdgesOf<'a> {
    All,
    /// Calls the service makes.
    From(&'a str),
    /// Calls the service receives.
    To(&'a str),
}

/// Calls between services: a SERVER or CONSUMER span whose parent is a CLIENT or
/// PRODUCER span of another service, and CONSUMER spans linked (not parented) to a
/// PRODUCER span. Rate, errors and p99 are the callee's spans'.
///
/// Spans are matched on a 64-bit hash of (trace id, span id), so the join's hash
/// table holds integers, not two strings per span; a service's own side of the
/// join is filtered before it.
pub async fn edges(client: &Client, range: &TimeRange, of: EdgesOf<'_>) -> Result<Vec<EdgeRow>> {
    let (parent, child) = match of {
        EdgesOf::All => ("", ""),
        EdgesOf::From(s) => (s, ""),
        EdgesOf::To(s) => ("", s),
    };
    let sql = format!(
        "SELECT parent, child, via, count() AS calls, countIf(err) AS errors, quantile(0.99)(duration) AS p99 \
         FROM ( \
           SELECT p.service AS parent, c.service AS child, \
                  if(p.kind = 'Producer', 'messaging', 'call') AS via, c.err AS err, c.duration AS duration \
           FROM (SELECT cityHash64(TraceId, ParentSpanId) AS key, ServiceName AS service, Duration AS duration, ({IS_ERROR}) AS err \
                 FROM {t} WHERE {time} AND SpanKind IN ('Server', 'Consumer') AND ParentSpanId != '' \
                   AND ({{child:String}} = '' OR ServiceName = {{child:String}})) AS c \
           INNER JOIN (SELECT cityHash64(TraceId, SpanId) AS key, ServiceName AS service, SpanKind AS kind \
                 FROM {t} WHERE {time} AND SpanKind IN ('Client', 'Producer') \
                   AND ({{parent:String}} = '' OR ServiceName = {{parent:String}})) AS p \
           ON c.key = p.key \
           WHERE p.service != c.service \
           UNION ALL \
           SELECT p.service AS parent, c.service AS child, 'messaging' AS via, c.err AS err, c.duration AS duration \
           FROM (SELECT cityHash64(link.1, link.2) AS key, ServiceName AS service, Duration AS duration, ({IS_ERROR}) AS err \
                 FROM {t} ARRAY JOIN arrayZip(Links.TraceId, Links.SpanId) AS link \
                 WHERE {time} AND SpanKind = 'Consumer' AND link.2 != ParentSpanId \
                   AND ({{child:String}} = '' OR ServiceName = {{child:String}})) AS c \
           INNER JOIN (SELECT cityHash64(TraceId, SpanId) AS key, ServiceName AS service FROM {t} \
                 WHERE {time} AND SpanKind = 'Producer' \
                   AND ({{parent:String}} = '' OR ServiceName = {{parent:String}})) AS p \
           ON c.key = p.key \
           WHERE p.service != c.service) \
         GROUP BY parent, child, via ORDER BY parent, child, via",
        t = TRACES.name,
        time = in_range("Timestamp"),
    );
    ranged(client, &sql, range)
        .param("parent", parent)
        .param("child", child)
        // Builds the hash table on all cores: about 40 % faster at a million spans.
        .with_setting("join_algorithm", "parallel_hash")
        .fetch_all()
        .await
}

// ---------------------------------------------------------------- the collector's own metrics

#[derive(Debug, Clone, Row, Deserialize)]
pub struct GaugePoint {
    pub t: u32,
    pub name: String,
    pub value: f64,
}

/// The collector's spool gauges over time, from what it wrote into its own
/// `otel_metrics_gauge` (the Collector health dashboard's *Spool size* and
/// *Oldest spooled data*).
pub async fn spool_history(
    client: &Client,
    range: &TimeRange,
    step: u32,
) -> Result<Vec<GaugePoint>> {
    let sql = format!(
        "SELECT toUInt32(toStartOfInterval(TimeUnix, toIntervalSecond({{step:UInt32}}))) AS t, \
                MetricName AS name, max(Value) AS value \
         FROM otel_metrics_gauge \
         WHERE {time} AND MetricName IN ('collector_spool_bytes', 'collector_spool_oldest_age_seconds') \
         GROUP BY t, name ORDER BY t",
        time = in_range("TimeUnix"),
    );
    ranged(client, &sql, range)
        .param("step", step)
        .fetch_all()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnRole;

    fn expr(name: &str) -> &'static str {
        TRACES_RED_1M
            .columns
            .iter()
            .find(|c| c.column.name == name)
            .map(|c| c.expr)
            .unwrap_or_else(|| panic!("rollup column {name}"))
    }

    #[test]
    fn the_shared_expressions_are_the_rollups() {
        assert_eq!(expr("Route"), ROUTE);
        assert_eq!(expr("Errors"), format!("toUInt64(countIf({IS_ERROR}))"));
        let sketch = TRACES_RED_1M
            .columns
            .iter()
            .find(|c| c.column.name == "DurationQuantiles" && c.role == ColumnRole::Aggregate)
            .unwrap();
        let levels = QUANTILES
            .trim_start_matches("quantilesDDMerge")
            .split(")(")
            .next()
            .unwrap();
        assert!(
            sketch.column.ty.contains(&format!("quantilesDD{levels})")),
            "{levels}"
        );
    }

    #[test]
    fn body_tokens_follow_the_index() {
        assert_eq!(
            body_tokens("Payment 'declined' \\ for order-42; DROP TABLE"),
            ["payment", "declined", "for", "order", "42", "drop", "table"]
        );
        assert!(body_tokens("' \" \\ ;").is_empty());
    }

    #[test]
    fn the_dashboards_use_the_same_expressions() {
        let read = |name: &str| {
            let path = format!("{}/../dashboards/json/{name}", env!("CARGO_MANIFEST_DIR"));
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        let overview = read("service-overview.json");
        assert!(overview.contains(QUANTILES));
        assert!(overview.contains(&format!("$__range_s >= {HOURLY_FROM_SECS}")));
        assert!(overview.contains(ROUTE));
        let traces = read("traces.json");
        assert!(traces.contains(IS_ERROR));
        assert!(traces.contains(ROUTE));
        assert!(traces.contains("otel_traces_trace_id_ts WHERE TraceId = trace_id"));
    }
}

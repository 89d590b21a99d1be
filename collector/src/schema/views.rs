//! Pre-aggregations filled by materialized views at insert time, declared once.
//!
//! A [`Rollup`] is an AggregatingMergeTree table together with the view that fills
//! it: every column carries the expression that computes it from the source rows,
//! and whether it is a dimension (grouped by, part of the sorting key) or an
//! aggregate. The table's DDL, the view's SELECT and GROUP BY, and the schema probe
//! all derive from that one list.
//!
//! Dashboards read rollups for long ranges: a minute (or an hour) of one route is
//! one row however many spans it had. The hourly rollup is fed from the minute one
//! (a view on a view), so weeks are a few thousand rows. Raw spans stay the source
//! for drill-down.

use super::{Column, TRACES};

/// The relative accuracy of the duration sketches (DDSketch, `quantilesDD`): every
/// quantile read from a rollup is within 1 % of the exact value of the span at that
/// rank (`floor(q * (n - 1))` of the sorted durations). Merging minutes, versions or
/// replicas adds no error: sketches merge by adding bucket counts.
pub const DURATION_RELATIVE_ACCURACY: f64 = 0.01;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnRole {
    /// Grouped by and part of the sorting key.
    Dimension,
    /// An aggregate (`SimpleAggregateFunction` / `AggregateFunction` state).
    Aggregate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollupColumn {
    pub column: Column,
    /// Computes the column from one source row (dimensions) or a group (aggregates).
    pub expr: &'static str,
    pub role: ColumnRole,
}

#[derive(Debug)]
pub struct Rollup {
    pub name: &'static str,
    /// The materialized view that fills the table.
    pub view: &'static str,
    /// The table the view reads (its inserts trigger the view).
    pub source: &'static str,
    /// Which source rows count (empty: all).
    pub filter: &'static str,
    pub columns: &'static [RollupColumn],
    pub partition_by: &'static str,
    pub ttl_from: &'static str,
    /// Rows are kept this many times longer than the raw tables' TTL.
    pub ttl_factor: u32,
}

impl Rollup {
    /// The table's columns as the probe compares them with `system.columns`.
    pub fn table_columns(&self) -> Vec<Column> {
        self.columns.iter().map(|c| c.column).collect()
    }

    pub fn dimensions(&self) -> impl Iterator<Item = &RollupColumn> {
        self.columns
            .iter()
            .filter(|c| c.role == ColumnRole::Dimension)
    }
}

const fn dimension(name: &'static str, ty: &'static str, expr: &'static str) -> RollupColumn {
    RollupColumn {
        column: Column {
            name,
            ty,
            codec: "ZSTD(1)",
        },
        expr,
        role: ColumnRole::Dimension,
    }
}

const fn aggregate(name: &'static str, ty: &'static str, expr: &'static str) -> RollupColumn {
    RollupColumn {
        column: Column {
            name,
            ty,
            codec: "ZSTD(1)",
        },
        expr,
        role: ColumnRole::Aggregate,
    }
}

/// `http.response.status_code`, or the name older semantic conventions used.
macro_rules! http_status {
    () => {
        "if(SpanAttributes['http.response.status_code'] != '', \
         SpanAttributes['http.response.status_code'], SpanAttributes['http.status_code'])"
    };
}

/// A SERVER span's status class (see [`TRACES_RED_1M`]).
macro_rules! status_class {
    () => {
        concat!(
            "multiIf(",
            http_status!(),
            " != '', concat(substring(",
            http_status!(),
            ", 1, 1), 'xx'), StatusCode = 'Error', 'error', 'ok')"
        )
    };
}

/// Rate, errors and duration (RED) of SERVER spans per minute, service, service
/// version and route: one row, so one duration sketch, per key and minute.
///
/// - `Route` is `http.route` (the route template), else the span name.
/// - `Errors` counts spans whose status is Error or whose HTTP status is 5xx.
/// - `RequestsByStatusClass` counts the requests per status class: `2xx`…`5xx`
///   from the HTTP status code; spans without one are `error` when their status
///   is Error, else `ok`. Read it with `sumMap(RequestsByStatusClass)`.
/// - `Duration*` are nanoseconds; `DurationQuantiles` is a DDSketch state
///   ([`DURATION_RELATIVE_ACCURACY`]): read it with
///   `quantilesDDMerge(0.01, 0.5, 0.95, 0.99, 0.999)(DurationQuantiles)` (any levels).
///
/// The status class was a dimension until this shape (see
/// [`migrate`](super::migrate)), which split every key and minute into a row per
/// status class seen, each with its own sketch: a latency panel merged several
/// sketches where one carries the same answer, and merging sketches is what a latency
/// query over a rollup costs. The class is a breakdown of the count only, so it is
/// now an aggregate. A map rather than one column per class: it merges like the
/// other sums (`sumMap` adds per key, in background merges and in queries), a
/// class nobody listed (`1xx`, a malformed code) is kept rather than dropped, and
/// Grafana turns it into one series per class with
/// `ARRAY JOIN mapKeys(c) AS status, mapValues(c) AS n` over `sumMap(…) AS c`,
/// where fixed columns would need a literal list of classes in every panel. Its
/// keys are `String`: the engine refuses a `LowCardinality` key for `sumMap`
/// (whose result is `Map(String, UInt64)`).
pub const TRACES_RED_1M: Rollup = Rollup {
    name: "otel_traces_red_1m",
    view: "otel_traces_red_1m_mv",
    source: TRACES.name,
    filter: "SpanKind = 'Server'",
    columns: &[
        dimension("ServiceName", "LowCardinality(String)", "ServiceName"),
        dimension(
            "Route",
            "LowCardinality(String)",
            "if(SpanAttributes['http.route'] != '', SpanAttributes['http.route'], SpanName)",
        ),
        dimension(
            "ServiceVersion",
            "LowCardinality(String)",
            "ResourceAttributes['service.version']",
        ),
        dimension("Timestamp", "DateTime", "toStartOfMinute(Timestamp)"),
        aggregate(
            "Requests",
            "SimpleAggregateFunction(sum, UInt64)",
            "toUInt64(count())",
        ),
        aggregate(
            "Errors",
            "SimpleAggregateFunction(sum, UInt64)",
            concat!(
                "toUInt64(countIf(StatusCode = 'Error' OR toUInt16OrZero(",
                http_status!(),
                ") >= 500))"
            ),
        ),
        aggregate(
            "RequestsByStatusClass",
            "SimpleAggregateFunction(sumMap, Map(String, UInt64))",
            concat!("sumMap(map(", status_class!(), ", toUInt64(1)))"),
        ),
        aggregate(
            "DurationSum",
            "SimpleAggregateFunction(sum, UInt64)",
            "toUInt64(sum(Duration))",
        ),
        aggregate(
            "DurationMax",
            "SimpleAggregateFunction(max, UInt64)",
            "max(Duration)",
        ),
        aggregate(
            "DurationQuantiles",
            "AggregateFunction(quantilesDD(0.01, 0.5, 0.95, 0.99, 0.999), UInt64)",
            "quantilesDDState(0.01, 0.5, 0.95, 0.99, 0.999)(Duration)",
        ),
    ],
    partition_by: "toDate(Timestamp)",
    ttl_from: "Timestamp",
    ttl_factor: 4,
};

/// [`TRACES_RED_1M`] per hour, with the same columns (dashboards read either with
/// the same SQL), merged from the minute rows as they are inserted.
pub const TRACES_RED_1H: Rollup = Rollup {
    name: "otel_traces_red_1h",
    view: "otel_traces_red_1h_mv",
    source: TRACES_RED_1M.name,
    filter: "",
    columns: &[
        dimension("ServiceName", "LowCardinality(String)", "ServiceName"),
        dimension("Route", "LowCardinality(String)", "Route"),
        dimension("ServiceVersion", "LowCardinality(String)", "ServiceVersion"),
        dimension("Timestamp", "DateTime", "toStartOfHour(Timestamp)"),
        aggregate(
            "Requests",
            "SimpleAggregateFunction(sum, UInt64)",
            "sum(Requests)",
        ),
        aggregate(
            "Errors",
            "SimpleAggregateFunction(sum, UInt64)",
            "sum(Errors)",
        ),
        aggregate(
            "RequestsByStatusClass",
            "SimpleAggregateFunction(sumMap, Map(String, UInt64))",
            "sumMap(RequestsByStatusClass)",
        ),
        aggregate(
            "DurationSum",
            "SimpleAggregateFunction(sum, UInt64)",
            "sum(DurationSum)",
        ),
        aggregate(
            "DurationMax",
            "SimpleAggregateFunction(max, UInt64)",
            "max(DurationMax)",
        ),
        aggregate(
            "DurationQuantiles",
            "AggregateFunction(quantilesDD(0.01, 0.5, 0.95, 0.99, 0.999), UInt64)",
            "quantilesDDMergeState(0.01, 0.5, 0.95, 0.99, 0.999)(DurationQuantiles)",
        ),
    ],
    partition_by: "toYYYYMM(Timestamp)",
    ttl_from: "Timestamp",
    ttl_factor: 16,
};

/// `db.system.name`, or the name older semantic conventions used.
macro_rules! db_system {
    () => {
        "if(SpanAttributes['db.system.name'] != '', SpanAttributes['db.system.name'], \
         SpanAttributes['db.system'])"
    };
}

/// `server.address[:server.port]`.
macro_rules! server_address {
    () => {
        "if(SpanAttributes['server.address'] != '', concat(SpanAttributes['server.address'], \
         if(SpanAttributes['server.port'] != '', concat(':', SpanAttributes['server.port']), '')), '')"
    };
}

/// Outbound spans: the calls a service makes (HTTP/RPC clients, databases, caches,
/// message publishing).
const OUTBOUND_SPANS: &str = "SpanKind IN ('Client', 'Producer')";

/// Per minute, who calls whom: one row per calling service, callee and minute,
/// from the caller's CLIENT / PRODUCER spans.
///
/// - `Callee` is `peer.service` when the caller names the service it calls, else
///   the database system (`postgresql`, `redis`), else the queue
///   (`messaging.destination.name`), else `server.address[:port]`, else the span name.
/// - `CalleeKind` is `database`, `messaging` or `service` (the node graph's colour).
/// - `Errors` counts spans whose status is Error.
///
/// Parent/child pairs across services (a SERVER span whose parent is another
/// service's span) need a join of two spans that may arrive in different INSERTs,
/// which a view cannot do; the service map computes those from raw spans.
pub const TRACES_EDGES_1M: Rollup = Rollup {
    name: "otel_traces_edges_1m",
    view: "otel_traces_edges_1m_mv",
    source: TRACES.name,
    filter: OUTBOUND_SPANS,
    columns: &[
        dimension("ServiceName", "LowCardinality(String)", "ServiceName"),
        dimension(
            "Callee",
            "LowCardinality(String)",
            concat!(
                "multiIf(SpanAttributes['peer.service'] != '', SpanAttributes['peer.service'], ",
                db_system!(),
                " != '', ",
                db_system!(),
                ", SpanAttributes['messaging.destination.name'] != '', SpanAttributes['messaging.destination.name'], ",
                server_address!(),
                " != '', ",
                server_address!(),
                ", SpanName)"
            ),
        ),
        dimension(
            "CalleeKind",
            "LowCardinality(String)",
            concat!(
                "multiIf(SpanAttributes['peer.service'] != '', 'service', ",
                db_system!(),
                " != '', 'database', SpanAttributes['messaging.system'] != '' \
                 OR SpanAttributes['messaging.destination.name'] != '', 'messaging', 'service')"
            ),
        ),
        dimension("Timestamp", "DateTime", "toStartOfMinute(Timestamp)"),
        aggregate(
            "Calls",
            "SimpleAggregateFunction(sum, UInt64)",
            "toUInt64(count())",
        ),
        aggregate(
            "Errors",
            "SimpleAggregateFunction(sum, UInt64)",
            "toUInt64(countIf(StatusCode = 'Error'))",
        ),
        aggregate(
            "DurationSum",
            "SimpleAggregateFunction(sum, UInt64)",
            "toUInt64(sum(Duration))",
        ),
        aggregate(
            "DurationQuantiles",
            "AggregateFunction(quantilesDD(0.01, 0.5, 0.95, 0.99, 0.999), UInt64)",
            "quantilesDDState(0.01, 0.5, 0.95, 0.99, 0.999)(Duration)",
        ),
    ],
    partition_by: "toDate(Timestamp)",
    ttl_from: "Timestamp",
    ttl_factor: 4,
};

/// Rate, errors and duration of outbound calls per minute, calling service,
/// system, address, destination and operation: which database, cache, queue or
/// downstream service is slow or failing, seen from the caller.
///
/// - `System`: the database system, else `messaging.system`, else `rpc.system`,
///   else `http` for HTTP clients, else `other`.
/// - `Address`: `server.address[:port]`.
/// - `Destination`: the queue, else the table (`db.collection.name`), else `peer.service`.
/// - `Operation`: `db.operation.name`, else `messaging.operation.name`, else the span name.
pub const TRACES_OUTBOUND_1M: Rollup = Rollup {
    name: "otel_traces_outbound_1m",
    view: "otel_traces_outbound_1m_mv",
    source: TRACES.name,
    filter: OUTBOUND_SPANS,
    columns: &[
        dimension("ServiceName", "LowCardinality(String)", "ServiceName"),
        dimension(
            "System",
            "LowCardinality(String)",
            concat!(
                "multiIf(",
                db_system!(),
                " != '', ",
                db_system!(),
                ", SpanAttributes['messaging.system'] != '', SpanAttributes['messaging.system'], \
                 SpanAttributes['rpc.system'] != '', SpanAttributes['rpc.system'], \
                 SpanAttributes['http.request.method'] != '', 'http', 'other')"
            ),
        ),
        dimension("Address", "LowCardinality(String)", server_address!()),
        dimension(
            "Destination",
            "LowCardinality(String)",
            "multiIf(SpanAttributes['messaging.destination.name'] != '', SpanAttributes['messaging.destination.name'], \
             SpanAttributes['db.collection.name'] != '', SpanAttributes['db.collection.name'], \
             SpanAttributes['peer.service'])",
        ),
        dimension(
            "Operation",
            "LowCardinality(String)",
            "multiIf(SpanAttributes['db.operation.name'] != '', SpanAttributes['db.operation.name'], \
             SpanAttributes['messaging.operation.name'] != '', SpanAttributes['messaging.operation.name'], SpanName)",
        ),
        dimension("Timestamp", "DateTime", "toStartOfMinute(Timestamp)"),
        aggregate(
            "Calls",
            "SimpleAggregateFunction(sum, UInt64)",
            "toUInt64(count())",
        ),
        aggregate(
            "Errors",
            "SimpleAggregateFunction(sum, UInt64)",
            "toUInt64(countIf(StatusCode = 'Error'))",
        ),
        aggregate(
            "DurationSum",
            "SimpleAggregateFunction(sum, UInt64)",
            "toUInt64(sum(Duration))",
        ),
        aggregate(
            "DurationMax",
            "SimpleAggregateFunction(max, UInt64)",
            "max(Duration)",
        ),
        aggregate(
            "DurationQuantiles",
            "AggregateFunction(quantilesDD(0.01, 0.5, 0.95, 0.99, 0.999), UInt64)",
            "quantilesDDState(0.01, 0.5, 0.95, 0.99, 0.999)(Duration)",
        ),
    ],
    partition_by: "toDate(Timestamp)",
    ttl_from: "Timestamp",
    ttl_factor: 4,
};

/// The first `exception` event of a span (a span rarely has more than one).
macro_rules! exception_attribute {
    ($key:literal) => {
        concat!(
            "Events.Attributes[indexOf(Events.Name, 'exception')]['",
            $key,
            "']"
        )
    };
}

/// Exception groups per minute: spans with an `exception` event, grouped by
/// service, exception type and normalised message (UUIDs become `<uuid>`, digit
/// runs `<n>`, cut at 300 characters), so `order 17 failed` and `order 18 failed`
/// are one group. Keeps the count, first and last occurrence (the event's time),
/// one original message and one trace id to open.
pub const TRACES_EXCEPTIONS_1M: Rollup = Rollup {
    name: "otel_traces_exceptions_1m",
    view: "otel_traces_exceptions_1m_mv",
    source: TRACES.name,
    filter: "has(Events.Name, 'exception')",
    columns: &[
        dimension("ServiceName", "LowCardinality(String)", "ServiceName"),
        dimension(
            "ExceptionType",
            "LowCardinality(String)",
            exception_attribute!("exception.type"),
        ),
        dimension(
            "ExceptionMessage",
            "String",
            concat!(
                "replaceRegexpAll(replaceRegexpAll(substringUTF8(",
                exception_attribute!("exception.message"),
                ", 1, 300), '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}', '<uuid>'), \
                 '[0-9]+', '<n>')"
            ),
        ),
        dimension("Timestamp", "DateTime", "toStartOfMinute(Timestamp)"),
        aggregate(
            "Count",
            "SimpleAggregateFunction(sum, UInt64)",
            "toUInt64(count())",
        ),
        aggregate(
            "FirstSeen",
            "SimpleAggregateFunction(min, DateTime64(9))",
            "min(Events.Timestamp[indexOf(Events.Name, 'exception')])",
        ),
        aggregate(
            "LastSeen",
            "SimpleAggregateFunction(max, DateTime64(9))",
            "max(Events.Timestamp[indexOf(Events.Name, 'exception')])",
        ),
        aggregate(
            "SampleMessage",
            "SimpleAggregateFunction(any, String)",
            concat!("any(", exception_attribute!("exception.message"), ")"),
        ),
        aggregate(
            "SampleTraceId",
            "SimpleAggregateFunction(any, String)",
            "any(TraceId)",
        ),
    ],
    partition_by: "toDate(Timestamp)",
    ttl_from: "Timestamp",
    ttl_factor: 4,
};

/// The view that fills `otel_traces_trace_id_ts` (Grafana's trace-id lookup).
pub const TRACE_ID_TS_VIEW: &str = "otel_traces_trace_id_ts_mv";

/// In creation order: a rollup's source comes before it.
pub const ALL_ROLLUPS: [&Rollup; 5] = [
    &TRACES_RED_1M,
    &TRACES_RED_1H,
    &TRACES_EDGES_1M,
    &TRACES_OUTBOUND_1M,
    &TRACES_EXCEPTIONS_1M,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sketch_type_and_state_function_agree_on_accuracy_and_levels() {
        let q = TRACES_RED_1M
            .columns
            .iter()
            .find(|c| c.column.name == "DurationQuantiles")
            .expect("quantile column");
        let params = format!("quantilesDD({DURATION_RELATIVE_ACCURACY}, 0.5, 0.95, 0.99, 0.999)");
        assert!(q.column.ty.contains(&params), "{}", q.column.ty);
        assert!(q
            .expr
            .starts_with(&params.replace("quantilesDD", "quantilesDDState")));
    }

    #[test]
    fn the_hourly_rollup_has_the_minute_rollups_columns() {
        assert_eq!(TRACES_RED_1H.table_columns(), TRACES_RED_1M.table_columns());
        let position = |name| ALL_ROLLUPS.iter().position(|r| r.name == name);
        assert!(position(TRACES_RED_1H.source) < position(TRACES_RED_1H.name));
    }

    #[test]
    fn every_aggregate_column_is_an_aggregate_type() {
        for r in ALL_ROLLUPS {
            for c in r.columns {
                let is_agg = c.column.ty.starts_with("SimpleAggregateFunction(")
                    || c.column.ty.starts_with("AggregateFunction(");
                assert_eq!(is_agg, c.role == ColumnRole::Aggregate, "{}", c.column.name);
            }
            assert!(r.dimensions().any(|d| d.column.name == r.ttl_from));
        }
    }
}

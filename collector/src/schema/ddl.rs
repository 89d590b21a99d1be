//! CREATE statements derived from the table definitions.

use super::views::{Rollup, ALL_ROLLUPS, TRACE_ID_TS_VIEW};
use super::{quote_ident, Column, Engine, Table, ALL_TABLES, TRACES, TRACE_ID_TS};

/// How the schema is laid out on the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaOptions {
    pub database: String,
    /// Rows older than this many days are dropped (0 keeps everything).
    pub ttl_days: u32,
    /// The cluster (`clickhouse.cluster`): every table becomes `<name>_local` on a
    /// Replicated engine, created `ON CLUSTER`, under a `Distributed` table with the
    /// upstream name (see [`cluster`](super::cluster)).
    pub cluster: Option<String>,
    /// How many recent insert blocks a table remembers to drop repeats
    /// (`non_replicated_deduplication_window`, or `replicated_deduplication_window`
    /// on a cluster).
    pub dedup_window: u32,
}

impl SchemaOptions {
    pub(super) fn on_cluster(&self) -> String {
        match &self.cluster {
            Some(c) => format!(" ON CLUSTER {}", quote_ident(c)),
            None => String::new(),
        }
    }

    pub(super) fn qualified(&self, table: &str) -> String {
        format!("{}.{}", quote_ident(&self.database), quote_ident(table))
    }

    /// The table that holds the rows: `<name>_local` on a cluster, else `name`.
    pub fn storage_name(&self, name: &str) -> String {
        match self.cluster {
            Some(_) => format!("{name}{LOCAL_SUFFIX}"),
            None => name.to_string(),
        }
    }

    fn engine(&self, plain: &str) -> String {
        match self.cluster {
            // {shard} and {replica} are macros of each server's config; {database}
            // and {table} are filled in by ClickHouse.
            Some(_) => format!(
                "Replicated{plain}('/clickhouse/tables/{{shard}}/{{database}}/{{table}}', '{{replica}}')"
            ),
            None => plain.to_string(),
        }
    }

    fn settings(&self, dedup: bool) -> String {
        let mut settings = String::from("index_granularity = 8192, ttl_only_drop_parts = 1");
        if dedup && self.dedup_window > 0 {
            let key = if self.cluster.is_some() {
                "replicated_deduplication_window"
            } else {
                "non_replicated_deduplication_window"
            };
            settings.push_str(&format!(", {key} = {}", self.dedup_window));
        }
        settings
    }
}

/// Suffix of the per-shard tables under the Distributed ones.
pub const LOCAL_SUFFIX: &str = "_local";

/// Every statement that sets the schema up, in order; each is idempotent.
pub fn create_statements(opts: &SchemaOptions) -> Vec<String> {
    create_statements_except(opts, &[])
}

/// [`create_statements`] without the views of the rollups named in `outdated`
/// (tables of an earlier shape, see [`migrate`](super::migrate)) nor of the
/// rollups fed from them: a view must never run between tables of two shapes,
/// where it would write rows missing what the other shape keeps.
pub fn create_statements_except(opts: &SchemaOptions, outdated: &[&str]) -> Vec<String> {
    let mut out = vec![format!(
        "CREATE DATABASE IF NOT EXISTS {}{}",
        quote_ident(&opts.database),
        opts.on_cluster()
    )];
    for t in ALL_TABLES {
        out.push(create_table(t, opts));
        if opts.cluster.is_some() {
            out.push(super::cluster::create_distributed(t.name, t.shard_by, opts));
        }
    }
    out.push(create_trace_id_view(opts));
    for rollup in ALL_ROLLUPS {
        out.extend(rollup_table_statements(rollup, opts));
        if !(outdated.contains(&rollup.name) || outdated.contains(&rollup.source)) {
            out.push(create_rollup_view(rollup, opts));
        }
    }
    out
}

/// The statements of one rollup: its table (and Distributed table on a cluster),
/// then the view filling it.
pub fn rollup_statements(rollup: &Rollup, opts: &SchemaOptions) -> Vec<String> {
    let mut out = rollup_table_statements(rollup, opts);
    out.push(create_rollup_view(rollup, opts));
    out
}

/// The rollup's table (and on a cluster its Distributed table), without the view.
fn rollup_table_statements(rollup: &Rollup, opts: &SchemaOptions) -> Vec<String> {
    let mut out = vec![create_rollup_table(rollup, opts)];
    if opts.cluster.is_some() {
        out.push(super::cluster::create_distributed(
            rollup.name,
            super::cluster::rollup_shard_key(rollup),
            opts,
        ));
    }
    out
}

/// Days a rollup keeps its rows: its `ttl_factor` times the raw tables' TTL (0,
/// keep everything, stays 0).
pub fn rollup_ttl_days(rollup: &Rollup, opts: &SchemaOptions) -> u32 {
    opts.ttl_days.saturating_mul(rollup.ttl_factor)
}

fn create_rollup_table(r: &Rollup, opts: &SchemaOptions) -> String {
    create_rollup_table_named(r, opts, &opts.storage_name(r.name))
}

/// The rollup's table (on a cluster: its local table) under another name.
pub(super) fn create_rollup_table_named(r: &Rollup, opts: &SchemaOptions, table: &str) -> String {
    let order_by: Vec<&str> = r.dimensions().map(|d| d.column.name).collect();
    let ttl_days = rollup_ttl_days(r, opts);
    let ttl = if ttl_days > 0 {
        format!("\nTTL {} + toIntervalDay({ttl_days})", r.ttl_from)
    } else {
        String::new()
    };
    // The same deduplication window as the source, so a retried block that
    // reaches the view again (deduplicate_blocks_in_dependent_materialized_views)
    // is dropped here too.
    format!(
        "CREATE TABLE IF NOT EXISTS {}{} (\n    {}\n)\nENGINE = {}\nPARTITION BY {}\nORDER BY ({}){ttl}\nSETTINGS {}",
        opts.qualified(table),
        opts.on_cluster(),
        column_definitions(&r.table_columns(), &[]).join(",\n    "),
        opts.engine("AggregatingMergeTree"),
        r.partition_by,
        order_by.join(", "),
        opts.settings(true),
    )
}

/// On a cluster every node runs the view for the blocks inserted into its local
/// source table (a Distributed insert lands there), into its local rollup; parts
/// fetched by replication do not trigger it again.
fn create_rollup_view(r: &Rollup, opts: &SchemaOptions) -> String {
    let select: Vec<String> = r
        .columns
        .iter()
        .map(|c| format!("{} AS {}", c.expr, quote_ident(c.column.name)))
        .collect();
    let group_by: Vec<String> = r.dimensions().map(|d| quote_ident(d.column.name)).collect();
    let filter = if r.filter.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", r.filter)
    };
    format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {}{} TO {} AS \
         SELECT {} FROM {}{filter} GROUP BY {}",
        opts.qualified(r.view),
        opts.on_cluster(),
        opts.qualified(&opts.storage_name(r.name)),
        select.join(", "),
        opts.qualified(&opts.storage_name(r.source)),
        group_by.join(", "),
    )
}

fn create_table(t: &Table, opts: &SchemaOptions) -> String {
    let mut body: Vec<String> = column_definitions(t.columns, t.nested_after);
    body.extend(t.derived_columns.iter().map(|c| c.to_string()));
    body.extend(t.indexes.iter().map(|i| format!("INDEX {i}")));
    let engine = match t.engine {
        Engine::MergeTree => opts.engine("MergeTree"),
        Engine::TraceIdLookup => opts.engine("AggregatingMergeTree"),
    };
    let ttl = if opts.ttl_days > 0 {
        format!("\nTTL {} + toIntervalDay({})", t.ttl_from, opts.ttl_days)
    } else {
        String::new()
    };
    let primary_key = if t.primary_key.is_empty() {
        String::new()
    } else {
        format!("\nPRIMARY KEY {}", t.primary_key)
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {}{} (\n    {}\n)\nENGINE = {engine}\nPARTITION BY {}{primary_key}\nORDER BY {}{ttl}\nSETTINGS {}",
        opts.qualified(&opts.storage_name(t.name)),
        opts.on_cluster(),
        body.join(",\n    "),
        t.partition_by,
        t.order_by,
        opts.settings(t.engine == Engine::MergeTree),
    )
}

/// Flattened `Events.Name Array(T)` columns are declared as one `Events Nested(Name T, …)`,
/// placed after the column `nested_after` names for the group (else where it is).
fn column_definitions(columns: &[Column], nested_after: &[(&str, &str)]) -> Vec<String> {
    let mut plain: Vec<(&str, String)> = Vec::new();
    let mut groups: Vec<(&str, String)> = Vec::new();
    let mut i = 0;
    while i < columns.len() {
        let c = &columns[i];
        match c.name.split_once('.') {
            None => {
                plain.push((
                    c.name,
                    column_definition(&quote_ident(c.name), c.ty, c.codec),
                ));
                i += 1;
            }
            Some((group, _)) => {
                let members: Vec<&Column> = columns[i..]
                    .iter()
                    .take_while(|m| m.name.split_once('.').map(|(g, _)| g) == Some(group))
                    .collect();
                let fields: Vec<String> = members
                    .iter()
                    .map(|m| {
                        let (_, field) = m.name.split_once('.').expect("dotted");
                        let inner =
                            m.ty.strip_prefix("Array(")
                                .and_then(|t| t.strip_suffix(')'))
                                .expect("nested columns are arrays");
                        format!("{} {inner}", quote_ident(field))
                    })
                    .collect();
                let def = column_definition(
                    &quote_ident(group),
                    &format!("Nested({})", fields.join(", ")),
                    c.codec,
                );
                match nested_after.iter().find(|(g, _)| *g == group) {
                    Some(_) => groups.push((group, def)),
                    None => plain.push((group, def)),
                }
                i += members.len();
            }
        }
    }
    let mut defs = Vec::new();
    for (name, def) in plain {
        defs.push(def);
        for (group, after) in nested_after {
            if *after == name {
                if let Some((_, g)) = groups.iter().find(|(n, _)| n == group) {
                    defs.push(g.clone());
                }
            }
        }
    }
    defs
}

fn column_definition(name: &str, ty: &str, codec: &str) -> String {
    if codec.is_empty() {
        format!("{name} {ty}")
    } else {
        format!("{name} {ty} CODEC({codec})")
    }
}

fn create_trace_id_view(opts: &SchemaOptions) -> String {
    format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {}{} TO {} AS \
         SELECT TraceId, min(Timestamp) AS Start, max(Timestamp) AS End \
         FROM {} WHERE TraceId != '' GROUP BY TraceId",
        opts.qualified(TRACE_ID_TS_VIEW),
        opts.on_cluster(),
        opts.qualified(&opts.storage_name(TRACE_ID_TS.name)),
        opts.qualified(&opts.storage_name(TRACES.name)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{TRACES_RED_1H, TRACES_RED_1M};

    fn opts() -> SchemaOptions {
        SchemaOptions {
            database: "otel".into(),
            ttl_days: 0,
            cluster: None,
            dedup_window: 1000,
        }
    }

    #[test]
    fn nested_columns_become_one_nested_declaration() {
        let ddl = create_table(&TRACES, &opts());
        assert!(ddl.contains(
            "`Events` Nested(`Timestamp` DateTime64(9), `Name` LowCardinality(String), `Attributes` Map(LowCardinality(String), String)) CODEC(ZSTD(1))"
        ), "{ddl}");
        assert!(ddl.contains("`Timestamp` DateTime64(9) CODEC(Delta(8), ZSTD(1))"));
        assert!(ddl.contains("`SpanAttributes` Map(LowCardinality(String), String) CODEC(ZSTD(6))"));
        assert!(ddl.contains("`ScopeName` String CODEC(ZSTD(6))"));
        assert!(ddl.contains("`TraceId` String CODEC(ZSTD(1))"));
        assert!(ddl.contains("\nPRIMARY KEY (ServiceName, SpanName, toDateTime(Timestamp))\nORDER BY (ServiceName, SpanName, toDateTime(Timestamp), Timestamp)"), "{ddl}");
        assert!(ddl.contains("non_replicated_deduplication_window = 1000"));
        assert!(!ddl.contains("TTL"));
    }

    #[test]
    fn rollup_table_keys_on_its_dimensions_and_keeps_longer() {
        let o = SchemaOptions {
            ttl_days: 30,
            ..opts()
        };
        let ddl = create_rollup_table(&TRACES_RED_1M, &o);
        assert!(ddl.starts_with("CREATE TABLE IF NOT EXISTS `otel`.`otel_traces_red_1m` ("));
        assert!(ddl.contains("ENGINE = AggregatingMergeTree"), "{ddl}");
        assert!(
            ddl.contains("ORDER BY (ServiceName, Route, ServiceVersion, Timestamp)"),
            "{ddl}"
        );
        assert!(!ddl.contains("`StatusClass`"), "{ddl}");
        assert!(ddl.contains(
            "`RequestsByStatusClass` SimpleAggregateFunction(sumMap, Map(String, UInt64)) CODEC(ZSTD(1))"
        ));
        assert!(ddl.contains("TTL Timestamp + toIntervalDay(120)"), "{ddl}");
        assert!(ddl.contains(
            "`DurationQuantiles` AggregateFunction(quantilesDD(0.01, 0.5, 0.95, 0.99, 0.999), UInt64) CODEC(ZSTD(1))"
        ));
        assert!(!create_rollup_table(&TRACES_RED_1M, &opts()).contains("TTL"));
    }

    #[test]
    fn rollup_view_groups_by_every_dimension() {
        let sql = create_rollup_view(&TRACES_RED_1M, &opts());
        assert!(sql.starts_with(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS `otel`.`otel_traces_red_1m_mv` TO `otel`.`otel_traces_red_1m` AS SELECT "
        ));
        assert!(sql.contains(" FROM `otel`.`otel_traces` WHERE SpanKind = 'Server' GROUP BY `ServiceName`, `Route`, `ServiceVersion`, `Timestamp`"), "{sql}");
        assert!(sql
            .contains("sumMap(map(multiIf(if(SpanAttributes['http.response.status_code'] != '', "));
        assert!(sql.contains(
            ", 1, 1), 'xx'), StatusCode = 'Error', 'error', 'ok'), toUInt64(1))) AS `RequestsByStatusClass`"
        ), "{sql}");
        assert!(sql.contains("toStartOfMinute(Timestamp) AS `Timestamp`"));
        let hourly = create_rollup_view(&TRACES_RED_1H, &opts());
        assert!(
            hourly.contains(" FROM `otel`.`otel_traces_red_1m` GROUP BY "),
            "{hourly}"
        );
        assert!(hourly.contains("quantilesDDMergeState(0.01, 0.5, 0.95, 0.99, 0.999)(DurationQuantiles) AS `DurationQuantiles`"));
        assert!(hourly.contains("sumMap(RequestsByStatusClass) AS `RequestsByStatusClass`"));
        assert!(create_rollup_table(
            &TRACES_RED_1H,
            &SchemaOptions {
                ttl_days: 30,
                ..opts()
            }
        )
        .contains("TTL Timestamp + toIntervalDay(480)"));
    }

    #[test]
    fn outdated_rollups_keep_their_tables_but_lose_their_views_and_their_readers_views() {
        let all = create_statements(&opts());
        let without = create_statements_except(&opts(), &[TRACES_RED_1M.name]);
        let views = |sql: &[String]| -> Vec<String> {
            sql.iter()
                .filter(|s| s.starts_with("CREATE MATERIALIZED VIEW"))
                .map(|s| s.split_whitespace().nth(6).unwrap().to_string())
                .collect()
        };
        let removed: Vec<String> = views(&all)
            .into_iter()
            .filter(|v| !views(&without).contains(v))
            .collect();
        assert_eq!(
            removed,
            [
                "`otel`.`otel_traces_red_1m_mv`",
                "`otel`.`otel_traces_red_1h_mv`"
            ]
        );
        assert_eq!(all.len() - without.len(), 2);
        assert!(without
            .iter()
            .any(|s| s.starts_with("CREATE TABLE IF NOT EXISTS `otel`.`otel_traces_red_1h` (")));
    }

    #[test]
    fn metric_ddl_declares_exemplars_where_upstream_does() {
        let ddl = create_table(&crate::schema::HISTOGRAM, &opts());
        let at = |needle: &str| {
            ddl.find(needle)
                .unwrap_or_else(|| panic!("{needle}: {ddl}"))
        };
        assert!(at("`ExplicitBounds`") < at("`Exemplars` Nested("));
        assert!(at("`Exemplars` Nested(") < at("`Flags` UInt32"));
        assert!(ddl.contains("`Count` UInt64 CODEC(Delta, ZSTD(1))"));
        assert!(ddl.contains("INDEX idx_time_minmax TimeUnix TYPE minmax GRANULARITY 1"));
        let logs = create_table(&crate::schema::LOGS, &opts());
        assert!(logs.contains("`TraceFlags` UInt8,"), "{logs}");
        assert!(logs.contains("`__otel_materialized_k8s.pod.uid` LowCardinality(String) MATERIALIZED ResourceAttributes['k8s.pod.uid'] CODEC(ZSTD(1))"));
        let lookup = create_table(&TRACE_ID_TS, &opts());
        assert!(lookup.contains("ENGINE = AggregatingMergeTree\nPARTITION BY toStartOfWeek(Start)\nORDER BY (TraceId)"), "{lookup}");
    }

    #[test]
    fn cluster_and_ttl_options() {
        let o = SchemaOptions {
            cluster: Some("main".into()),
            ttl_days: 7,
            ..opts()
        };
        let ddl = create_table(&TRACES, &o);
        assert!(ddl.starts_with(
            "CREATE TABLE IF NOT EXISTS `otel`.`otel_traces_local` ON CLUSTER `main`"
        ));
        assert!(ddl.contains("ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')"), "{ddl}");
        assert!(ddl.contains("TTL toDateTime(Timestamp) + toIntervalDay(7)"));
        assert!(!ddl.contains("non_replicated_deduplication_window"));
        assert!(ddl.contains("replicated_deduplication_window = 1000"));
        assert!(create_trace_id_view(&o).contains(
            "ON CLUSTER `main` TO `otel`.`otel_traces_trace_id_ts_local` AS SELECT TraceId, min(Timestamp) AS Start, max(Timestamp) AS End FROM `otel`.`otel_traces_local`"
        ));
        let rollup = create_rollup_table(&TRACES_RED_1M, &o);
        assert!(rollup.contains("`otel_traces_red_1m_local` ON CLUSTER `main` ("));
        assert!(rollup.contains("ENGINE = ReplicatedAggregatingMergeTree("));
        assert!(rollup.contains("TTL Timestamp + toIntervalDay(28)"));
        assert!(create_rollup_view(&TRACES_RED_1H, &o).contains(
            "`otel_traces_red_1h_mv` ON CLUSTER `main` TO `otel`.`otel_traces_red_1h_local` AS SELECT "
        ));
        assert!(create_rollup_view(&TRACES_RED_1H, &o)
            .contains(" FROM `otel`.`otel_traces_red_1m_local` GROUP BY "));
    }
}

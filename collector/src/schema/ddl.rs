//! CREATE statements derived from the table definitions.

use super::views::{Rollup, ALL_ROLLUPS, TRACE_ID_TS_VIEW};
use super::{quote_ident, Column, Engine, Table, ALL_TABLES, TRACES, TRACE_ID_TS};

/// How the schema is laid out on the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaOptions {
    pub database: String,
    /// Rows older than this many days are dropped (0 keeps everything).
    pub ttl_days: u32,
    /// `ON CLUSTER` name; tables then use Replicated engines.
    pub cluster: Option<String>,
    /// How many recent insert blocks a non-replicated table remembers to drop repeats
    /// (`non_replicated_deduplication_window`); replicated tables deduplicate anyway.
    pub dedup_window: u32,
}

impl SchemaOptions {
    fn on_cluster(&self) -> String {
        match &self.cluster {
            Some(c) => format!(" ON CLUSTER {}", quote_ident(c)),
            None => String::new(),
        }
    }

    fn qualified(&self, table: &str) -> String {
        format!("{}.{}", quote_ident(&self.database), quote_ident(table))
    }
}

/// Every statement that sets the schema up, in order; each is idempotent.
pub fn create_statements(opts: &SchemaOptions) -> Vec<String> {
    let mut out = vec![format!(
        "CREATE DATABASE IF NOT EXISTS {}{}",
        quote_ident(&opts.database),
        opts.on_cluster()
    )];
    out.extend(ALL_TABLES.iter().map(|t| create_table(t, opts)));
    out.push(create_trace_id_view(opts));
    for rollup in ALL_ROLLUPS {
        out.push(create_rollup_table(rollup, opts));
        out.push(create_rollup_view(rollup, opts));
    }
    out
}

/// Days a rollup keeps its rows: its `ttl_factor` times the raw tables' TTL (0,
/// keep everything, stays 0).
pub fn rollup_ttl_days(rollup: &Rollup, opts: &SchemaOptions) -> u32 {
    opts.ttl_days.saturating_mul(rollup.ttl_factor)
}

fn create_rollup_table(r: &Rollup, opts: &SchemaOptions) -> String {
    let engine = if opts.cluster.is_some() {
        "ReplicatedAggregatingMergeTree"
    } else {
        "AggregatingMergeTree"
    };
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
    let mut settings = String::from("index_granularity = 8192, ttl_only_drop_parts = 1");
    if opts.cluster.is_none() && opts.dedup_window > 0 {
        settings.push_str(&format!(
            ", non_replicated_deduplication_window = {}",
            opts.dedup_window
        ));
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {}{} (\n    {}\n)\nENGINE = {engine}\nPARTITION BY {}\nORDER BY ({}){ttl}\nSETTINGS {settings}",
        opts.qualified(r.name),
        opts.on_cluster(),
        column_definitions(&r.table_columns()).join(",\n    "),
        r.partition_by,
        order_by.join(", "),
    )
}

/// On a cluster every replica runs the view for the inserts it receives, into its
/// replicated rollup; replicated source parts do not trigger it again elsewhere.
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
        opts.qualified(r.name),
        select.join(", "),
        opts.qualified(r.source),
        group_by.join(", "),
    )
}

fn create_table(t: &Table, opts: &SchemaOptions) -> String {
    let mut body: Vec<String> = column_definitions(t.columns);
    body.extend(t.indexes.iter().map(|i| format!("INDEX {i}")));
    let engine = if opts.cluster.is_some() {
        "ReplicatedMergeTree"
    } else {
        "MergeTree"
    };
    let ttl = if opts.ttl_days > 0 {
        format!("\nTTL {} + toIntervalDay({})", t.ttl_from, opts.ttl_days)
    } else {
        String::new()
    };
    let mut settings = String::from("index_granularity = 8192, ttl_only_drop_parts = 1");
    if opts.cluster.is_none() && opts.dedup_window > 0 && t.engine == Engine::MergeTree {
        settings.push_str(&format!(
            ", non_replicated_deduplication_window = {}",
            opts.dedup_window
        ));
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {}{} (\n    {}\n)\nENGINE = {engine}\nPARTITION BY {}\nORDER BY {}{ttl}\nSETTINGS {settings}",
        opts.qualified(t.name),
        opts.on_cluster(),
        body.join(",\n    "),
        t.partition_by,
        t.order_by,
    )
}

/// Flattened `Events.Name Array(T)` columns are declared as one `Events Nested(Name T, …)`.
fn column_definitions(columns: &[Column]) -> Vec<String> {
    let mut defs = Vec::new();
    let mut i = 0;
    while i < columns.len() {
        let c = &columns[i];
        match c.name.split_once('.') {
            None => {
                defs.push(format!(
                    "{} {} CODEC({})",
                    quote_ident(c.name),
                    c.ty,
                    c.codec
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
                defs.push(format!(
                    "{} Nested({}) CODEC({})",
                    quote_ident(group),
                    fields.join(", "),
                    c.codec
                ));
                i += members.len();
            }
        }
    }
    defs
}

fn create_trace_id_view(opts: &SchemaOptions) -> String {
    format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {}{} TO {} AS \
         SELECT TraceId, min(Timestamp) AS Start, max(Timestamp) AS End \
         FROM {} WHERE TraceId != '' GROUP BY TraceId",
        opts.qualified(TRACE_ID_TS_VIEW),
        opts.on_cluster(),
        opts.qualified(TRACE_ID_TS.name),
        opts.qualified(TRACES.name),
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
        assert!(ddl.contains("`Timestamp` DateTime64(9) CODEC(Delta, ZSTD(1))"));
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
            ddl.contains("ORDER BY (ServiceName, Route, ServiceVersion, StatusClass, Timestamp)")
        );
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
        assert!(sql.contains(" FROM `otel`.`otel_traces` WHERE SpanKind = 'Server' GROUP BY `ServiceName`, `Route`, `ServiceVersion`, `StatusClass`, `Timestamp`"), "{sql}");
        assert!(sql.contains("toStartOfMinute(Timestamp) AS `Timestamp`"));
        let hourly = create_rollup_view(&TRACES_RED_1H, &opts());
        assert!(
            hourly.contains(" FROM `otel`.`otel_traces_red_1m` GROUP BY "),
            "{hourly}"
        );
        assert!(hourly.contains("quantilesDDMergeState(0.01, 0.5, 0.95, 0.99, 0.999)(DurationQuantiles) AS `DurationQuantiles`"));
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
    fn cluster_and_ttl_options() {
        let o = SchemaOptions {
            cluster: Some("main".into()),
            ttl_days: 7,
            ..opts()
        };
        let ddl = create_table(&TRACES, &o);
        assert!(ddl.contains("ON CLUSTER `main`"));
        assert!(ddl.contains("ENGINE = ReplicatedMergeTree"));
        assert!(ddl.contains("TTL toDateTime(Timestamp) + toIntervalDay(7)"));
        assert!(!ddl.contains("non_replicated_deduplication_window"));
        assert!(create_trace_id_view(&o)
            .contains("ON CLUSTER `main` TO `otel`.`otel_traces_trace_id_ts`"));
        let rollup = create_rollup_table(&TRACES_RED_1M, &o);
        assert!(rollup.contains("`otel_traces_red_1m` ON CLUSTER `main` ("));
        assert!(rollup.contains("ENGINE = ReplicatedAggregatingMergeTree"));
        assert!(rollup.contains("TTL Timestamp + toIntervalDay(28)"));
        assert!(!rollup.contains("non_replicated_deduplication_window"));
        assert!(create_rollup_view(&TRACES_RED_1M, &o)
            .contains("`otel_traces_red_1m_mv` ON CLUSTER `main` TO `otel`.`otel_traces_red_1m`"));
    }
}

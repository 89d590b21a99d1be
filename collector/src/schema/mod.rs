//! The OpenTelemetry ClickHouse layout, declared once.
//!
//! Every table is one [`Table`] whose columns come from the row struct that fills it
//! (see the `row!` macro in [`tables`]): the DDL, the INSERT column list, the
//! RowBinary encoding and the schema probe are all derived from that declaration, so
//! they cannot drift apart. `views.rs` declares the pre-aggregations the same way:
//! each rollup column with the expression that fills it.

pub mod cast;
mod cluster;
mod ddl;
mod dedup_probe;
pub mod migrate;
mod probe;
pub mod rowbinary;
mod tables;
mod views;

pub use cluster::insert_settings;
pub use ddl::{
    create_statements, create_statements_except, rollup_statements, rollup_ttl_days, SchemaOptions,
    LOCAL_SUFFIX,
};
pub use dedup_probe::{
    deduplicated_tables, needed_window, probe_dedup_windows, DedupWindowProblem,
};
pub use probe::{compatible, probe, probe_report, ProbeReport, SchemaProblem};
pub use tables::*;
pub use views::*;

/// One column as ClickHouse's `DESCRIBE TABLE` reports it (nested columns flattened:
/// `Events.Name Array(LowCardinality(String))`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    /// Empty: no CODEC clause (the server default), as upstream has for small ints.
    pub codec: &'static str,
}

/// A row struct of one table: its columns in insert order and its RowBinary encoding.
pub trait Row {
    const COLUMNS: &'static [Column];
    fn encode(&self, out: &mut Vec<u8>);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    MergeTree,
    /// `otel_traces_trace_id_ts`, filled by a materialized view from `otel_traces`:
    /// an AggregatingMergeTree whose `min`/`max` states merge per trace id.
    TraceIdLookup,
}

/// A table of the layout. `TableId` numbers them for batching and the spool.
#[derive(Debug)]
pub struct Table {
    pub id: TableId,
    pub name: &'static str,
    pub columns: &'static [Column],
    pub indexes: &'static [&'static str],
    /// Column definitions the DDL declares but the exporter never writes (ALIAS and
    /// MATERIALIZED columns of the upstream layout).
    pub derived_columns: &'static [&'static str],
    /// (nested group, column): the DDL declares the group right after that column,
    /// as upstream does, while inserts keep it where the row struct has it.
    pub nested_after: &'static [(&'static str, &'static str)],
    pub partition_by: &'static str,
    /// Empty: the sorting key is the primary key.
    pub primary_key: &'static str,
    pub order_by: &'static str,
    /// The DateTime expression a TTL is counted from.
    pub ttl_from: &'static str,
    pub engine: Engine,
    /// The Distributed table's sharding key on a cluster: rows of one trace (and one
    /// metric series) land on one shard.
    pub shard_by: &'static str,
}

impl Table {
    /// `Timestamp, TraceId, …` — the column list of an INSERT.
    pub fn insert_columns(&self) -> String {
        let mut s = String::new();
        for (i, c) in self.columns.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            s.push_str(&quote_ident(c.name));
        }
        s
    }

    pub fn by_id(id: TableId) -> &'static Table {
        ALL_TABLES[id as usize]
    }
}

/// Backquotes an identifier; the dotted names of nested columns stay one identifier.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_index_all_tables() {
        for (i, t) in ALL_TABLES.iter().enumerate() {
            assert_eq!(t.id as usize, i, "{}", t.name);
        }
    }

    #[test]
    fn insert_columns_quote_nested_names() {
        let cols = TRACES.insert_columns();
        assert!(cols.starts_with("`Timestamp`, `TraceId`, `SpanId`, `ParentSpanId`"));
        assert!(cols.ends_with("`Links.TraceState`, `Links.Attributes`"));
    }
}

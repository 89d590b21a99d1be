//! The cluster layout (`clickhouse.cluster` set), derived from the same declarations
//! as the single-node one.
//!
//! - Every table of the layout (and every rollup) is `<name>_local` on each node:
//!   `Replicated*MergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')`,
//!   created `ON CLUSTER`.
//! - Under the upstream name sits a `Distributed(cluster, database, <name>_local, key)`
//!   table, so Grafana and every upstream query read all shards unchanged.
//! - Sharding keys ([`Table::shard_by`](super::Table)): `cityHash64(TraceId)` for
//!   spans and the trace-id lookup, so a trace (and its lookup row) lives on one
//!   shard; logs by trace id too; metrics by series (service, name, attributes).
//!   Every key is deterministic: a retried insert splits into the same per-shard
//!   blocks, which is what lets each shard deduplicate it.
//! - Materialized views are per node and read the local source table: a row
//!   inserted through a Distributed table lands in one shard's local table, whose
//!   view writes that shard's rollup. A rollup read through its Distributed table
//!   with the usual `sum` / `max` / `quantilesDDMerge` and GROUP BY merges the
//!   partial aggregate states of every shard (two-stage aggregation), so the answer
//!   is the same as on one node. The trace-id lookup is an AggregatingMergeTree of
//!   `min`/`max` states; as all spans of a trace share a shard, its row is complete
//!   there, and `min(Start)` / `max(End)` across shards stay right anyway.
//!
//! Inserts go through the Distributed tables with `distributed_foreground_insert = 1`
//! ([`insert_settings`]): the INSERT returns once every shard's block is written to
//! a replica, so an acknowledged batch is never only in a node's local queue
//! (the background mode would acknowledge before the shards have it, and a node
//! lost meanwhile loses it). The collector's `insert_deduplication_token` is
//! forwarded to the shards with the block; each shard's replicated table keeps the
//! hashes of its last `replicated_deduplication_window` blocks in Keeper, so a
//! retried batch (same rows, same token, same split) is dropped on every shard,
//! whichever collector or replica receives the retry.

use super::ddl::{SchemaOptions, LOCAL_SUFFIX};
use super::views::Rollup;

/// `CREATE TABLE <name> ON CLUSTER … AS <name>_local ENGINE = Distributed(…)`.
/// An empty `shard_by` leaves the table read-only across shards (rollups are
/// filled by views, never inserted through their Distributed table).
pub(super) fn create_distributed(name: &str, shard_by: &str, opts: &SchemaOptions) -> String {
    let cluster = opts.cluster.as_deref().unwrap_or_default();
    let key = if shard_by.is_empty() {
        String::new()
    } else {
        format!(", {shard_by}")
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {}{} AS {} ENGINE = Distributed({}, {}, {}{key})",
        opts.qualified(name),
        opts.on_cluster(),
        opts.qualified(&format!("{name}{LOCAL_SUFFIX}")),
        sql_string(cluster),
        sql_string(&opts.database),
        sql_string(&format!("{name}{LOCAL_SUFFIX}")),
    )
}

/// Rollups are never inserted into through their Distributed table.
pub(super) fn rollup_shard_key(_rollup: &Rollup) -> &'static str {
    ""
}

/// Settings every INSERT carries: on a cluster, a synchronous Distributed insert.
pub fn insert_settings(opts: &SchemaOptions) -> &'static [(&'static str, &'static str)] {
    if opts.cluster.is_some() {
        &[("distributed_foreground_insert", "1")]
    } else {
        &[]
    }
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{create_statements, TRACES};

    fn opts() -> SchemaOptions {
        SchemaOptions {
            database: "otel".into(),
            ttl_days: 0,
            cluster: Some("main".into()),
            dedup_window: 1000,
        }
    }

    #[test]
    fn distributed_table_shards_traces_by_trace_id() {
        assert_eq!(
            create_distributed(TRACES.name, TRACES.shard_by, &opts()),
            "CREATE TABLE IF NOT EXISTS `otel`.`otel_traces` ON CLUSTER `main` AS `otel`.`otel_traces_local` \
             ENGINE = Distributed('main', 'otel', 'otel_traces_local', cityHash64(TraceId))"
        );
        assert_eq!(
            insert_settings(&opts()),
            [("distributed_foreground_insert", "1")]
        );
    }

    #[test]
    fn every_written_table_has_a_deterministic_shard_key() {
        for t in crate::schema::ALL_TABLES {
            assert!(!t.shard_by.is_empty(), "{}", t.name);
            assert!(!t.shard_by.contains("rand"), "{}: {}", t.name, t.shard_by);
        }
        assert_eq!(TRACES.shard_by, "cityHash64(TraceId)");
        assert_eq!(crate::schema::TRACE_ID_TS.shard_by, TRACES.shard_by);
    }

    #[test]
    fn every_table_and_rollup_gets_a_local_and_a_distributed_table() {
        let sql = create_statements(&opts());
        for t in crate::schema::ALL_TABLES {
            let local = format!("`otel`.`{}_local` ON CLUSTER `main` (", t.name);
            let dist = format!(
                "`otel`.`{}` ON CLUSTER `main` AS `otel`.`{}_local` ENGINE = Distributed(",
                t.name, t.name
            );
            assert!(sql.iter().any(|s| s.contains(&local)), "{local}");
            assert!(sql.iter().any(|s| s.contains(&dist)), "{dist}");
        }
        for r in crate::schema::ALL_ROLLUPS {
            let dist = format!("`otel`.`{}` ON CLUSTER `main` AS `otel`.`{}_local` ENGINE = Distributed('main', 'otel', '{}_local')", r.name, r.name, r.name);
            assert!(sql.iter().any(|s| s.contains(&dist)), "{dist}");
        }
        // Views never read a Distributed table: they fire on the local inserts.
        for s in sql
            .iter()
            .filter(|s| s.starts_with("CREATE MATERIALIZED VIEW"))
        {
            let from = s.split(" FROM ").nth(1).expect("FROM");
            assert!(
                from.split_whitespace().next().unwrap().ends_with("_local`"),
                "{s}"
            );
        }
    }
}

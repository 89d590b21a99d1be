//! Moves the RED rollups' history to their current shape.
//!
//! Earlier releases kept `StatusClass` as a dimension of `otel_traces_red_1m` and
//! `otel_traces_red_1h`; it is now the `RequestsByStatusClass` counts of one row per
//! key (see [`TRACES_RED_1M`]). A table of the old shape is rebuilt from its own
//! rows — the hourly one too, since it keeps its history four times longer than the
//! minute one — in steps each safe to repeat after a crash:
//!
//! 1. drop both views, so the old tables stop changing (and no view ever runs
//!    between tables of two shapes: the old hourly view reads `StatusClass`);
//! 2. per old table, a staging table of the new shape under a name of its own
//!    (`<table>__migrating_<token>`) is filled by one `INSERT … SELECT` grouped by
//!    the new key: sums summed, `sumMap(map(StatusClass, Requests))`, sketches
//!    merged with `quantilesDDMergeState`; it must count as many requests as the
//!    old table;
//! 3. `EXCHANGE TABLES` swaps the two names atomically (the table name never
//!    points at nothing), then the staging name, now the old rows, is dropped;
//! 4. once no table has the old shape, staging tables an interrupted run left are
//!    dropped; the normal set-up then creates the views.
//!
//! A crash before the exchange leaves the old table under its name: the next start
//! begins again with a new staging table (4 drops the partial one). A crash between
//! the exchange and the drop leaves the old rows under a staging name, which 4
//! drops. Several collectors starting at once each build their own copy of the same
//! frozen rows, and only a complete copy is swapped in; one that drops the views
//! after another has made them again costs the rollups what the other writes until
//! it makes them again itself.
//!
//! The collector's writers wait while this runs (the schema gate is pending), so
//! the spans they hold reach the views once those exist. Spans another process
//! inserts meanwhile land in raw spans but not in the rollups.
//!
//! Automatic on a single node only: on a cluster the copy has to run on one
//! replica of each shard, which one node cannot do. There, and with
//! `create_schema = false`, the probe reports the old shape (never blocking
//! writes: the old views keep filling the old tables) and [`manual_statements`]
//! (`collector migration-sql`) prints the steps to run by hand.

use std::fmt;

use serde::Deserialize;

use super::ddl::{create_rollup_table_named, rollup_statements, SchemaOptions};
use super::probe::columns_of;
use super::quote_ident;
use super::views::{ColumnRole, Rollup, TRACES_RED_1H, TRACES_RED_1M};

/// The dimension earlier releases had.
pub const OLD_DIMENSION: &str = "StatusClass";
/// The column that replaced it, and how it is computed from rows of the old shape.
const NEW_COLUMN: &str = "RequestsByStatusClass";
const NEW_COLUMN_FROM_OLD: &str = "sumMap(map(StatusClass, Requests))";
/// The rollups that changed shape, the minute one (the hourly one's source) first.
pub const RED_ROLLUPS: [&Rollup; 2] = [&TRACES_RED_1M, &TRACES_RED_1H];
/// Marks a staging table: `<table>__migrating_<token>`.
const STAGING: &str = "__migrating_";
/// The staging token of the statements run by hand.
const MANUAL_TOKEN: &str = "manual";

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("{step}: {source}")]
    ClickHouse {
        step: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("the copy of {table} counts {copied} requests, the table {original}; not swapped in")]
    Incomplete {
        table: &'static str,
        original: u64,
        copied: u64,
    },
}

/// A rollup table whose shape is the earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outdated {
    pub table: &'static str,
}

impl fmt::Display for Outdated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "table {} has an earlier release's shape ({OLD_DIMENSION} is a dimension, {NEW_COLUMN} \
             is missing): its view still fills it, but the dashboards' status-class panel fails \
             on it; a single node with create_schema on migrates it at start, else follow \
             docs/upgrading.md (collector migration-sql prints the statements)",
            self.table
        )
    }
}

/// One table's migration, as done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub table: &'static str,
    pub rows_before: u64,
    pub rows_after: u64,
    pub requests: u64,
}

/// Whether a table with these columns has the old shape.
pub fn is_old_shape<'a>(mut columns: impl Iterator<Item = &'a str> + Clone) -> bool {
    columns.clone().any(|c| c == OLD_DIMENSION) && !columns.any(|c| c == NEW_COLUMN)
}

/// The RED rollups whose table (on a cluster, each node's local table) has the old
/// shape.
pub async fn outdated(
    client: &clickhouse::Client,
    opts: &SchemaOptions,
) -> Result<Vec<&'static Rollup>, clickhouse::error::Error> {
    let mut out = Vec::new();
    for r in RED_ROLLUPS {
        let columns = column_names(client, opts, &opts.storage_name(r.name)).await?;
        if is_old_shape(columns.iter().map(String::as_str)) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Migrates the RED tables `old` (those [`outdated`] found in the old shape; single
/// node only: a cluster is migrated by hand), then drops the staging tables an
/// interrupted run left. Nothing to do is quick: one look at `system.tables`.
pub async fn migrate(
    client: &clickhouse::Client,
    opts: &SchemaOptions,
    old: &[&'static Rollup],
) -> Result<Vec<Migrated>, MigrationError> {
    debug_assert!(opts.cluster.is_none(), "a cluster is migrated by hand");
    let mut done = Vec::new();
    if !old.is_empty() {
        for sql in drop_views(opts) {
            execute(client, &sql).await?;
        }
        for &r in old {
            done.push(migrate_table(client, opts, r).await?);
        }
    }
    for r in RED_ROLLUPS {
        let leftovers: Vec<String> = client
            .query("SELECT name FROM system.tables WHERE database = ? AND startsWith(name, ?)")
            .bind(&opts.database)
            .bind(format!("{}{STAGING}", r.name))
            .fetch_all()
            .await
            .map_err(step("listing staging tables"))?;
        for table in leftovers {
            execute(client, &drop_table(opts, &table)).await?;
        }
    }
    Ok(done)
}

async fn migrate_table(
    client: &clickhouse::Client,
    opts: &SchemaOptions,
    r: &'static Rollup,
) -> Result<Migrated, MigrationError> {
    let staging = format!("{}{STAGING}{:08x}", r.name, rand::random::<u32>());
    execute(client, &create_rollup_table_named(r, opts, &staging)).await?;
    execute(client, &copy(r, opts, &staging)).await?;
    let (rows_before, original) = totals(client, opts, r.name).await?;
    let (rows_after, copied) = totals(client, opts, &staging).await?;
    if original != copied {
        execute(client, &drop_table(opts, &staging)).await?;
        return Err(MigrationError::Incomplete {
            table: r.name,
            original,
            copied,
        });
    }
    // Another collector may have swapped its copy in meanwhile: then ours goes.
    let columns = column_names(client, opts, r.name)
        .await
        .map_err(step("reading the columns before the exchange"))?;
    if is_old_shape(columns.iter().map(String::as_str)) {
        execute(client, &exchange(opts, r.name, &staging)).await?;
    }
    execute(client, &drop_table(opts, &staging)).await?;
    Ok(Migrated {
        table: r.name,
        rows_before,
        rows_after,
        requests: copied,
    })
}

/// The migration as statements to run by hand, with `--` comments saying what
/// each step does: on a single node the same steps [`migrate`] takes; on a
/// cluster `ON CLUSTER` on the local tables, with the copy to run on one replica
/// of each shard, then the Distributed tables (whose columns are the local
/// tables' at their creation) and the views made again.
pub fn manual_statements(opts: &SchemaOptions) -> Vec<String> {
    let cluster = opts.cluster.is_some();
    let mut out = vec![
        "-- 1. Stop the views, so the old tables stop changing (spans inserted until step 4 \
         reach raw spans only)"
            .to_string(),
    ];
    out.extend(drop_views(opts));
    for (i, r) in RED_ROLLUPS.iter().enumerate() {
        let table = opts.storage_name(r.name);
        let staging = format!("{table}{STAGING}{MANUAL_TOKEN}");
        out.push(format!(
            "-- {}. {table}, only if it has the column {OLD_DIMENSION}: a copy in the new shape",
            i + 2
        ));
        out.push(create_rollup_table_named(r, opts, &staging));
        if cluster {
            out.push(format!(
                "-- on ONE replica of EACH shard (the copy replicates to the others; wait for \
                 SYSTEM SYNC REPLICA {} on them):",
                opts.qualified(&staging)
            ));
        }
        out.push(copy(r, opts, &staging));
        out.push("-- the two numbers must be equal (on a cluster: on each shard)".to_string());
        out.push(format!(
            "SELECT (SELECT sum(Requests) FROM {}), (SELECT sum(Requests) FROM {})",
            opts.qualified(&table),
            opts.qualified(&staging)
        ));
        out.push(exchange(opts, r.name, &staging));
        out.push(drop_table(opts, &staging));
    }
    out.push(format!(
        "-- {}. The views again (what a collector's set-up with create_schema on runs){}",
        RED_ROLLUPS.len() + 2,
        if cluster {
            ", after the Distributed tables, whose columns are still the old ones"
        } else {
            ""
        }
    ));
    for r in RED_ROLLUPS {
        if cluster {
            out.push(drop_table(opts, r.name));
        }
        out.extend(rollup_statements(r, opts));
    }
    out
}

/// Both views: the hourly one reads the minute table.
fn drop_views(opts: &SchemaOptions) -> Vec<String> {
    RED_ROLLUPS
        .iter()
        .rev()
        .map(|r| {
            format!(
                "DROP VIEW IF EXISTS {}{} SYNC",
                opts.qualified(r.view),
                opts.on_cluster()
            )
        })
        .collect()
}

/// `INSERT … SELECT` of the old rows grouped by the new key. Each column is merged
/// as the hourly view merges it (the two rollups have the same columns), at the
/// table's own grain; the status-class counts come from the old dimension. No
/// block deduplication: the rows are new to the staging table, and two blocks of
/// equal content would otherwise be dropped as repeats.
fn copy(r: &Rollup, opts: &SchemaOptions, staging: &str) -> String {
    let mut columns = Vec::new();
    let mut select = Vec::new();
    let mut group_by = Vec::new();
    for c in TRACES_RED_1H.columns {
        let name = quote_ident(c.column.name);
        let expr = if c.column.name == NEW_COLUMN {
            NEW_COLUMN_FROM_OLD.to_string()
        } else if c.role == ColumnRole::Dimension {
            group_by.push(name.clone());
            name.clone()
        } else {
            c.expr.to_string()
        };
        // No aliases: `sum(Requests) AS Requests` would make the class counts'
        // `Requests` that sum. The INSERT takes the columns by position.
        select.push(expr);
        columns.push(name);
    }
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM {} GROUP BY {} SETTINGS insert_deduplicate = 0",
        opts.qualified(staging),
        columns.join(", "),
        select.join(", "),
        opts.qualified(&opts.storage_name(r.name)),
        group_by.join(", "),
    )
}

fn exchange(opts: &SchemaOptions, name: &str, staging: &str) -> String {
    format!(
        "EXCHANGE TABLES {} AND {}{}",
        opts.qualified(&opts.storage_name(name)),
        opts.qualified(staging),
        opts.on_cluster()
    )
}

fn drop_table(opts: &SchemaOptions, table: &str) -> String {
    format!(
        "DROP TABLE IF EXISTS {}{} SYNC",
        opts.qualified(table),
        opts.on_cluster()
    )
}

#[derive(Deserialize, clickhouse::Row)]
struct Totals {
    rows: u64,
    requests: u64,
}

/// Rows and requests of a RED table.
async fn totals(
    client: &clickhouse::Client,
    opts: &SchemaOptions,
    table: &str,
) -> Result<(u64, u64), MigrationError> {
    let t: Totals = client
        .query(&format!(
            "SELECT count() AS rows, toUInt64(sum(Requests)) AS requests FROM {}",
            opts.qualified(table)
        ))
        .fetch_one()
        .await
        .map_err(step(&format!("counting {table}")))?;
    Ok((t.rows, t.requests))
}

async fn column_names(
    client: &clickhouse::Client,
    opts: &SchemaOptions,
    table: &str,
) -> Result<Vec<String>, clickhouse::error::Error> {
    Ok(columns_of(client, &opts.database, table)
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect())
}

async fn execute(client: &clickhouse::Client, sql: &str) -> Result<(), MigrationError> {
    client.query(sql).execute().await.map_err(step(sql))
}

fn step(what: &str) -> impl FnOnce(clickhouse::error::Error) -> MigrationError + '_ {
    move |source| MigrationError::ClickHouse {
        step: what.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(cluster: Option<&str>) -> SchemaOptions {
        SchemaOptions {
            database: "otel".into(),
            ttl_days: 7,
            cluster: cluster.map(String::from),
            dedup_window: 1000,
        }
    }

    #[test]
    fn the_new_column_replaces_the_old_dimension_in_both_rollups() {
        for r in RED_ROLLUPS {
            let names: Vec<&str> = r.columns.iter().map(|c| c.column.name).collect();
            assert!(names.contains(&NEW_COLUMN), "{}", r.name);
            assert!(!names.contains(&OLD_DIMENSION), "{}", r.name);
            assert!(!is_old_shape(names.iter().copied()));
        }
        let mut old: Vec<&str> = TRACES_RED_1M
            .columns
            .iter()
            .map(|c| c.column.name)
            .filter(|n| *n != NEW_COLUMN)
            .collect();
        assert!(!is_old_shape(old.iter().copied()));
        old.push(OLD_DIMENSION);
        assert!(is_old_shape(old.iter().copied()));
        // `copy` builds both tables' copies from the hourly rollup's column list.
        let names = |r: &Rollup| r.columns.iter().map(|c| c.column.name).collect::<Vec<_>>();
        assert_eq!(names(&TRACES_RED_1M), names(&TRACES_RED_1H));
    }

    #[test]
    fn the_copy_merges_every_column_at_the_tables_own_grain() {
        let sql = copy(
            &TRACES_RED_1H,
            &opts(None),
            "otel_traces_red_1h__migrating_1",
        );
        assert!(sql.starts_with(
            "INSERT INTO `otel`.`otel_traces_red_1h__migrating_1` (`ServiceName`, `Route`, `ServiceVersion`, `Timestamp`, `Requests`, `Errors`, `RequestsByStatusClass`, "
        ), "{sql}");
        assert!(sql.contains(
            " SELECT `ServiceName`, `Route`, `ServiceVersion`, `Timestamp`, sum(Requests), sum(Errors), \
             sumMap(map(StatusClass, Requests)), sum(DurationSum), max(DurationMax), \
             quantilesDDMergeState(0.01, 0.5, 0.95, 0.99, 0.999)(DurationQuantiles) FROM "
        ), "{sql}");
        assert!(sql.ends_with(
            " FROM `otel`.`otel_traces_red_1h` GROUP BY `ServiceName`, `Route`, `ServiceVersion`, `Timestamp` SETTINGS insert_deduplicate = 0"
        ), "{sql}");
    }

    #[test]
    fn manual_steps_on_a_cluster_work_on_the_local_tables() {
        let sql = manual_statements(&opts(Some("main")));
        let find = |needle: &str| {
            sql.iter()
                .position(|s| s.contains(needle))
                .unwrap_or_else(|| panic!("{needle}: {sql:#?}"))
        };
        let exchange = find(
            "EXCHANGE TABLES `otel`.`otel_traces_red_1m_local` AND `otel`.`otel_traces_red_1m_local__migrating_manual` ON CLUSTER `main`",
        );
        assert!(
            find("DROP VIEW IF EXISTS `otel`.`otel_traces_red_1h_mv` ON CLUSTER `main` SYNC")
                < exchange
        );
        assert!(find("ReplicatedAggregatingMergeTree(") < exchange);
        assert!(find("FROM `otel`.`otel_traces_red_1h_local` GROUP BY") > exchange);
        assert!(
            find("DROP TABLE IF EXISTS `otel`.`otel_traces_red_1m` ON CLUSTER `main` SYNC")
                < find("ENGINE = Distributed('main', 'otel', 'otel_traces_red_1m_local')")
        );
        assert!(sql.last().unwrap().starts_with(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS `otel`.`otel_traces_red_1h_mv` ON CLUSTER `main`"
        ));
        let single = manual_statements(&opts(None));
        assert!(single
            .iter()
            .all(|s| !s.contains("ON CLUSTER") && !s.contains("Distributed")));
    }
}

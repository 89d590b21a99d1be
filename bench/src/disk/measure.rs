//! What the engine reports about stored bytes (`system.parts`, `system.parts_columns`
//! over active parts) and what a statement cost it (wall and CPU seconds).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use collector::schema::{quote_ident, TRACES};

use crate::engine::Engine;
use crate::procfs;

/// One table's active parts, summed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct TableSize {
    pub database: String,
    pub table: String,
    pub parts: u64,
    pub rows: u64,
    pub bytes_on_disk: u64,
    /// The columns' data files, compressed and not.
    pub data_compressed_bytes: u64,
    pub data_uncompressed_bytes: u64,
    /// Skip indexes (bloom filters, minmax, tokenbf), with their marks.
    pub skip_index_bytes: u64,
    pub marks_bytes: u64,
}

/// One column's bytes over a table's active parts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct ColumnSize {
    pub column: String,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    /// From `system.columns`.
    pub codec: String,
}

/// What one statement cost: wall time and the engine's CPU seconds (user + system,
/// all threads, from /proc), background merges it triggered included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub wall_seconds: f64,
    pub engine_cpu_seconds: f64,
}

/// Sizes of `tables` in `database` (those with no active part are left out).
pub async fn table_sizes(
    client: &clickhouse::Client,
    database: &str,
    tables: &[&str],
) -> clickhouse::error::Result<Vec<TableSize>> {
    client
        .query(
            "SELECT database, table, count() AS parts, sum(rows) AS rows, \
             sum(bytes_on_disk) AS bytes_on_disk, \
             sum(data_compressed_bytes) AS data_compressed_bytes, \
             sum(data_uncompressed_bytes) AS data_uncompressed_bytes, \
             sum(secondary_indices_compressed_bytes + secondary_indices_marks_bytes) AS skip_index_bytes, \
             sum(marks_bytes) AS marks_bytes \
             FROM system.parts WHERE active AND database = ? AND has(?, table) \
             GROUP BY database, table ORDER BY table",
        )
        .bind(database)
        .bind(tables)
        .fetch_all()
        .await
}

/// Every column of `database.table`, largest compressed first.
pub async fn column_sizes(
    client: &clickhouse::Client,
    database: &str,
    table: &str,
) -> clickhouse::error::Result<Vec<ColumnSize>> {
    client
        .query(
            "SELECT p.column AS column, p.compressed_bytes AS compressed_bytes, \
             p.uncompressed_bytes AS uncompressed_bytes, c.compression_codec AS codec \
             FROM (SELECT column, sum(column_data_compressed_bytes) AS compressed_bytes, \
                          sum(column_data_uncompressed_bytes) AS uncompressed_bytes \
                   FROM system.parts_columns WHERE active AND database = ? AND table = ? \
                   GROUP BY column) AS p \
             LEFT JOIN (SELECT name, compression_codec FROM system.columns \
                        WHERE database = ? AND table = ?) AS c ON c.name = p.column \
             ORDER BY compressed_bytes DESC, column",
        )
        .bind(database)
        .bind(table)
        .bind(database)
        .bind(table)
        .fetch_all()
        .await
}

/// `count()` and an order-independent digest of every column we write: two tables
/// with equal fingerprints hold the same rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct Fingerprint {
    pub rows: u64,
    pub digest: u64,
}

pub async fn fingerprint(
    client: &clickhouse::Client,
    database: &str,
) -> clickhouse::error::Result<Fingerprint> {
    client
        .query(&format!(
            "SELECT count() AS rows, groupBitXor(cityHash64({})) AS digest FROM {}.{}",
            TRACES.insert_columns(),
            quote_ident(database),
            quote_ident(TRACES.name),
        ))
        .fetch_one()
        .await
}

/// Runs `sql` on the engine and measures it.
pub async fn timed(engine: &Engine, sql: &str) -> anyhow::Result<Cost> {
    let cpu0 = procfs::cpu_seconds(engine.pid)?;
    let started = Instant::now();
    engine.query(sql).await?;
    Ok(Cost {
        wall_seconds: started.elapsed().as_secs_f64(),
        engine_cpu_seconds: procfs::cpu_seconds(engine.pid)? - cpu0,
    })
}

impl std::ops::Add for Cost {
    type Output = Cost;

    fn add(self, o: Cost) -> Cost {
        Cost {
            wall_seconds: self.wall_seconds + o.wall_seconds,
            engine_cpu_seconds: self.engine_cpu_seconds + o.engine_cpu_seconds,
        }
    }
}

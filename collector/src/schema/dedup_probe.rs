//! Checks the deduplication window of every table the collector inserts into.
//!
//! A batch whose INSERT answer was lost, or that is replayed from the spool after a
//! restart, is sent again with the same block; ClickHouse drops the repeat only if
//! that block is still among the last N blocks the table remembers
//! (`non_replicated_deduplication_window`, or `replicated_deduplication_window`
//! for Replicated engines). A window of 0 (the server default for non-replicated
//! tables) or one smaller than the backlog of batches the spool can replay means a
//! retry can store rows twice. Tables made by us carry the window in their DDL;
//! tables made by someone else, or before, may not. The probe reads each table's
//! setting (or the server default when the table sets none) and reports the ones
//! that are missing or too small; it does not change them.

use std::fmt;

use serde::Deserialize;

use super::{Engine, ALL_ROLLUPS, ALL_TABLES, LOCAL_SUFFIX};

/// The compression the sizing assumes for spooled rows (LZ4 on RowBinary rows of
/// OTLP data; the spool's budget counts compressed bytes, `batching.max_bytes`
/// raw ones). A higher ratio means more batches fit in the spool.
pub const ASSUMED_COMPRESSION: u64 = 10;

/// The window every table needs: full batches of one table the spool can hold,
/// `ceil(spool.max_disk_bytes × ASSUMED_COMPRESSION / batching.max_bytes)`.
/// Smaller batches (little traffic, flushed by `max_delay_ms`) come with a smaller
/// backlog, and batches grow while ClickHouse is away (the batcher waits on the
/// exporter), so full batches are the case to size for. Never less than 1.
pub fn needed_window(spool_max_disk_bytes: u64, batch_max_bytes: usize) -> u64 {
    let batch = (batch_max_bytes as u64).max(1);
    spool_max_disk_bytes
        .saturating_mul(ASSUMED_COMPRESSION)
        .div_ceil(batch)
        .max(1)
}

/// One table whose window is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupWindowProblem {
    pub table: String,
    /// The setting that applies to its engine.
    pub setting: &'static str,
    /// The window in effect; 0 when deduplication is off.
    pub window: u64,
    /// Whether the table sets it itself (else the server default applies).
    pub set_on_table: bool,
    pub needed: u64,
}

impl fmt::Display for DedupWindowProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = if self.set_on_table {
            "set on the table"
        } else {
            "server default, not set on the table"
        };
        if self.window == 0 {
            write!(
                f,
                "table {} does not deduplicate retried INSERTs ({} = 0, {source}): a batch \
                 retried after a lost answer or a restart can be stored twice; run \
                 ALTER TABLE {} MODIFY SETTING {} = {}",
                self.table, self.setting, self.table, self.setting, self.needed
            )
        } else {
            write!(
                f,
                "table {} remembers the last {} INSERT blocks ({}, {source}), fewer than the \
                 {} batches the spool can replay: a retried batch may be stored twice; run \
                 ALTER TABLE {} MODIFY SETTING {} = {}",
                self.table,
                self.window,
                self.setting,
                self.needed,
                self.table,
                self.setting,
                self.needed
            )
        }
    }
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct TableInfo {
    name: String,
    engine: String,
    create_table_query: String,
}

/// The tables the collector inserts into, directly or through a materialized view
/// that deduplicates with its source; `otel_traces_trace_id_ts` is only a lookup
/// (rows repeated there change no answer) and sets no window.
pub fn deduplicated_tables() -> Vec<&'static str> {
    ALL_TABLES
        .iter()
        .filter(|t| t.engine == Engine::MergeTree)
        .map(|t| t.name)
        .chain(ALL_ROLLUPS.iter().map(|r| r.name))
        .collect()
}

/// The names probed: in a cluster the blocks are kept by the `<name>_local` tables
/// under the Distributed ones (which keep none and are skipped), so both spellings.
fn probed_names() -> Vec<String> {
    deduplicated_tables()
        .into_iter()
        .flat_map(|name| [name.to_string(), format!("{name}{LOCAL_SUFFIX}")])
        .collect()
}

/// Every table of [`deduplicated_tables`] present in `database` whose window is
/// below `needed`. Missing tables are the schema probe's business, not this one's.
pub async fn probe_dedup_windows(
    client: &clickhouse::Client,
    database: &str,
    needed: u64,
) -> Result<Vec<DedupWindowProblem>, clickhouse::error::Error> {
    let tables: Vec<TableInfo> = client
        .query(
            "SELECT name, engine, create_table_query FROM system.tables \
             WHERE database = ? AND has(?, name)",
        )
        .bind(database)
        .bind(probed_names())
        .fetch_all()
        .await?;
    let mut problems = Vec::new();
    for t in tables {
        if t.engine == "Distributed" {
            continue;
        }
        let setting = setting_for(&t.engine);
        let (window, set_on_table) = match table_setting(&t.create_table_query, setting) {
            Some(w) => (w, true),
            None => (server_default(client, setting).await?, false),
        };
        if window < needed {
            problems.push(DedupWindowProblem {
                table: format!("{database}.{}", t.name),
                setting,
                window,
                set_on_table,
                needed,
            });
        }
    }
    problems.sort_by(|a, b| a.table.cmp(&b.table));
    Ok(problems)
}

fn setting_for(engine: &str) -> &'static str {
    if engine.starts_with("Replicated") || engine.starts_with("Shared") {
        "replicated_deduplication_window"
    } else {
        "non_replicated_deduplication_window"
    }
}

async fn server_default(
    client: &clickhouse::Client,
    setting: &str,
) -> Result<u64, clickhouse::error::Error> {
    let value: String = client
        .query("SELECT value FROM system.merge_tree_settings WHERE name = ?")
        .bind(setting)
        .fetch_one()
        .await?;
    Ok(value.trim().parse().unwrap_or(0))
}

/// `setting`'s value in the SETTINGS clause of a `CREATE TABLE`, when there.
/// Keys are compared whole: `replicated_deduplication_window` is part of two
/// other settings' names.
fn table_setting(create: &str, setting: &str) -> Option<u64> {
    let (_, settings) = create.rsplit_once(" SETTINGS ")?;
    settings.split(',').find_map(|kv| {
        let (key, value) = kv.split_once('=')?;
        (key.trim() == setting).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_the_full_batches_the_spool_holds() {
        // Defaults: a 1 GiB spool, 32 MiB batches.
        assert_eq!(needed_window(1 << 30, 32 << 20), 320);
        assert_eq!(needed_window(100 << 30, 1 << 20), 1_024_000);
        assert_eq!(needed_window(0, 32 << 20), 1);
        assert_eq!(needed_window(10, 0), 100);
    }

    #[test]
    fn reads_the_setting_from_the_create_query() {
        let q = "CREATE TABLE db.t (`a` UInt8) ENGINE = MergeTree ORDER BY a SETTINGS \
                 index_granularity = 8192, non_replicated_deduplication_window = 9";
        assert_eq!(
            table_setting(q, "non_replicated_deduplication_window"),
            Some(9)
        );
        assert_eq!(table_setting(q, "replicated_deduplication_window"), None);
        let r = "CREATE TABLE db.t (`a` UInt8) ENGINE = ReplicatedMergeTree('/p', 'r') \
                 ORDER BY a SETTINGS replicated_deduplication_window_seconds = 60, \
                 replicated_deduplication_window = 500";
        assert_eq!(
            table_setting(r, "replicated_deduplication_window"),
            Some(500)
        );
        assert_eq!(
            table_setting("CREATE TABLE t (a UInt8) ENGINE = Log", "x"),
            None
        );
    }

    #[test]
    fn replicated_engines_use_the_replicated_setting() {
        assert_eq!(
            setting_for("ReplicatedMergeTree"),
            "replicated_deduplication_window"
        );
        assert_eq!(
            setting_for("AggregatingMergeTree"),
            "non_replicated_deduplication_window"
        );
    }

    #[test]
    fn the_report_says_how_to_fix_it() {
        let p = DedupWindowProblem {
            table: "otel.otel_logs".into(),
            setting: "non_replicated_deduplication_window",
            window: 0,
            set_on_table: false,
            needed: 320,
        };
        let text = p.to_string();
        assert!(text.contains("does not deduplicate"), "{text}");
        assert!(text.contains(
            "ALTER TABLE otel.otel_logs MODIFY SETTING non_replicated_deduplication_window = 320"
        ));
        let small = DedupWindowProblem {
            window: 100,
            set_on_table: true,
            ..p
        };
        assert!(small
            .to_string()
            .contains("remembers the last 100 INSERT blocks"));
    }
}

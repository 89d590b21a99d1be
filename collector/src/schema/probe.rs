//! Checks that the tables on the server have every column we write, with types that
//! take what we write, and reports the rollups and materialized views that are
//! missing.
//!
//! Accepted besides our exact types (tables made by the upstream exporter, old or
//! current, or by earlier versions of this collector): `String` for
//! `LowCardinality(String)` and the reverse, any time zone, `Bool`/`UInt8`,
//! `SimpleAggregateFunction(f, T)` for `T`, and `DateTime64(9)` for `DateTime` or the
//! reverse; the last needs the rows re-encoded ([`TableCast`]), which the probe
//! plans. A rollup whose table exists must match (its view runs inside every INSERT
//! into its source); one that is absent altogether, a missing view, or a RED
//! rollup of an earlier release's shape (filled by that release's view, see
//! [`migrate`](super::migrate)) is only reported: it leaves a dashboard empty or
//! wrong but never blocks writing.

use std::fmt;

use serde::Deserialize;

use super::cast::TableCast;
use super::migrate::{is_old_shape, Outdated};
use super::{Column, TableId, ALL_ROLLUPS, ALL_TABLES, TRACE_ID_TS, TRACE_ID_TS_VIEW};

/// What is wrong with one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaProblem {
    /// The table, or the materialized view when `view_missing`.
    pub table: &'static str,
    pub view_missing: bool,
    pub missing: Vec<&'static str>,
    /// (column, expected type, type found)
    pub mistyped: Vec<(&'static str, &'static str, String)>,
}

impl fmt::Display for SchemaProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.view_missing {
            return write!(f, "materialized view {} is missing", self.table);
        }
        write!(f, "table {}", self.table)?;
        if !self.missing.is_empty() {
            write!(f, " lacks columns {}", self.missing.join(", "))?;
        }
        for (col, want, got) in &self.mistyped {
            write!(f, "; column {col} is {got}, expected {want}")?;
        }
        Ok(())
    }
}

/// Everything one probe found.
#[derive(Debug, Default)]
pub struct ProbeReport {
    /// Writes wait until these are fixed.
    pub problems: Vec<SchemaProblem>,
    /// Our extras (rollups, views) that are absent: reported, never blocking.
    pub absent_extras: Vec<SchemaProblem>,
    /// Our rollups in an earlier release's shape: reported, never blocking.
    pub outdated: Vec<Outdated>,
    /// Tables whose rows must be re-encoded for the server's time columns.
    pub casts: Vec<(TableId, TableCast)>,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
pub(super) struct ColumnInfo {
    pub(super) name: String,
    #[serde(rename = "type")]
    ty: String,
}

/// The blocking problems only; see [`probe_report`].
pub async fn probe(
    client: &clickhouse::Client,
    database: &str,
) -> Result<Vec<SchemaProblem>, clickhouse::error::Error> {
    Ok(probe_report(client, database).await?.problems)
}

/// Compares every table of the layout with the server's `system.columns`.
/// Extra columns on the server are fine: the exporter never writes them.
pub async fn probe_report(
    client: &clickhouse::Client,
    database: &str,
) -> Result<ProbeReport, clickhouse::error::Error> {
    let mut report = ProbeReport::default();
    let views: Vec<String> = client
        .query("SELECT name FROM system.tables WHERE database = ? AND engine = 'MaterializedView'")
        .bind(database)
        .fetch_all()
        .await?;
    for t in ALL_TABLES {
        let found = columns_of(client, database, t.name).await?;
        let (problem, server_types) = compare(t.name, t.columns, &found);
        if let Some(p) = problem {
            report.problems.push(p);
        } else if t.id != TRACE_ID_TS.id {
            let server: Vec<&str> = server_types.iter().map(|s| s.as_str()).collect();
            match TableCast::plan(t.columns, &server) {
                Ok(Some(cast)) => report.casts.push((t.id, cast)),
                Ok(None) => {}
                Err(e) => report.problems.push(SchemaProblem {
                    table: t.name,
                    view_missing: false,
                    missing: Vec::new(),
                    mistyped: vec![("*", "re-encodable types", e.to_string())],
                }),
            }
        }
    }
    for r in ALL_ROLLUPS {
        let found = columns_of(client, database, r.name).await?;
        let view_exists = views.iter().any(|v| v == r.view);
        if found.is_empty() && !view_exists {
            report.absent_extras.push(absent_table(r.name));
            continue;
        }
        if is_old_shape(found.iter().map(|c| c.name.as_str())) {
            report.outdated.push(Outdated { table: r.name });
            continue;
        }
        if let (Some(p), _) = compare(r.name, &r.table_columns(), &found) {
            report.problems.push(p);
        }
    }
    report.absent_extras.extend(missing_views(&views));
    Ok(report)
}

pub(super) async fn columns_of(
    client: &clickhouse::Client,
    database: &str,
    table: &str,
) -> Result<Vec<ColumnInfo>, clickhouse::error::Error> {
    client
        .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
        .bind(database)
        .bind(table)
        .fetch_all()
        .await
}

fn absent_table(table: &'static str) -> SchemaProblem {
    SchemaProblem {
        table,
        view_missing: false,
        missing: vec!["* (the table is absent)"],
        mistyped: Vec::new(),
    }
}

fn missing_views(found: &[String]) -> Vec<SchemaProblem> {
    std::iter::once(TRACE_ID_TS_VIEW)
        .chain(ALL_ROLLUPS.iter().map(|r| r.view))
        .filter(|v| !found.iter().any(|f| f == v))
        .map(|v| SchemaProblem {
            table: v,
            view_missing: true,
            missing: Vec::new(),
            mistyped: Vec::new(),
        })
        .collect()
}

/// The problem, if any, and the server's type of each of `columns` (ours where
/// the column is missing).
fn compare(
    table: &'static str,
    columns: &[Column],
    found: &[ColumnInfo],
) -> (Option<SchemaProblem>, Vec<String>) {
    let mut problem = SchemaProblem {
        table,
        view_missing: false,
        missing: Vec::new(),
        mistyped: Vec::new(),
    };
    let mut server = Vec::with_capacity(columns.len());
    for col in columns {
        match found.iter().find(|f| f.name == col.name) {
            None => {
                problem.missing.push(col.name);
                server.push(col.ty.to_string());
            }
            Some(f) => {
                if !compatible(col.ty, &f.ty) {
                    problem.mistyped.push((col.name, col.ty, f.ty.clone()));
                }
                server.push(f.ty.clone());
            }
        }
    }
    let bad = !problem.missing.is_empty() || !problem.mistyped.is_empty();
    (bad.then_some(problem), server)
}

/// Whether a column of type `got` takes what we write as `want` (re-encoded for
/// the time precision where the two differ).
pub fn compatible(want: &str, got: &str) -> bool {
    let (want, got) = (normalize(want), normalize(got));
    want == got
        || want.replace("DateTime64(9)", "DateTime") == got.replace("DateTime64(9)", "DateTime")
}

/// Drops what does not change the RowBinary encoding.
fn normalize(t: &str) -> String {
    let mut s = t.replace(" ", "");
    for wrapper in ["LowCardinality(", "SimpleAggregateFunction("] {
        while let Some(at) = s.find(wrapper) {
            let open = at + wrapper.len() - 1;
            let Some(close) = matching_paren(&s, open) else {
                break;
            };
            let inner = &s[open + 1..close];
            let inner = if wrapper.starts_with("Simple") {
                inner.split_once(',').map(|(_, t)| t).unwrap_or(inner)
            } else {
                inner
            };
            s = format!("{}{}{}", &s[..at], inner, &s[close + 1..]);
        }
    }
    // Time zones: DateTime('UTC'), DateTime64(9,'UTC').
    while let Some(at) = s.find(",'").or_else(|| s.find("('")) {
        let Some(end) = s[at..].find("')").map(|e| at + e) else {
            break;
        };
        let keep_paren = s.as_bytes()[at] == b',';
        s = if keep_paren {
            format!("{}{}", &s[..at], &s[end + 1..])
        } else {
            format!("{}{}", &s[..at], &s[end + 2..])
        };
    }
    s.replace("Bool", "UInt8")
}

fn matching_paren(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, ch) in s[open..].char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{LOGS, TRACES_RED_1H, TRACE_ID_TS_VIEW};

    #[test]
    fn reports_missing_and_mistyped_columns() {
        let mut found: Vec<ColumnInfo> = LOGS
            .columns
            .iter()
            .map(|c| ColumnInfo {
                name: c.name.into(),
                ty: c.ty.into(),
            })
            .collect();
        assert_eq!(compare(LOGS.name, LOGS.columns, &found).0, None);
        found.retain(|c| c.name != "EventName");
        found[0].ty = "String".into();
        let p = compare(LOGS.name, LOGS.columns, &found).0.expect("problem");
        assert_eq!(p.missing, ["EventName"]);
        assert_eq!(
            p.mistyped,
            [("Timestamp", "DateTime64(9)", "String".to_string())]
        );
        assert_eq!(
            p.to_string(),
            "table otel_logs lacks columns EventName; column Timestamp is String, expected DateTime64(9)"
        );
    }

    #[test]
    fn accepts_types_that_take_what_we_write() {
        for (want, got) in [
            ("LowCardinality(String)", "String"),
            ("String", "LowCardinality(String)"),
            ("DateTime", "DateTime64(9)"),
            ("DateTime64(9)", "DateTime('UTC')"),
            ("DateTime64(9)", "DateTime64(9, 'UTC')"),
            ("Array(DateTime)", "Array(DateTime64(9))"),
            ("Bool", "UInt8"),
            ("DateTime", "SimpleAggregateFunction(min, DateTime)"),
            ("Map(LowCardinality(String), String)", "Map(String, String)"),
        ] {
            assert!(compatible(want, got), "{want} / {got}");
        }
        for (want, got) in [
            ("UInt8", "UInt16"),
            ("String", "Array(String)"),
            ("DateTime64(9)", "DateTime64(3)"),
            ("Float64", "Float32"),
        ] {
            assert!(!compatible(want, got), "{want} / {got}");
        }
    }

    #[test]
    fn reports_each_missing_view() {
        let all: Vec<String> = std::iter::once(TRACE_ID_TS_VIEW)
            .chain(ALL_ROLLUPS.iter().map(|r| r.view))
            .map(String::from)
            .collect();
        assert!(all.contains(&TRACES_RED_1H.view.to_string()));
        assert_eq!(missing_views(&all), []);
        let p = missing_views(&all[..all.len() - 1]);
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].to_string(),
            format!("materialized view {} is missing", all[all.len() - 1])
        );
    }
}

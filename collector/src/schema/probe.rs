//! Checks that the tables on the server have every column we write, with our types,
//! and that the rollups and the materialized views filling them exist: a view
//! inserts into its rollup within the INSERT into `otel_traces`, so a broken rollup
//! would fail the writes, and a missing view would leave dashboards empty.

use std::fmt;

use serde::Deserialize;

use super::{Column, ALL_ROLLUPS, ALL_TABLES, TRACE_ID_TS_VIEW};

/// What is wrong with one table; the collector stays unready while any exists.
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

#[derive(Debug, Deserialize, clickhouse::Row)]
struct ColumnInfo {
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

/// Compares every table of the layout with the server's `system.columns`.
/// Extra columns on the server are fine: the exporter never writes them.
pub async fn probe(
    client: &clickhouse::Client,
    database: &str,
) -> Result<Vec<SchemaProblem>, clickhouse::error::Error> {
    let mut problems = Vec::new();
    let tables = ALL_TABLES
        .iter()
        .map(|t| (t.name, t.columns.to_vec()))
        .chain(ALL_ROLLUPS.iter().map(|r| (r.name, r.table_columns())));
    for (name, columns) in tables {
        let found: Vec<ColumnInfo> = client
            .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
            .bind(database)
            .bind(name)
            .fetch_all()
            .await?;
        if let Some(p) = compare(name, &columns, &found) {
            problems.push(p);
        }
    }
    let views: Vec<String> = client
        .query("SELECT name FROM system.tables WHERE database = ? AND engine = 'MaterializedView'")
        .bind(database)
        .fetch_all()
        .await?;
    problems.extend(missing_views(&views));
    Ok(problems)
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

fn compare(table: &'static str, columns: &[Column], found: &[ColumnInfo]) -> Option<SchemaProblem> {
    let mut problem = SchemaProblem {
        table,
        view_missing: false,
        missing: Vec::new(),
        mistyped: Vec::new(),
    };
    for col in columns {
        match found.iter().find(|f| f.name == col.name) {
            None => problem.missing.push(col.name),
            Some(f) if f.ty != col.ty => problem.mistyped.push((col.name, col.ty, f.ty.clone())),
            Some(_) => {}
        }
    }
    (!problem.missing.is_empty() || !problem.mistyped.is_empty()).then_some(problem)
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
        assert_eq!(compare(LOGS.name, LOGS.columns, &found), None);
        found.retain(|c| c.name != "EventName");
        found[0].ty = "DateTime".into();
        let p = compare(LOGS.name, LOGS.columns, &found).expect("problem");
        assert_eq!(p.missing, ["EventName"]);
        assert_eq!(
            p.mistyped,
            [("Timestamp", "DateTime64(9)", "DateTime".to_string())]
        );
        assert_eq!(
            p.to_string(),
            "table otel_logs lacks columns EventName; column Timestamp is DateTime, expected DateTime64(9)"
        );
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

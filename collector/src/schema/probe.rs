//! Checks that the tables on the server have every column we write, with our types.

use std::fmt;

use serde::Deserialize;

use super::{Table, ALL_TABLES};

/// What is wrong with one table; the collector stays unready while any exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaProblem {
    pub table: &'static str,
    pub missing: Vec<&'static str>,
    /// (column, expected type, type found)
    pub mistyped: Vec<(&'static str, &'static str, String)>,
}

impl fmt::Display for SchemaProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
    for table in ALL_TABLES {
        let found: Vec<ColumnInfo> = client
            .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
            .bind(database)
            .bind(table.name)
            .fetch_all()
            .await?;
        if let Some(p) = compare(table, &found) {
            problems.push(p);
        }
    }
    Ok(problems)
}

fn compare(table: &'static Table, found: &[ColumnInfo]) -> Option<SchemaProblem> {
    let mut problem = SchemaProblem {
        table: table.name,
        missing: Vec::new(),
        mistyped: Vec::new(),
    };
    for col in table.columns {
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
    use crate::schema::LOGS;

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
        assert_eq!(compare(&LOGS, &found), None);
        found.retain(|c| c.name != "EventName");
        found[0].ty = "DateTime".into();
        let p = compare(&LOGS, &found).expect("problem");
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
}

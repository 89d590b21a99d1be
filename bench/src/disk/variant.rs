//! Candidate changes to our `otel_traces` DDL, measured on the same rows: codecs per
//! column (applied as `ALTER TABLE … MODIFY COLUMN … CODEC(…)`, the statement an
//! existing table would take) and the sorting key. Names and types never change:
//! Grafana's queries and the schema probe see the same table.

use std::str::FromStr;

use collector::schema::{create_statements, quote_ident, SchemaOptions, TRACES};

/// `--variant 'NAME=COLUMN:CODEC;COLUMN:CODEC;order_by:(…);primary_key:(…)'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    pub name: String,
    /// (column, codec without `CODEC(…)`)
    pub codecs: Vec<(String, String)>,
    pub order_by: Option<String>,
    pub primary_key: Option<String>,
}

impl Variant {
    /// Our DDL as it is.
    pub fn baseline() -> Variant {
        Variant {
            name: "baseline".into(),
            codecs: Vec::new(),
            order_by: None,
            primary_key: None,
        }
    }

    /// What the variant changes, as given on the command line.
    pub fn changes(&self) -> String {
        let mut parts: Vec<String> = self
            .codecs
            .iter()
            .map(|(c, codec)| format!("{c} {codec}"))
            .collect();
        if let Some(o) = &self.order_by {
            parts.push(format!("ORDER BY {o}"));
        }
        if let Some(p) = &self.primary_key {
            parts.push(format!("PRIMARY KEY {p}"));
        }
        if parts.is_empty() {
            "our DDL as it is".into()
        } else {
            parts.join("; ")
        }
    }

    /// The statements that make the variant's `otel_traces` in `database` (which
    /// must exist): our CREATE with the sorting key replaced, then one ALTER per codec.
    pub fn statements(&self, database: &str) -> Result<Vec<String>, VariantError> {
        let opts = SchemaOptions {
            database: database.into(),
            ..Default::default()
        };
        let head = format!(
            "CREATE TABLE IF NOT EXISTS {} (",
            opts_table(database, TRACES.name)
        );
        let mut create = create_statements(&opts)
            .into_iter()
            .find(|s| s.starts_with(&head))
            .ok_or(VariantError::NoTracesTable)?;
        if let Some(order_by) = &self.order_by {
            create = replace_clause(&create, "ORDER BY ", order_by)?;
        }
        if let Some(primary_key) = &self.primary_key {
            create = replace_clause(&create, "PRIMARY KEY ", primary_key)?;
        }
        let mut out = vec![create];
        for (column, codec) in &self.codecs {
            if !TRACES.columns.iter().any(|c| c.name == column) {
                return Err(VariantError::UnknownColumn(column.clone()));
            }
            out.push(format!(
                "ALTER TABLE {} MODIFY COLUMN {} CODEC({codec})",
                opts_table(database, TRACES.name),
                quote_ident(column)
            ));
        }
        Ok(out)
    }
}

fn opts_table(database: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(database), quote_ident(table))
}

/// Replaces the line `<clause>…` of a CREATE statement.
fn replace_clause(create: &str, clause: &str, value: &str) -> Result<String, VariantError> {
    let mut found = false;
    let lines: Vec<String> = create
        .lines()
        .map(|l| {
            if l.starts_with(clause) {
                found = true;
                format!("{clause}{value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        return Err(VariantError::NoClause(clause.trim().to_string()));
    }
    Ok(lines.join("\n"))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VariantError {
    #[error("expected NAME=COLUMN:CODEC;…, got {0:?}")]
    Syntax(String),
    #[error("otel_traces has no column {0:?}")]
    UnknownColumn(String),
    #[error("our otel_traces DDL has no {0} line")]
    NoClause(String),
    #[error("our schema has no otel_traces CREATE statement")]
    NoTracesTable,
}

impl FromStr for Variant {
    type Err = VariantError;

    fn from_str(s: &str) -> Result<Variant, VariantError> {
        let syntax = || VariantError::Syntax(s.to_string());
        let (name, spec) = s.split_once('=').ok_or_else(syntax)?;
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(syntax());
        }
        let mut variant = Variant {
            name: name.to_string(),
            codecs: Vec::new(),
            order_by: None,
            primary_key: None,
        };
        for item in spec.split(';').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once(':').ok_or_else(syntax)?;
            let (key, value) = (key.trim(), value.trim().to_string());
            match key {
                "order_by" => variant.order_by = Some(value),
                "primary_key" => variant.primary_key = Some(value),
                column => variant.codecs.push((column.to_string(), value)),
            }
        }
        Ok(variant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_codecs_and_keys() {
        let v: Variant = "zstd3=SpanAttributes:ZSTD(3); Timestamp:DoubleDelta, ZSTD(1);order_by:(ServiceName, Timestamp)"
            .parse()
            .unwrap();
        assert_eq!(v.name, "zstd3");
        assert_eq!(
            v.codecs,
            [
                ("SpanAttributes".to_string(), "ZSTD(3)".to_string()),
                ("Timestamp".to_string(), "DoubleDelta, ZSTD(1)".to_string())
            ]
        );
        assert_eq!(v.order_by.as_deref(), Some("(ServiceName, Timestamp)"));
        assert!("no spec".parse::<Variant>().is_err());
        assert!("a b=X:Y".parse::<Variant>().is_err());
    }

    #[test]
    fn statements_replace_the_key_and_alter_codecs() {
        let v: Variant = "k=Events.Attributes:ZSTD(3);order_by:(ServiceName, Timestamp);primary_key:(ServiceName)"
            .parse()
            .unwrap();
        let s = v.statements("db").unwrap();
        assert!(s[0].starts_with("CREATE TABLE IF NOT EXISTS `db`.`otel_traces` ("));
        assert!(
            s[0].contains("\nPRIMARY KEY (ServiceName)\nORDER BY (ServiceName, Timestamp)\n"),
            "{}",
            s[0]
        );
        assert_eq!(
            s[1],
            "ALTER TABLE `db`.`otel_traces` MODIFY COLUMN `Events.Attributes` CODEC(ZSTD(3))"
        );
        let base = Variant::baseline().statements("db").unwrap();
        assert_eq!(base.len(), 1);
        assert!(base[0]
            .contains("\nORDER BY (ServiceName, SpanName, toDateTime(Timestamp), Timestamp)\n"));
        assert_eq!(
            "x=Nope:ZSTD(3)"
                .parse::<Variant>()
                .unwrap()
                .statements("db"),
            Err(VariantError::UnknownColumn("Nope".into()))
        );
    }
}

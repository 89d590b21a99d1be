//! Re-encodes RowBinary rows for a table whose time columns have the other
//! precision: tables made by earlier versions of the upstream exporter use
//! `DateTime64(9)` where the current layout (and ours) uses `DateTime`, or the
//! reverse. RowBinary carries no types, so the bytes must match the server's
//! column types exactly; every other difference the probe accepts
//! (`LowCardinality`, time zones, `Bool`/`UInt8`) encodes the same.

use super::Column;

/// How one value changes on its way to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeCast {
    /// Our `DateTime` (u32 seconds) into a `DateTime64(9)` column.
    SecondsToNanos,
    /// Our `DateTime64(9)` (i64 nanoseconds) into a `DateTime` column.
    NanosToSeconds,
}

/// The RowBinary shape of one of our column types.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Fixed(usize),
    Str,
    Time(Option<TimeCast>, usize),
    Array(Box<Shape>),
    Map(Box<Shape>, Box<Shape>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CastError {
    #[error("column type {0} cannot be re-encoded")]
    Unsupported(String),
    #[error("row data ends inside a value")]
    Truncated,
}

/// The per-column plan of one table: built once per probe, applied to each batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCast {
    shapes: Vec<Shape>,
}

impl TableCast {
    /// `server` gives the server's type of each of `columns` (same order); `None`
    /// when no column needs a change.
    pub fn plan(columns: &[Column], server: &[&str]) -> Result<Option<TableCast>, CastError> {
        let mut any = false;
        let mut shapes = Vec::with_capacity(columns.len());
        for (c, got) in columns.iter().zip(server) {
            let shape = shape(c.ty, Some(got))?;
            any |= shape.casts();
            shapes.push(shape);
        }
        Ok(any.then_some(TableCast { shapes }))
    }

    /// Rewrites concatenated rows.
    pub fn apply(&self, mut src: &[u8]) -> Result<Vec<u8>, CastError> {
        let mut out = Vec::with_capacity(src.len() + src.len() / 8);
        while !src.is_empty() {
            for s in &self.shapes {
                s.copy(&mut src, &mut out)?;
            }
        }
        Ok(out)
    }
}

/// Parses one of our declared types, pairing its time leaves with the server's.
fn shape(ours: &str, server: Option<&str>) -> Result<Shape, CastError> {
    let ours = strip_wrapper(ours, "LowCardinality(");
    let server = server.map(|s| strip_wrapper(s, "LowCardinality("));
    let unsupported = || CastError::Unsupported(ours.to_string());
    if let Some(inner) = ours
        .strip_prefix("Array(")
        .and_then(|t| t.strip_suffix(')'))
    {
        let server_inner = server.and_then(|s| s.strip_prefix("Array(")?.strip_suffix(')'));
        return Ok(Shape::Array(Box::new(shape(inner, server_inner)?)));
    }
    if let Some(inner) = ours.strip_prefix("Map(").and_then(|t| t.strip_suffix(')')) {
        let (k, v) = split_top_comma(inner).ok_or_else(unsupported)?;
        return Ok(Shape::Map(
            Box::new(shape(k, None)?),
            Box::new(shape(v, None)?),
        ));
    }
    let is_nanos = |t: &str| t.starts_with("DateTime64(9");
    let is_seconds = |t: &str| t == "DateTime" || t.starts_with("DateTime(");
    Ok(match ours {
        "String" => Shape::Str,
        "UInt8" | "Int8" | "Bool" => Shape::Fixed(1),
        "UInt16" | "Int16" => Shape::Fixed(2),
        "UInt32" | "Int32" | "Float32" => Shape::Fixed(4),
        "UInt64" | "Int64" | "Float64" => Shape::Fixed(8),
        t if is_seconds(t) => match server {
            Some(s) if is_nanos(s) => Shape::Time(Some(TimeCast::SecondsToNanos), 4),
            _ => Shape::Time(None, 4),
        },
        t if is_nanos(t) => match server {
            Some(s) if is_seconds(s) => Shape::Time(Some(TimeCast::NanosToSeconds), 8),
            _ => Shape::Time(None, 8),
        },
        _ => return Err(unsupported()),
    })
}

fn strip_wrapper<'a>(t: &'a str, wrapper: &str) -> &'a str {
    t.strip_prefix(wrapper)
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(t)
}

/// `K, V` of a `Map(K, V)`, splitting at the comma outside any parentheses.
fn split_top_comma(s: &str) -> Option<(&str, &str)> {
    let mut depth = 0;
    for (i, ch) in s.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => return Some((s[..i].trim(), s[i + 1..].trim())),
            _ => {}
        }
    }
    None
}

fn take<'a>(src: &mut &'a [u8], n: usize) -> Result<&'a [u8], CastError> {
    if src.len() < n {
        return Err(CastError::Truncated);
    }
    let (head, rest) = src.split_at(n);
    *src = rest;
    Ok(head)
}

fn varint(src: &mut &[u8], out: &mut Vec<u8>) -> Result<u64, CastError> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let b = take(src, 1)?[0];
        out.push(b);
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(CastError::Truncated)
}

impl Shape {
    fn casts(&self) -> bool {
        match self {
            Shape::Time(c, _) => c.is_some(),
            Shape::Array(s) => s.casts(),
            Shape::Map(k, v) => k.casts() || v.casts(),
            Shape::Fixed(_) | Shape::Str => false,
        }
    }

    fn copy(&self, src: &mut &[u8], out: &mut Vec<u8>) -> Result<(), CastError> {
        match self {
            Shape::Fixed(n) | Shape::Time(None, n) => out.extend_from_slice(take(src, *n)?),
            Shape::Str => {
                let n = varint(src, out)? as usize;
                out.extend_from_slice(take(src, n)?);
            }
            Shape::Time(Some(TimeCast::SecondsToNanos), _) => {
                let s = u32::from_le_bytes(take(src, 4)?.try_into().expect("4 bytes"));
                out.extend_from_slice(&(i64::from(s) * 1_000_000_000).to_le_bytes());
            }
            Shape::Time(Some(TimeCast::NanosToSeconds), _) => {
                let ns = i64::from_le_bytes(take(src, 8)?.try_into().expect("8 bytes"));
                let s = ns.div_euclid(1_000_000_000).clamp(0, i64::from(u32::MAX)) as u32;
                out.extend_from_slice(&s.to_le_bytes());
            }
            Shape::Array(inner) => {
                for _ in 0..varint(src, out)? {
                    inner.copy(src, out)?;
                }
            }
            Shape::Map(k, v) => {
                for _ in 0..varint(src, out)? {
                    k.copy(src, out)?;
                    v.copy(src, out)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{GaugeRow, Row, SpanRow};

    fn server_types(columns: &[Column], swap: &[(&str, &str)]) -> Vec<String> {
        columns
            .iter()
            .map(|c| {
                swap.iter()
                    .find(|(n, _)| *n == c.name)
                    .map(|(_, t)| t.to_string())
                    .unwrap_or_else(|| c.ty.to_string())
            })
            .collect()
    }

    #[test]
    fn same_types_need_no_plan() {
        let types = server_types(GaugeRow::COLUMNS, &[("MetricName", "String")]);
        let refs: Vec<&str> = types.iter().map(String::as_str).collect();
        assert_eq!(TableCast::plan(GaugeRow::COLUMNS, &refs), Ok(None));
    }

    #[test]
    fn metric_seconds_become_nanoseconds_and_back() {
        let row = GaugeRow {
            metric_name: "m".into(),
            start_time_unix: 1_700_000_000,
            time_unix: 1_700_000_005,
            value: 2.5,
            exemplars_time_unix: vec![1_700_000_001, 1_700_000_002],
            exemplars_value: vec![1.0, 2.0],
            exemplars_span_id: vec!["a".into(), "b".into()],
            exemplars_trace_id: vec!["c".into(), "d".into()],
            exemplars_filtered_attributes: vec![Default::default(), Default::default()],
            ..Default::default()
        };
        let mut raw = Vec::new();
        row.encode(&mut raw);
        row.encode(&mut raw);
        let types = server_types(
            GaugeRow::COLUMNS,
            &[
                ("StartTimeUnix", "DateTime64(9)"),
                ("TimeUnix", "DateTime64(9)"),
                ("Exemplars.TimeUnix", "Array(DateTime64(9))"),
            ],
        );
        let refs: Vec<&str> = types.iter().map(String::as_str).collect();
        let plan = TableCast::plan(GaugeRow::COLUMNS, &refs)
            .unwrap()
            .expect("a plan");
        let wide = plan.apply(&raw).unwrap();
        // 2 rows x (2 times + 2 exemplar times) x 4 more bytes.
        assert_eq!(wide.len(), raw.len() + 2 * 4 * 4);
        assert!(wide
            .windows(8)
            .any(|w| w == (1_700_000_002i64 * 1_000_000_000).to_le_bytes()));
        assert_eq!(plan.apply(&raw[..raw.len() - 1]), Err(CastError::Truncated));
    }

    #[test]
    fn span_nanoseconds_become_seconds() {
        let row = SpanRow {
            timestamp: 1_700_000_000_999_999_999,
            ..Default::default()
        };
        let mut raw = Vec::new();
        row.encode(&mut raw);
        let types = server_types(SpanRow::COLUMNS, &[("Timestamp", "DateTime")]);
        let refs: Vec<&str> = types.iter().map(String::as_str).collect();
        let plan = TableCast::plan(SpanRow::COLUMNS, &refs)
            .unwrap()
            .expect("a plan");
        let narrow = plan.apply(&raw).unwrap();
        assert_eq!(&narrow[..4], &1_700_000_000u32.to_le_bytes());
        assert_eq!(narrow.len(), raw.len() - 4);
    }
}

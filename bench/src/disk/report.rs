//! The report of one `bench disk` run: what was measured, and its Markdown tables.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::measure::{ColumnSize, Cost, Fingerprint, TableSize};
use crate::compare::median;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DiskReport {
    pub profile: String,
    pub requests: u32,
    pub spans_per_request: u16,
    /// Spans sent, acknowledged and counted in both tables.
    pub spans: u64,
    pub nproc: i64,
    pub load_average_start: String,
    pub load_average_end: String,
    /// From the first request until every row was stored and the collector had
    /// drained; engine CPU seconds over that time.
    pub ingest: Cost,
    /// `OPTIMIZE … FINAL` of our tables after the ingest (the merges left to do).
    pub ours_optimize: Cost,
    pub ours: Vec<TableSize>,
    pub upstream: Vec<TableSize>,
    /// Tables the upstream DDL creates (the others of ours are ours only).
    pub upstream_tables: Vec<String>,
    pub ours_columns: Vec<ColumnSize>,
    pub upstream_columns: Vec<ColumnSize>,
    pub ours_fingerprint: Fingerprint,
    pub upstream_fingerprint: Fingerprint,
    /// `INSERT INTO upstream SELECT … FROM ours`.
    pub copy: Cost,
    pub variants: Vec<VariantRun>,
}

/// One candidate DDL, measured on a copy of the same rows (`rounds` times).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VariantRun {
    pub name: String,
    pub changes: String,
    pub size: TableSize,
    pub columns: Vec<ColumnSize>,
    pub insert: Vec<Cost>,
    pub optimize: Vec<Cost>,
    /// A query reading every column of every row.
    pub read: Vec<Cost>,
}

impl VariantRun {
    fn median_cpu(costs: &[Cost]) -> f64 {
        median(costs.iter().map(|c| c.engine_cpu_seconds).collect())
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl DiskReport {
    fn per_span(&self, bytes: u64) -> f64 {
        bytes as f64 / self.spans.max(1) as f64
    }

    pub fn markdown(&self, top: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# {} spans ({} requests x {}, profile {}), nproc {}, load average {} at the start, {} at the end",
            thousands(self.spans),
            self.requests,
            self.spans_per_request,
            self.profile,
            self.nproc,
            self.load_average_start,
            self.load_average_end,
        );
        let _ = writeln!(
            out,
            "# through our collector: {:.1} s, engine {:.1} CPU s; then OPTIMIZE FINAL of our tables {:.1} s, engine {:.1} CPU s",
            self.ingest.wall_seconds,
            self.ingest.engine_cpu_seconds,
            self.ours_optimize.wall_seconds,
            self.ours_optimize.engine_cpu_seconds
        );
        let same = self.ours_fingerprint == self.upstream_fingerprint;
        let _ = writeln!(
            out,
            "# same rows in both: {} (ours {} rows, digest {:016x}; upstream {} rows, digest {:016x}); copy into upstream: {:.1} s, engine {:.1} CPU s\n",
            if same { "yes" } else { "NO" },
            self.ours_fingerprint.rows,
            self.ours_fingerprint.digest,
            self.upstream_fingerprint.rows,
            self.upstream_fingerprint.digest,
            self.copy.wall_seconds,
            self.copy.engine_cpu_seconds
        );
        out.push_str(&self.tables_markdown());
        out.push('\n');
        out.push_str(&self.columns_markdown(top));
        if !self.variants.is_empty() {
            out.push('\n');
            out.push_str(&self.variants_markdown());
        }
        out
    }

    fn tables_markdown(&self) -> String {
        let mut out = String::from(
            "| layout | table | rows | parts | bytes_on_disk | bytes/span | columns compressed | columns uncompressed | skip indexes |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        let row = |out: &mut String, layout: &str, name: &str, t: &TableSize| {
            let _ = writeln!(
                out,
                "| {layout} | {name} | {} | {} | {} | {:.2} | {} | {} | {} |",
                thousands(t.rows),
                t.parts,
                thousands(t.bytes_on_disk),
                self.per_span(t.bytes_on_disk),
                thousands(t.data_compressed_bytes),
                thousands(t.data_uncompressed_bytes),
                thousands(t.skip_index_bytes),
            );
        };
        for (layout, tables) in [("ours", &self.ours), ("upstream", &self.upstream)] {
            let mut extras = TableSize::default();
            for t in tables {
                let ours_only = layout == "ours" && !self.upstream_tables.contains(&t.table);
                if ours_only {
                    add(&mut extras, t);
                }
                let name = if ours_only {
                    format!("{} (ours only)", t.table)
                } else {
                    t.table.clone()
                };
                row(&mut out, layout, &name, t);
            }
            if extras.parts > 0 {
                row(&mut out, layout, "**rollups, ours only**", &extras);
            }
            let mut all = TableSize::default();
            for t in tables {
                add(&mut all, t);
            }
            row(&mut out, layout, "**all of the above**", &all);
        }
        out
    }

    fn columns_markdown(&self, top: usize) -> String {
        let mut out = String::from(
            "| otel_traces column | codec (ours) | ours compressed bytes/span | upstream compressed bytes/span | uncompressed bytes/span | ratio |\n|---|---|---|---|---|---|\n",
        );
        for c in self.ours_columns.iter().take(top) {
            let up = self
                .upstream_columns
                .iter()
                .find(|u| u.column == c.column)
                .map_or("—".to_string(), |u| {
                    format!("{:.2}", self.per_span(u.compressed_bytes))
                });
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {up} | {:.2} | {:.1} |",
                c.column,
                c.codec,
                self.per_span(c.compressed_bytes),
                self.per_span(c.uncompressed_bytes),
                c.uncompressed_bytes as f64 / c.compressed_bytes.max(1) as f64,
            );
        }
        let rest: u64 = self
            .ours_columns
            .iter()
            .skip(top)
            .map(|c| c.compressed_bytes)
            .sum();
        let up_rest: u64 = self
            .upstream_columns
            .iter()
            .filter(|u| {
                !self
                    .ours_columns
                    .iter()
                    .take(top)
                    .any(|c| c.column == u.column)
            })
            .map(|c| c.compressed_bytes)
            .sum();
        let _ = writeln!(
            out,
            "| the other {} columns | | {:.2} | {:.2} | | |",
            self.ours_columns.len().saturating_sub(top),
            self.per_span(rest),
            self.per_span(up_rest)
        );
        out
    }

    fn variants_markdown(&self) -> String {
        let base = self.variants.iter().find(|v| v.name == "baseline");
        let mut out = String::from(
            "| variant | bytes_on_disk | bytes/span | vs baseline | columns changed (bytes/span, baseline → variant) | INSERT…SELECT engine CPU s | OPTIMIZE FINAL engine CPU s | read all engine CPU s |\n|---|---|---|---|---|---|---|---|\n",
        );
        for v in &self.variants {
            let vs = base.map_or("—".to_string(), |b| {
                format!(
                    "{:+.1} %",
                    100.0
                        * (v.size.bytes_on_disk as f64 / b.size.bytes_on_disk.max(1) as f64 - 1.0)
                )
            });
            let changed: Vec<String> = base
                .map(|b| {
                    v.columns
                        .iter()
                        .filter_map(|c| {
                            let was = b.columns.iter().find(|x| x.column == c.column)?;
                            let diff = c.compressed_bytes.abs_diff(was.compressed_bytes);
                            // Below half a percent of the column, or a hundredth of a
                            // byte a span, is noise of block boundaries.
                            let shown = diff * 200 > was.compressed_bytes
                                && diff * 100 >= self.spans.max(1);
                            shown.then(|| {
                                format!(
                                    "{} {:.2} → {:.2}",
                                    c.column,
                                    self.per_span(was.compressed_bytes),
                                    self.per_span(c.compressed_bytes)
                                )
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let cpu = |costs: &[Cost]| {
                let all: Vec<String> = costs
                    .iter()
                    .map(|c| format!("{:.1}", c.engine_cpu_seconds))
                    .collect();
                format!("{:.1} ({})", VariantRun::median_cpu(costs), all.join(", "))
            };
            let _ = writeln!(
                out,
                "| {} ({}) | {} | {:.2} | {vs} | {} | {} | {} | {} |",
                v.name,
                v.changes,
                thousands(v.size.bytes_on_disk),
                self.per_span(v.size.bytes_on_disk),
                if changed.is_empty() {
                    "—".to_string()
                } else {
                    changed.join("; ")
                },
                cpu(&v.insert),
                cpu(&v.optimize),
                cpu(&v.read),
            );
        }
        out
    }
}

fn add(sum: &mut TableSize, t: &TableSize) {
    sum.parts += t.parts;
    sum.rows += t.rows;
    sum.bytes_on_disk += t.bytes_on_disk;
    sum.data_compressed_bytes += t.data_compressed_bytes;
    sum.data_uncompressed_bytes += t.data_uncompressed_bytes;
    sum.skip_index_bytes += t.skip_index_bytes;
    sum.marks_bytes += t.marks_bytes;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(table: &str, rows: u64, bytes: u64) -> TableSize {
        TableSize {
            database: "db".into(),
            table: table.into(),
            parts: 1,
            rows,
            bytes_on_disk: bytes,
            data_compressed_bytes: bytes - 100,
            data_uncompressed_bytes: bytes * 4,
            skip_index_bytes: 50,
            marks_bytes: 10,
        }
    }

    fn column(name: &str, compressed: u64) -> ColumnSize {
        ColumnSize {
            column: name.into(),
            compressed_bytes: compressed,
            uncompressed_bytes: compressed * 5,
            codec: "CODEC(ZSTD(1))".into(),
        }
    }

    #[test]
    fn tables_mark_ours_only_and_sum_them() {
        let r = DiskReport {
            spans: 1_000,
            ours: vec![
                size("otel_traces", 1_000, 100_000),
                size("otel_traces_red_1m", 10, 2_000),
                size("otel_traces_trace_id_ts", 125, 3_000),
            ],
            upstream: vec![
                size("otel_traces", 1_000, 100_000),
                size("otel_traces_trace_id_ts", 125, 3_000),
            ],
            upstream_tables: vec!["otel_traces".into(), "otel_traces_trace_id_ts".into()],
            ..Default::default()
        };
        let t = r.tables_markdown();
        assert!(
            t.contains(
                "| ours | otel_traces | 1,000 | 1 | 100,000 | 100.00 | 99,900 | 400,000 | 50 |"
            ),
            "{t}"
        );
        assert!(t.contains("| ours | otel_traces_red_1m (ours only) | 10 | 1 | 2,000 | 2.00 |"));
        assert!(t.contains("| ours | **rollups, ours only** | 10 | 1 | 2,000 | 2.00 |"));
        assert!(t.contains("| ours | **all of the above** | 1,135 | 3 | 105,000 | 105.00 |"));
        assert!(t.contains("| upstream | **all of the above** | 1,125 | 2 | 103,000 | 103.00 |"));
        assert!(!t.contains("| upstream | **rollups"));
    }

    #[test]
    fn columns_and_variants_compare_per_span() {
        let mut zstd3 = VariantRun {
            name: "zstd3".into(),
            changes: "SpanAttributes ZSTD(3)".into(),
            size: size("otel_traces", 1_000, 90_000),
            columns: vec![column("SpanAttributes", 40_000), column("TraceId", 17_000)],
            insert: vec![
                Cost {
                    wall_seconds: 1.0,
                    engine_cpu_seconds: 2.0,
                },
                Cost {
                    wall_seconds: 1.0,
                    engine_cpu_seconds: 3.0,
                },
                Cost {
                    wall_seconds: 1.0,
                    engine_cpu_seconds: 2.5,
                },
            ],
            optimize: vec![Cost::default()],
            read: vec![Cost::default()],
        };
        let mut baseline = zstd3.clone();
        baseline.name = "baseline".into();
        baseline.size.bytes_on_disk = 100_000;
        baseline.columns[0].compressed_bytes = 50_000;
        zstd3.columns[1].compressed_bytes = 17_010;
        let r = DiskReport {
            spans: 1_000,
            ours_columns: vec![
                column("SpanAttributes", 50_000),
                column("TraceId", 17_000),
                column("Duration", 3_000),
            ],
            upstream_columns: vec![
                column("SpanAttributes", 50_000),
                column("TraceId", 17_000),
                column("Duration", 3_000),
            ],
            variants: vec![baseline, zstd3],
            ..Default::default()
        };
        let c = r.columns_markdown(2);
        assert!(
            c.contains("| SpanAttributes | CODEC(ZSTD(1)) | 50.00 | 50.00 | 250.00 | 5.0 |"),
            "{c}"
        );
        assert!(
            c.contains("| the other 1 columns | | 3.00 | 3.00 | | |"),
            "{c}"
        );
        let v = r.variants_markdown();
        assert!(
            v.contains("| zstd3 (SpanAttributes ZSTD(3)) | 90,000 | 90.00 | -10.0 % | SpanAttributes 50.00 → 40.00 | 2.5 (2.0, 3.0, 2.5) | 0.0 (0.0) | 0.0 (0.0) |"),
            "{v}"
        );
        assert!(
            v.contains("| baseline (SpanAttributes ZSTD(3)) | 100,000 | 100.00 | +0.0 % | — |"),
            "{v}"
        );
    }
}

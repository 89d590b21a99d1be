//! Inline SVG charts: a time-series line chart with axes and a legend, and
//! sparklines for table cells. No script, no external assets.

use maud::{html, Markup};

use super::params::{self, TimeRange};

/// What the values of a chart are, for axis labels.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// Nanoseconds, shown as a duration.
    Nanos,
    PerSecond,
    Bytes,
    Seconds,
}

impl Unit {
    pub fn format(self, v: f64) -> String {
        match self {
            Unit::Nanos => params::duration(v),
            // Quiet services read better per minute than as 0.00/s.
            Unit::PerSecond if v > 0.0 && v < 0.1 => format!("{}/min", number(v * 60.0)),
            Unit::PerSecond => format!("{}/s", number(v)),
            Unit::Bytes => bytes(v),
            Unit::Seconds => format!("{v:.0} s"),
        }
    }
}

/// `1.2k`, `3.4M`, `0.25`, `12`.
pub fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Colours of series, in order; chosen to be told apart and to print.
pub const PALETTE: [&str; 8] = [
    "#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563",
];

/// A stable colour for a name (services keep theirs on every page).
pub fn color_of(name: &str) -> &'static str {
    let h = name.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    });
    PALETTE[h as usize % PALETTE.len()]
}

/// Points every `step` seconds over the range, 0 where `points` has none (for
/// counts: no requests in a bucket is a rate of 0, not a gap).
pub fn zero_filled(points: &[(u32, f64)], range: &TimeRange, step: u32) -> Vec<(u32, f64)> {
    let step = step.max(1);
    let mut out = Vec::new();
    let mut given = points.iter().peekable();
    let mut t = range.from - range.from % step;
    while t <= range.to {
        let mut v = 0.0;
        while let Some(&&(pt, pv)) = given.peek() {
            if pt > t {
                break;
            }
            if pt == t {
                v += pv;
            }
            given.next();
        }
        out.push((t, v));
        t += step;
    }
    out
}

pub struct Series {
    pub label: String,
    pub color: &'static str,
    /// (Unix seconds, value), in time order.
    pub points: Vec<(u32, f64)>,
}

const W: f64 = 600.0;
const H: f64 = 170.0;
const LEFT: f64 = 64.0;
const BOTTOM: f64 = 20.0;
const TOP: f64 = 8.0;

/// A line chart over the whole range, zero-based.
pub fn line_chart(title: &str, unit: Unit, range: &TimeRange, series: &[Series]) -> Markup {
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let empty = series.iter().all(|s| s.points.is_empty());
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let span = f64::from(range.seconds());
    let x = |t: u32| {
        LEFT + (f64::from(t.saturating_sub(range.from)) / span).min(1.0) * (W - LEFT - 4.0)
    };
    let y = |v: f64| TOP + (1.0 - v / top) * (H - TOP - BOTTOM);
    html! {
        figure.chart {
            figcaption { (title) }
            @if empty {
                p.muted { "no data in this range" }
            } @else {
                svg viewBox={"0 0 " (W) " " (H)} role="img" aria-label=(title) {
                    @for frac in [0.0, 0.5, 1.0] {
                        @let v = top * frac;
                        line.grid x1=(LEFT) x2=(W - 4.0) y1=(y(v)) y2=(y(v)) {}
                        text.axis x=(LEFT - 6.0) y=(y(v) + 4.0) text-anchor="end" { (unit.format(v)) }
                    }
                    text.axis x=(LEFT) y=(H - 4.0) { (params::datetime(i64::from(range.from))[11..16]) }
                    text.axis x=(W - 4.0) y=(H - 4.0) text-anchor="end" { (params::datetime(i64::from(range.to))[11..16]) }
                    @for s in series {
                        @if s.points.len() == 1 {
                            circle cx=(x(s.points[0].0)) cy=(y(s.points[0].1)) r="3" fill=(s.color) {}
                        } @else {
                            polyline fill="none" stroke=(s.color) stroke-width="1.8"
                                points=(polyline(s.points.iter().filter(|p| p.1.is_finite()).map(|p| (x(p.0), y(p.1))))) {}
                        }
                    }
                }
                ul.legend {
                    @for s in series {
                        li { span.swatch style={"background:" (s.color)} {} (s.label) }
                    }
                }
            }
        }
    }
}

/// A small line without axes, for a table cell.
pub fn sparkline(values: &[f64], color: &str) -> Markup {
    const SW: f64 = 110.0;
    const SH: f64 = 24.0;
    let max = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let top = if max > 0.0 { max } else { 1.0 };
    let n = values.len().max(2) - 1;
    let pts = values
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .map(|(i, v)| (i as f64 * SW / n as f64, 1.0 + (1.0 - v / top) * (SH - 2.0)));
    html! {
        svg.spark viewBox={"0 0 " (SW) " " (SH)} width=(SW) height=(SH) {
            @if values.len() > 1 {
                polyline fill="none" stroke=(color) stroke-width="1.5" points=(polyline(pts)) {}
            }
        }
    }
}

fn polyline(points: impl Iterator<Item = (f64, f64)>) -> String {
    points
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_bytes_are_short() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(1234.0), "1.2k");
        assert_eq!(number(2_500_000.0), "2.5M");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
        assert_eq!(Unit::PerSecond.format(0.05), "3.0/min");
        assert_eq!(Unit::PerSecond.format(12.0), "12/s");
    }

    #[test]
    fn counts_are_zero_filled_per_step() {
        let range = TimeRange {
            from: 100,
            to: 400,
            preset: String::new(),
        };
        assert_eq!(
            zero_filled(&[(120, 5.0), (300, 2.0)], &range, 60),
            [
                (60, 0.0),
                (120, 5.0),
                (180, 0.0),
                (240, 0.0),
                (300, 2.0),
                (360, 0.0)
            ]
        );
    }

    #[test]
    fn a_chart_places_points_on_the_range() {
        let range = TimeRange {
            from: 1000,
            to: 1600,
            preset: String::new(),
        };
        let chart = line_chart(
            "rate",
            Unit::PerSecond,
            &range,
            &[Series {
                label: "shop".into(),
                color: PALETTE[0],
                points: vec![(1000, 0.0), (1600, 10.0)],
            }],
        )
        .into_string();
        assert!(
            chart.contains(&format!(
                "points=\"{LEFT:.1},{:.1} {:.1},",
                H - BOTTOM,
                W - 4.0
            )),
            "{chart}"
        );
        assert!(chart.contains("shop"));
        let none = line_chart("rate", Unit::PerSecond, &range, &[]).into_string();
        assert!(none.contains("no data in this range"));
    }
}

//! What a visitor asks for: the time range and the filters in the query string,
//! parsed and checked here (bad values are a 400 with the reason), and the few
//! encodings pages need to write links back.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use super::PageError;

/// The query string of a request, empty values treated as absent.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct Params(pub HashMap<String, String>);

impl Params {
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map(|s| s.trim()).unwrap_or("")
    }

    /// A number of milliseconds (fractions allowed) as nanoseconds; 0 when absent.
    pub fn millis_as_nanos(&self, name: &str, label: &str) -> Result<u64, PageError> {
        let v = self.get(name);
        if v.is_empty() {
            return Ok(0);
        }
        match v.parse::<f64>() {
            Ok(ms) if ms.is_finite() && ms >= 0.0 => Ok((ms * 1e6) as u64),
            _ => Err(PageError::bad_input(format!(
                "{label}: {v:?} is not a number of milliseconds"
            ))),
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), "1" | "on" | "true" | "yes")
    }
}

/// Preset ranges of the picker: (query value, label, seconds).
pub const PRESETS: [(&str, &str, u32); 8] = [
    ("5m", "last 5 minutes", 300),
    ("15m", "last 15 minutes", 900),
    ("1h", "last hour", 3600),
    ("6h", "last 6 hours", 6 * 3600),
    ("24h", "last 24 hours", 86_400),
    ("3d", "last 3 days", 3 * 86_400),
    ("7d", "last 7 days", 7 * 86_400),
    ("30d", "last 30 days", 30 * 86_400),
];

const DEFAULT_PRESET: &str = "1h";

/// A closed time range in Unix seconds, and how the picker spelled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeRange {
    pub from: u32,
    pub to: u32,
    /// The preset (`1h`), or empty for explicit `from`/`to`.
    pub preset: String,
}

impl TimeRange {
    /// `range=<preset>`, or `from`/`to` as `YYYY-MM-DDTHH:MM[:SS]` (UTC, what a
    /// `datetime-local` input sends) or Unix seconds.
    pub fn parse(p: &Params) -> Result<TimeRange, PageError> {
        let now = now_secs();
        let (from, to) = (p.get("from"), p.get("to"));
        if !from.is_empty() || !to.is_empty() {
            let to = if to.is_empty() { now } else { parse_time(to)? };
            let from = if from.is_empty() {
                to.saturating_sub(3600)
            } else {
                parse_time(from)?
            };
            if from >= to {
                return Err(PageError::bad_input(
                    "the time range ends before it starts: pick `from` earlier than `to`",
                ));
            }
            return Ok(TimeRange {
                from,
                to,
                preset: String::new(),
            });
        }
        let name = match p.get("range") {
            "" => DEFAULT_PRESET,
            r => r,
        };
        let (_, _, secs) = PRESETS.iter().find(|(n, _, _)| *n == name).ok_or_else(|| {
            let known: Vec<&str> = PRESETS.iter().map(|(n, _, _)| *n).collect();
            PageError::bad_input(format!(
                "unknown range {name:?}; one of {}",
                known.join(", ")
            ))
        })?;
        Ok(TimeRange {
            from: now.saturating_sub(*secs),
            to: now,
            preset: name.to_string(),
        })
    }

    pub fn seconds(&self) -> u32 {
        self.to.saturating_sub(self.from).max(1)
    }

    /// The query string that reproduces this range (`range=1h` or `from=…&to=…`).
    pub fn query(&self) -> String {
        if self.preset.is_empty() {
            format!("from={}&to={}", self.from, self.to)
        } else {
            format!("range={}", self.preset)
        }
    }

    /// A chart bucket: at least the rollup's grain, about 60 points per chart.
    pub fn step(&self, grain: u32) -> u32 {
        const NICE: [u32; 12] = [
            10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21_600, 86_400,
        ];
        let want = self.seconds() / 60;
        let nice = NICE.iter().copied().find(|s| *s >= want).unwrap_or(86_400);
        nice.max(grain)
    }
}

pub fn now_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

fn parse_time(v: &str) -> Result<u32, PageError> {
    if let Ok(secs) = v.parse::<u32>() {
        return Ok(secs);
    }
    parse_datetime(v).ok_or_else(|| {
        PageError::bad_input(format!(
            "{v:?} is not a time: use YYYY-MM-DDTHH:MM (UTC) or Unix seconds"
        ))
    })
}

/// `YYYY-MM-DDTHH:MM[:SS]` (or with a space) in UTC.
fn parse_datetime(v: &str) -> Option<u32> {
    let v = v.trim_end_matches('Z');
    let (date, time) = v.split_once(['T', ' '])?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (h, min) = (t.next()??, t.next()??);
    let s = t.next().flatten().unwrap_or(0);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || s > 60 {
        return None;
    }
    let secs = days_from_civil(y, m, day) * 86_400 + h * 3600 + min * 60 + s;
    u32::try_from(secs).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// `2026-12-07 20:28:01` (UTC) for Unix seconds.
pub fn datetime(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// `2026-12-07T20:28` for a `datetime-local` input.
pub fn datetime_local(secs: u32) -> String {
    datetime(i64::from(secs))[..16].replacen(' ', "T", 1)
}

/// `20:28:01.123` for Unix nanoseconds (the date when it is not today's).
pub fn timestamp(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let millis = nanos.rem_euclid(1_000_000_000) / 1_000_000;
    let full = datetime(secs);
    let today = datetime(i64::from(now_secs()));
    if full[..10] == today[..10] {
        format!("{}.{millis:03}", &full[11..])
    } else {
        format!("{full}.{millis:03}")
    }
}

/// A duration in nanoseconds, short: `870 µs`, `12.3 ms`, `4.56 s`.
pub fn duration(nanos: f64) -> String {
    if !nanos.is_finite() {
        return "–".into();
    }
    let ms = nanos / 1e6;
    if ms < 1.0 {
        format!("{:.0} µs", nanos / 1e3)
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1e3)
    }
}

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn presets_and_explicit_ranges() {
        let r = TimeRange::parse(&params(&[])).unwrap();
        assert_eq!((r.seconds(), r.query()), (3600, "range=1h".to_string()));
        let r = TimeRange::parse(&params(&[("range", "7d")])).unwrap();
        assert_eq!(r.seconds(), 7 * 86_400);
        let r = TimeRange::parse(&params(&[
            ("from", "2026-12-07T20:00"),
            ("to", "2026-12-07T21:30:15"),
        ]))
        .unwrap();
        assert_eq!(datetime(i64::from(r.from)), "2026-12-07 20:00:00");
        assert_eq!(r.seconds(), 5415);
        assert_eq!(datetime_local(r.from), "2026-12-07T20:00");
        assert!(TimeRange::parse(&params(&[("range", "2w")])).is_err());
        assert!(TimeRange::parse(&params(&[("from", "yesterday")])).is_err());
        assert!(TimeRange::parse(&params(&[("from", "200"), ("to", "100")])).is_err());
    }

    #[test]
    fn dates_round_trip() {
        for secs in [0, 951_782_400, 1_796_676_481, 4_102_444_799] {
            let shown = datetime(secs);
            assert_eq!(parse_datetime(&shown).map(i64::from), Some(secs), "{shown}");
        }
    }

    #[test]
    fn chart_steps_are_nice_and_at_least_the_grain() {
        let r = |secs| TimeRange {
            from: 0,
            to: secs,
            preset: String::new(),
        };
        assert_eq!(r(3600).step(60), 60);
        assert_eq!(r(86_400).step(60), 1800);
        assert_eq!(r(7 * 86_400).step(3600), 21_600);
        assert_eq!(r(300).step(1), 10);
    }

    #[test]
    fn encodes_and_formats() {
        assert_eq!(enc("a b/'\"é"), "a%20b%2F%27%22%C3%A9");
        assert_eq!(duration(870_000.0), "870 µs");
        assert_eq!(duration(12_340_000.0), "12.3 ms");
        assert_eq!(duration(4_560_000_000.0), "4.56 s");
        let p = params(&[("min", "1.5"), ("bad", "-3")]);
        assert_eq!(p.millis_as_nanos("min", "min").unwrap(), 1_500_000);
        assert!(p.millis_as_nanos("bad", "bad").is_err());
    }
}

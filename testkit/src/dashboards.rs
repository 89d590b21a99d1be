//! Runs Grafana dashboards' SQL against ClickHouse, the way Grafana and its
//! ClickHouse data source would, so tests can check that every panel works.
//!
//! What is reproduced: the data source's macros (`$__timeFilter`, `$__timeFilter_ms`,
//! `$__dateFilter`, `$__dateTimeFilter`/`$__dt`, `$__fromTime`, `$__toTime` and their
//! `_ms` forms, `$__timeInterval`, `$__timeInterval_ms`, `$__interval_s`,
//! `$__conditionalAll`), Grafana's global variables (`$__interval`, `$__interval_ms`,
//! `$__range`, `$__range_s`, `$__range_ms`, `$__from`, `$__to`) and template
//! variables (`$var`, `${var}`, `${var:format}`, `[[var]]`; query, custom, textbox
//! and constant variables; multi-value and All). Query variables are run against
//! the same ClickHouse, in dashboard order, so they see the same data.
//!
//! Anything left that looks like a macro or variable is an error: a typo fails the
//! test instead of reaching ClickHouse as text.
//!
//! Typical use after a load run:
//! ```no_run
//! # async fn f(client: clickhouse::Client) {
//! use testkit::dashboards::{load_dir, run_dashboard, RunOptions, TimeRange};
//! let range = TimeRange::last(std::time::Duration::from_secs(3600));
//! for d in load_dir(&testkit::dashboards::workspace_dashboards()).unwrap() {
//!     let run = run_dashboard(&client, &d, &RunOptions::new(range)).await.unwrap();
//!     assert!(run.problems(&[]).is_empty(), "{:#?}", run.problems(&[]));
//! }
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DashboardError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("variable {name}: {reason}")]
    Variable { name: String, reason: String },
    #[error("interpolating {context}: {reason}")]
    Interpolate { context: String, reason: String },
}

/// `<workspace>/dashboards/json`, where the provisioned dashboards live.
pub fn workspace_dashboards() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(manifest)
        .join("dashboards")
        .join("json")
}

#[derive(Debug, Clone)]
pub struct Dashboard {
    pub uid: String,
    pub title: String,
    pub variables: Vec<Variable>,
    pub panels: Vec<Panel>,
}

#[derive(Debug, Clone)]
pub struct Panel {
    pub id: u64,
    pub title: String,
    /// `timeseries`, `table`, `logs`, `traces`, …
    pub kind: String,
    /// The title of the row the panel sits in ("" above the first row).
    pub row: String,
    /// The panel's minimum interval (`interval`, e.g. `1m`).
    pub min_interval: Option<Duration>,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub ref_id: String,
    pub raw_sql: String,
    /// The data source's format: 0 time series, 1 table, 2 logs, 3 traces.
    pub format: i64,
}

#[derive(Debug, Clone)]
pub enum VariableKind {
    /// Values are the first column of the query's rows.
    Query(String),
    /// Fixed options.
    Custom(Vec<String>),
    /// Free text; the current value is the default.
    TextBox,
    Constant,
}

#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    pub kind: VariableKind,
    pub multi: bool,
    pub include_all: bool,
    /// Replaces "All" when set; else All stands for every option.
    pub all_value: Option<String>,
    /// The saved selection (`$__all` for All).
    pub current: Vec<String>,
}

/// What a variable holds while a dashboard runs.
#[derive(Debug, Clone, PartialEq)]
pub enum VarValue {
    /// A single-valued variable (textbox, constant, non-multi).
    Single(String),
    /// Selected values of a multi-value variable.
    Multi(Vec<String>),
    /// "All": every option (or the variable's custom all value).
    All {
        options: Vec<String>,
        all_value: Option<String>,
    },
}

/// The dashboard's time range, in Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl TimeRange {
    /// `now - span` to `now`, as Grafana's "Last …" ranges.
    pub fn last(span: Duration) -> TimeRange {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        TimeRange {
            from_ms: now - span.as_millis() as i64,
            to_ms: now,
        }
    }

    pub fn span(&self) -> Duration {
        Duration::from_millis((self.to_ms - self.from_ms).max(0) as u64)
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub range: TimeRange,
    /// Grafana derives `$__interval` from the range and the panel's width in
    /// points; this stands for the width.
    pub max_data_points: u32,
    /// Selections that replace the saved ones (`$__all` selects All).
    pub variables: BTreeMap<String, Vec<String>>,
}

impl RunOptions {
    pub fn new(range: TimeRange) -> RunOptions {
        RunOptions {
            range,
            max_data_points: 300,
            variables: BTreeMap::new(),
        }
    }

    /// Selects `values` for variable `name`.
    pub fn with_variable(mut self, name: &str, values: &[&str]) -> RunOptions {
        self.variables.insert(
            name.to_string(),
            values.iter().map(|v| v.to_string()).collect(),
        );
        self
    }
}

/// One query's result: column names and types, rows as JSON values.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub columns: Vec<(String, String)>,
    pub rows: Vec<Vec<Value>>,
    /// As measured by the client (request to last byte).
    pub elapsed: Duration,
    /// As ClickHouse reports it (`statistics.elapsed`), when it does.
    pub server_elapsed: Option<Duration>,
}

impl QueryResult {
    /// The values of column `name`.
    pub fn column(&self, name: &str) -> Option<Vec<&Value>> {
        let i = self.columns.iter().position(|(n, _)| n == name)?;
        Some(self.rows.iter().map(|r| &r[i]).collect())
    }
}

#[derive(Debug, Clone)]
pub struct PanelRun {
    pub panel: String,
    pub row: String,
    pub kind: String,
    pub ref_id: String,
    /// The SQL as sent, macros and variables substituted.
    pub sql: String,
    pub result: Result<QueryResult, String>,
}

#[derive(Debug, Clone)]
pub struct DashboardRun {
    pub dashboard: String,
    pub variables: BTreeMap<String, VarValue>,
    pub panels: Vec<PanelRun>,
}

impl DashboardRun {
    /// Failed queries, and queries without rows except in panels titled in
    /// `may_be_empty`.
    pub fn problems(&self, may_be_empty: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.panels {
            match &p.result {
                Err(e) => out.push(format!(
                    "{} / {} [{}]: {e}\n  SQL: {}",
                    self.dashboard, p.panel, p.ref_id, p.sql
                )),
                Ok(r) if r.rows.is_empty() && !may_be_empty.contains(&p.panel.as_str()) => out
                    .push(format!(
                        "{} / {} [{}]: no rows\n  SQL: {}",
                        self.dashboard, p.panel, p.ref_id, p.sql
                    )),
                Ok(_) => {}
            }
        }
        out
    }

    pub fn panel(&self, title: &str) -> Option<&PanelRun> {
        self.panels.iter().find(|p| p.panel == title)
    }
}

/// Every `*.json` dashboard in `dir`, sorted by file name.
pub fn load_dir(dir: &Path) -> Result<Vec<Dashboard>, DashboardError> {
    let read_err = |source| DashboardError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load(p)).collect()
}

pub fn load(path: &Path) -> Result<Dashboard, DashboardError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DashboardError::Read {
        path: shown.clone(),
        source,
    })?;
    let json: Value = serde_json::from_str(&text).map_err(|source| DashboardError::Json {
        path: shown.clone(),
        source,
    })?;
    parse(&json).map_err(|e| DashboardError::Invalid(format!("{shown}: {e}")))
}

/// A dashboard from its JSON model.
pub fn parse(json: &Value) -> Result<Dashboard, String> {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let mut variables = Vec::new();
    for v in json
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        variables.push(parse_variable(v)?);
    }
    let mut panels = Vec::new();
    let mut row = String::new();
    for p in json
        .get("panels")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if p.get("type").and_then(Value::as_str) == Some("row") {
            row = text(p, "title").unwrap_or_default();
            // A collapsed row keeps its panels inside it.
            for inner in p
                .get("panels")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                panels.push(parse_panel(inner, &row)?);
            }
        } else {
            panels.push(parse_panel(p, &row)?);
        }
    }
    Ok(Dashboard {
        uid: text(json, "uid").unwrap_or_default(),
        title: text(json, "title").ok_or("dashboard without a title")?,
        variables,
        panels,
    })
}

fn parse_panel(p: &Value, row: &str) -> Result<Panel, String> {
    let title = p
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let min_interval = match p.get("interval").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Some(
            parse_grafana_duration(s.trim_start_matches('>'))
                .ok_or_else(|| format!("panel {title}: bad interval {s:?}"))?,
        ),
        _ => None,
    };
    let mut targets = Vec::new();
    for t in p
        .get("targets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if t.get("hide").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let raw_sql = t
            .get("rawSql")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("panel {title}: a target without rawSql"))?;
        targets.push(Target {
            ref_id: t
                .get("refId")
                .and_then(Value::as_str)
                .unwrap_or("A")
                .to_string(),
            raw_sql: raw_sql.to_string(),
            format: t.get("format").and_then(Value::as_i64).unwrap_or(1),
        });
    }
    Ok(Panel {
        id: p.get("id").and_then(Value::as_u64).unwrap_or(0),
        title,
        kind: p
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        row: row.to_string(),
        min_interval,
        targets,
    })
}

fn parse_variable(v: &Value) -> Result<Variable, String> {
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or("a variable without a name")?
        .to_string();
    let string_list = |x: &Value| -> Vec<String> {
        match x {
            Value::Array(a) => a
                .iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect(),
            Value::String(s) => vec![s.clone()],
            _ => Vec::new(),
        }
    };
    let current = v
        .pointer("/current/value")
        .map(string_list)
        .unwrap_or_default();
    let kind = match v.get("type").and_then(Value::as_str) {
        Some("query") => {
            let sql = match v.get("query") {
                Some(Value::String(s)) => s.clone(),
                Some(q) => q
                    .get("rawSql")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("variable {name}: query without rawSql"))?
                    .to_string(),
                None => return Err(format!("variable {name}: no query")),
            };
            VariableKind::Query(sql)
        }
        Some("custom") => {
            let options: Vec<String> = match v.get("options").and_then(Value::as_array) {
                Some(o) if !o.is_empty() => o
                    .iter()
                    .filter_map(|o| o.get("value").and_then(Value::as_str))
                    .filter(|s| *s != "$__all")
                    .map(String::from)
                    .collect(),
                _ => v
                    .get("query")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .split(',')
                    .map(|s| s.trim())
                    .filter(|s| !s.is_empty())
                    .map(|s| match s.split_once(" : ") {
                        Some((_, value)) => value.trim().to_string(),
                        None => s.to_string(),
                    })
                    .collect(),
            };
            VariableKind::Custom(options)
        }
        Some("textbox") => VariableKind::TextBox,
        Some("constant") => VariableKind::Constant,
        other => return Err(format!("variable {name}: unsupported type {other:?}")),
    };
    let current = match (&kind, current.is_empty()) {
        (VariableKind::TextBox | VariableKind::Constant, true) => {
            vec![v
                .get("query")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()]
        }
        _ => current,
    };
    Ok(Variable {
        multi: v.get("multi").and_then(Value::as_bool).unwrap_or(false),
        include_all: v
            .get("includeAll")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        all_value: v
            .get("allValue")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from),
        name,
        kind,
        current,
    })
}

/// `30s`, `1m`, `2h`, `1d`, `500ms`, `1w`.
pub fn parse_grafana_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        "y" => 365 * 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(n * ms))
}

/// Grafana's text form of an interval: `20s`, `1m`, `1h`, `500ms`.
fn format_grafana_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Grafana-like interval: range / points rounded up to a round step, at least
/// the panel's minimum.
pub fn panel_interval(range: TimeRange, max_data_points: u32, min: Option<Duration>) -> Duration {
    const STEPS_S: [u64; 22] = [
        1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 10800, 21600,
        43200, 86400, 604800, 2592000,
    ];
    let raw = range.span().as_secs_f64() / f64::from(max_data_points.max(1));
    let step = STEPS_S
        .iter()
        .copied()
        .find(|s| *s as f64 >= raw)
        .unwrap_or(STEPS_S[STEPS_S.len() - 1]);
    Duration::from_secs(step).max(min.unwrap_or_default())
}

/// Everything a query's interpolation needs.
#[derive(Debug, Clone)]
pub struct QueryContext<'a> {
    pub range: TimeRange,
    pub interval: Duration,
    pub variables: &'a BTreeMap<String, VarValue>,
}

/// Substitutes variables, then the data source's macros, as Grafana and the
/// ClickHouse data source do (`$__conditionalAll` first).
pub fn interpolate(sql: &str, ctx: &QueryContext) -> Result<String, String> {
    let sql = conditional_all(sql, ctx.variables)?;
    let sql = substitute_variables(&sql, ctx)?;
    let sql = expand_macros(&sql, ctx)?;
    if let Some(i) = sql.find("$__") {
        return Err(format!(
            "unknown macro at {:?}",
            &sql[i..sql.len().min(i + 30)]
        ));
    }
    Ok(sql)
}

/// `$__conditionalAll(condition, $var)`: `1=1` when the variable is All or empty.
fn conditional_all(sql: &str, vars: &BTreeMap<String, VarValue>) -> Result<String, String> {
    const MACRO: &str = "$__conditionalAll(";
    let mut out = sql.to_string();
    while let Some(start) = out.rfind(MACRO) {
        let args_start = start + MACRO.len();
        let (args, end) = macro_args(&out, args_start)
            .ok_or_else(|| format!("unbalanced {MACRO}…) at {start}"))?;
        let [condition, var] = args.as_slice() else {
            return Err(format!("{MACRO}…) takes 2 arguments, got {}", args.len()));
        };
        let name = var
            .trim()
            .trim_start_matches('$')
            .trim_start_matches('{')
            .trim_end_matches('}');
        let name = name.split(':').next().unwrap_or(name);
        let value = vars
            .get(name)
            .ok_or_else(|| format!("{MACRO}…) names unknown variable {name}"))?;
        let unconditional = match value {
            VarValue::All { .. } => true,
            VarValue::Single(s) => s.is_empty(),
            VarValue::Multi(v) => v.is_empty() || (v.len() == 1 && v[0].is_empty()),
        };
        let phrase = if unconditional {
            "1=1".to_string()
        } else {
            condition.to_string()
        };
        out.replace_range(start..end, &phrase);
    }
    Ok(out)
}

/// Splits `a, f(b, c))…` at top-level commas up to the closing parenthesis;
/// returns the arguments and the index just past it.
fn macro_args(s: &str, from: usize) -> Option<(Vec<String>, usize)> {
    let mut depth = 0usize;
    let mut args = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for (i, c) in s[from..].char_indices() {
        if let Some(q) = quote {
            current.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' | '`' => {
                quote = Some(c);
                current.push(c);
            }
            '(' => {
                depth += 1;
                current.push(c);
            }
            ')' if depth == 0 => {
                args.push(current.trim().to_string());
                return Some((args, from + i + 1));
            }
            ')' => {
                depth -= 1;
                current.push(c);
            }
            ',' if depth == 0 => {
                args.push(current.trim().to_string());
                current.clear();
            }
            _ => current.push(c),
        }
    }
    None
}

/// The globals Grafana provides for a query.
fn global_value(name: &str, ctx: &QueryContext) -> Option<String> {
    let span = ctx.range.span();
    Some(match name {
        "__interval" => format_grafana_duration(ctx.interval),
        "__interval_ms" => ctx.interval.as_millis().to_string(),
        "__range" => format_grafana_duration(span),
        "__range_s" => span.as_secs().to_string(),
        "__range_ms" => span.as_millis().to_string(),
        "__from" => ctx.range.from_ms.to_string(),
        "__to" => ctx.range.to_ms.to_string(),
        _ => return None,
    })
}

fn substitute_variables(sql: &str, ctx: &QueryContext) -> Result<String, String> {
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < sql.len() {
        let rest = &sql[i..];
        let (name, format, len) = if let Some(r) = rest.strip_prefix("${") {
            let close = r.find('}').ok_or_else(|| format!("unclosed ${{ at {i}"))?;
            let inner = &r[..close];
            let (name, format) = match inner.split_once(':') {
                Some((n, f)) => (n, Some(f)),
                None => (inner, None),
            };
            (name.to_string(), format.map(String::from), close + 3)
        } else if let Some(r) = rest.strip_prefix("[[") {
            let close = r.find("]]").ok_or_else(|| format!("unclosed [[ at {i}"))?;
            let inner = &r[..close];
            let (name, format) = match inner.split_once(':') {
                Some((n, f)) => (n, Some(f)),
                None => (inner, None),
            };
            (name.to_string(), format.map(String::from), close + 4)
        } else if rest.starts_with('$')
            && rest[1..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        {
            let name: String = rest[1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let len = name.len() + 1;
            (name, None, len)
        } else {
            let c = rest.chars().next().expect("not at the end");
            out.push(c);
            i += c.len_utf8();
            continue;
        };
        if name.starts_with("__") {
            match global_value(&name, ctx) {
                Some(v) => out.push_str(&v),
                // A data source macro (`$__timeFilter(`…): left for expand_macros.
                None => out.push_str(&sql[i..i + len]),
            }
            i += len;
            continue;
        }
        let value = ctx
            .variables
            .get(&name)
            .ok_or_else(|| format!("unknown variable ${name}"))?;
        out.push_str(&format_value(value, format.as_deref())?);
        i += len;
    }
    Ok(out)
}

/// Grafana's variable formats; without one, the ClickHouse data source's own
/// (multi-value: `'a','b'`; single: as is).
fn format_value(value: &VarValue, format: Option<&str>) -> Result<String, String> {
    let (values, is_multi): (Vec<String>, bool) = match value {
        VarValue::Single(s) => (vec![s.clone()], false),
        VarValue::Multi(v) => (v.clone(), true),
        // Grafana formats a custom all value only as text or percent-encoded.
        VarValue::All {
            all_value: Some(a), ..
        } if format == Some("percentencode") => return Ok(percent_encode_strict(a)),
        VarValue::All {
            all_value: Some(a), ..
        } => return Ok(a.clone()),
        VarValue::All { options, .. } => (options.clone(), true),
    };
    let quote_each = |q: &dyn Fn(&str) -> String| values.iter().map(|v| q(v)).collect::<Vec<_>>();
    Ok(match format {
        None => {
            if is_multi {
                format!("'{}'", values.join("','"))
            } else {
                values.join(",")
            }
        }
        Some("raw") | Some("text") => values.join(","),
        Some("csv") => values.join(","),
        Some("pipe") => values.join("|"),
        Some("singlequote") => quote_each(&|v| format!("'{}'", v.replace('\'', "\\'"))).join(","),
        Some("doublequote") => quote_each(&|v| format!("\"{}\"", v.replace('"', "\\\""))).join(","),
        Some("sqlstring") => quote_each(&|v| format!("'{}'", v.replace('\'', "''"))).join(","),
        Some("json") => serde_json::to_string(&values).map_err(|e| e.to_string())?,
        // Multi-value: the values joined in braces, then encoded as one string.
        Some("percentencode") if is_multi => {
            percent_encode_strict(&format!("{{{}}}", values.join(",")))
        }
        Some("percentencode") => percent_encode_strict(&values.join(",")),
        Some(other) => return Err(format!("variable format {other:?} is not supported")),
    })
}

/// Grafana's `encodeURIComponentStrict`: UTF-8 bytes percent-encoded except
/// `A–Z a–z 0–9 - _ . ~`. The result has no quote, backslash or space, so inside
/// `decodeURLComponent('…')` any value stays one string literal.
pub fn percent_encode_strict(s: &str) -> String {
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

fn expand_macros(sql: &str, ctx: &QueryContext) -> Result<String, String> {
    let from_s = ctx.range.from_ms.div_euclid(1000);
    let to_s = ctx.range.to_ms.div_euclid(1000);
    let date = |ms: i64| {
        let (y, m, d) = civil_date(ms.div_euclid(86_400_000));
        format!("toDate('{y:04}-{m:02}-{d:02}')")
    };
    let secs = ctx.interval.as_secs().max(1);
    let millis = ctx.interval.as_millis().max(1);
    let mut out = sql.to_string();
    // Longest names first: `$__timeFilter_ms` before `$__timeFilter`.
    let with_args: [(&str, usize); 6] = [
        ("$__timeFilter_ms(", 1),
        ("$__timeFilter(", 1),
        ("$__timeInterval_ms(", 1),
        ("$__timeInterval(", 1),
        ("$__dateTimeFilter(", 2),
        ("$__dateFilter(", 1),
    ];
    let mut with_args = with_args.to_vec();
    with_args.push(("$__dt(", 2));
    for (name, arity) in with_args {
        while let Some(start) = out.find(name) {
            let (args, end) = macro_args(&out, start + name.len())
                .ok_or_else(|| format!("unbalanced {name}…)"))?;
            if args.len() != arity {
                return Err(format!(
                    "{name}…) takes {arity} argument(s), got {}",
                    args.len()
                ));
            }
            let c = &args[0];
            let text = match name {
                "$__timeFilter(" => {
                    format!("{c} >= toDateTime({from_s}) AND {c} <= toDateTime({to_s})")
                }
                "$__timeFilter_ms(" => format!(
                    "{c} >= fromUnixTimestamp64Milli({}) AND {c} <= fromUnixTimestamp64Milli({})",
                    ctx.range.from_ms, ctx.range.to_ms
                ),
                "$__timeInterval(" => {
                    format!("toStartOfInterval(toDateTime({c}), INTERVAL {secs} second)")
                }
                "$__timeInterval_ms(" => format!(
                    "toStartOfInterval(toDateTime64({c}, 3), INTERVAL {millis} millisecond)"
                ),
                "$__dateFilter(" => format!(
                    "{c} >= {} AND {c} <= {}",
                    date(ctx.range.from_ms),
                    date(ctx.range.to_ms)
                ),
                _ => {
                    let t = &args[1];
                    format!(
                        "({c} >= {} AND {c} <= {}) AND ({t} >= toDateTime({from_s}) AND {t} <= toDateTime({to_s}))",
                        date(ctx.range.from_ms),
                        date(ctx.range.to_ms)
                    )
                }
            };
            out.replace_range(start..end, &text);
        }
    }
    for (name, text) in [
        (
            "$__fromTime_ms",
            format!("fromUnixTimestamp64Milli({})", ctx.range.from_ms),
        ),
        (
            "$__toTime_ms",
            format!("fromUnixTimestamp64Milli({})", ctx.range.to_ms),
        ),
        ("$__fromTime", format!("toDateTime({from_s})")),
        ("$__toTime", format!("toDateTime({to_s})")),
        ("$__interval_s", secs.to_string()),
    ] {
        out = out.replace(name, &text);
    }
    Ok(out)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (UTC, as the
/// data source formats dates).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Runs one SQL statement and reads its result (JSONCompact).
pub async fn run_sql(client: &clickhouse::Client, sql: &str) -> Result<QueryResult, String> {
    let started = Instant::now();
    // The crate treats `?` as a bind placeholder; dashboards' SQL has none, and a
    // literal one would be sent as an error rather than silently mangled.
    let bytes = client
        .query(sql)
        .fetch_bytes("JSONCompact")
        .map_err(|e| e.to_string())?
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    let json: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the result is not JSONCompact: {e}"))?;
    let columns = json
        .get("meta")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .map(|c| {
                    (
                        c.get("name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        c.get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let rows = json
        .get("data")
        .and_then(Value::as_array)
        .map(|rows| {
            rows.iter()
                .map(|r| r.as_array().cloned().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    let server_elapsed = json
        .pointer("/statistics/elapsed")
        .and_then(Value::as_f64)
        .map(Duration::from_secs_f64);
    Ok(QueryResult {
        columns,
        rows,
        elapsed,
        server_elapsed,
    })
}

/// Resolves the dashboard's variables in order, running query variables.
pub async fn resolve_variables(
    client: &clickhouse::Client,
    dashboard: &Dashboard,
    opts: &RunOptions,
) -> Result<BTreeMap<String, VarValue>, DashboardError> {
    let mut values = BTreeMap::new();
    let interval = panel_interval(opts.range, opts.max_data_points, None);
    for v in &dashboard.variables {
        let err = |reason: String| DashboardError::Variable {
            name: v.name.clone(),
            reason,
        };
        let options: Vec<String> = match &v.kind {
            VariableKind::Query(sql) => {
                let ctx = QueryContext {
                    range: opts.range,
                    interval,
                    variables: &values,
                };
                let sql = interpolate(sql, &ctx).map_err(&err)?;
                let result = run_sql(client, &sql)
                    .await
                    .map_err(|e| err(format!("{e}\n  SQL: {sql}")))?;
                result
                    .rows
                    .iter()
                    .filter_map(|r| r.first())
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect()
            }
            VariableKind::Custom(o) => o.clone(),
            VariableKind::TextBox | VariableKind::Constant => Vec::new(),
        };
        let selected = opts
            .variables
            .get(&v.name)
            .cloned()
            .unwrap_or_else(|| v.current.clone());
        let value = match &v.kind {
            VariableKind::TextBox | VariableKind::Constant => {
                VarValue::Single(selected.first().cloned().unwrap_or_default())
            }
            _ if v.include_all
                && (selected.is_empty() || selected.iter().any(|s| s == "$__all")) =>
            {
                VarValue::All {
                    options,
                    all_value: v.all_value.clone(),
                }
            }
            _ => {
                let selected = if selected.is_empty() {
                    options.first().cloned().into_iter().collect()
                } else {
                    selected
                };
                if v.multi {
                    VarValue::Multi(selected)
                } else {
                    VarValue::Single(selected.first().cloned().unwrap_or_default())
                }
            }
        };
        values.insert(v.name.clone(), value);
    }
    Ok(values)
}

/// Runs every query of every panel (collapsed rows included), each with its
/// panel's interval.
pub async fn run_dashboard(
    client: &clickhouse::Client,
    dashboard: &Dashboard,
    opts: &RunOptions,
) -> Result<DashboardRun, DashboardError> {
    let variables = resolve_variables(client, dashboard, opts).await?;
    let mut panels = Vec::new();
    for p in &dashboard.panels {
        for t in &p.targets {
            let ctx = QueryContext {
                range: opts.range,
                interval: panel_interval(opts.range, opts.max_data_points, p.min_interval),
                variables: &variables,
            };
            let (sql, result) = match interpolate(&t.raw_sql, &ctx) {
                Ok(sql) => {
                    let r = run_sql(client, &sql).await;
                    (sql, r)
                }
                Err(e) => (t.raw_sql.clone(), Err(e)),
            };
            panels.push(PanelRun {
                panel: p.title.clone(),
                row: p.row.clone(),
                kind: p.kind.clone(),
                ref_id: t.ref_id.clone(),
                sql,
                result,
            });
        }
    }
    Ok(DashboardRun {
        dashboard: dashboard.title.clone(),
        variables,
        panels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_vars() -> BTreeMap<String, VarValue> {
        let mut v = BTreeMap::new();
        v.insert(
            "service".into(),
            VarValue::Multi(vec!["shop".into(), "o'brien".into()]),
        );
        v.insert(
            "route".into(),
            VarValue::All {
                options: vec!["/a".into(), "/b".into()],
                all_value: None,
            },
        );
        v.insert("search".into(), VarValue::Single("it's".into()));
        v.insert("empty".into(), VarValue::Single(String::new()));
        v
    }

    fn ctx(vars: &BTreeMap<String, VarValue>) -> QueryContext<'_> {
        QueryContext {
            range: TimeRange {
                from_ms: 1_700_000_000_123,
                to_ms: 1_700_003_600_456,
            },
            interval: Duration::from_secs(60),
            variables: vars,
        }
    }

    #[test]
    fn data_source_macros_expand_like_the_plugin() {
        let vars = ctx_vars();
        let sql = interpolate(
            "SELECT $__timeInterval(T) t, count() / $__interval_s FROM x WHERE $__timeFilter(T) AND $__timeFilter_ms(T) AND T > $__fromTime AND T < $__toTime_ms AND $__dateFilter(D)",
            &ctx(&vars),
        )
        .unwrap();
        assert_eq!(
            sql,
            "SELECT toStartOfInterval(toDateTime(T), INTERVAL 60 second) t, count() / 60 FROM x \
             WHERE T >= toDateTime(1700000000) AND T <= toDateTime(1700003600) \
             AND T >= fromUnixTimestamp64Milli(1700000000123) AND T <= fromUnixTimestamp64Milli(1700003600456) \
             AND T > toDateTime(1700000000) AND T < fromUnixTimestamp64Milli(1700003600456) \
             AND D >= toDate('2023-11-14') AND D <= toDate('2023-11-14')"
        );
    }

    #[test]
    fn grafana_globals_and_variable_formats() {
        let vars = ctx_vars();
        let sql = interpolate(
            "$__interval $__interval_ms $__range_s $__from | ${service} | ${service:singlequote} | ${service:sqlstring} | $route | ${search:sqlstring} | [[search]] | ${route:csv}",
            &ctx(&vars),
        )
        .unwrap();
        assert_eq!(
            sql,
            "1m 60000 3600 1700000000123 | 'shop','o'brien' | 'shop','o\\'brien' | 'shop','o''brien' | '/a','/b' | 'it''s' | it's | /a,/b"
        );
    }

    #[test]
    fn percentencode_is_grafanas_strict_uri_encoding() {
        let vars = ctx_vars();
        assert_eq!(
            interpolate(
                "${service:percentencode} ${search:percentencode}",
                &ctx(&vars)
            )
            .unwrap(),
            "%7Bshop%2Co%27brien%7D it%27s"
        );
        // Grafana's own test case (scenes' formatRegistry): `foo()bar BAZ`, `test2`.
        assert_eq!(
            percent_encode_strict("{foo()bar BAZ,test2}"),
            "%7Bfoo%28%29bar%20BAZ%2Ctest2%7D"
        );
        assert_eq!(
            percent_encode_strict("a-b_c.d~é\\'"),
            "a-b_c.d~%C3%A9%5C%27"
        );
    }

    #[test]
    fn conditional_all_drops_the_condition_for_all_and_empty() {
        let vars = ctx_vars();
        let c = ctx(&vars);
        assert_eq!(
            interpolate(
                "a AND $__conditionalAll(Route IN (${route:sqlstring}), $route) AND b",
                &c
            )
            .unwrap(),
            "a AND 1=1 AND b"
        );
        assert_eq!(
            interpolate(
                "$__conditionalAll(S IN (${service:sqlstring}), ${service})",
                &c
            )
            .unwrap(),
            "S IN ('shop','o''brien')"
        );
        assert_eq!(
            interpolate("$__conditionalAll(x = ${empty:sqlstring}, $empty)", &c).unwrap(),
            "1=1"
        );
    }

    #[test]
    fn unknown_variables_and_macros_are_errors() {
        let vars = ctx_vars();
        assert!(interpolate("SELECT $nope", &ctx(&vars))
            .unwrap_err()
            .contains("unknown variable $nope"));
        assert!(interpolate("SELECT $__timeFiltr(T)", &ctx(&vars))
            .unwrap_err()
            .contains("unknown macro"));
        assert!(interpolate("${service:percentcode}", &ctx(&vars)).is_err());
    }

    #[test]
    fn intervals_round_up_and_respect_the_panel_minimum() {
        let hour = TimeRange {
            from_ms: 0,
            to_ms: 3_600_000,
        };
        assert_eq!(panel_interval(hour, 300, None), Duration::from_secs(15));
        assert_eq!(
            panel_interval(hour, 300, Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        assert_eq!(format_grafana_duration(Duration::from_secs(90)), "90s");
        assert_eq!(parse_grafana_duration("5m"), Some(Duration::from_secs(300)));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(19_675), (2023, 11, 14));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(-1), (1969, 12, 31));
    }

    #[test]
    fn parses_panels_rows_and_variables() {
        let json: Value = serde_json::json!({
            "title": "D", "uid": "d",
            "templating": {"list": [
                {"name": "service", "type": "query", "multi": true, "includeAll": true,
                 "query": {"rawSql": "SELECT 1", "refId": "v"}, "current": {"value": ["$__all"]}},
                {"name": "errors", "type": "custom", "query": "no : 0, yes : 1", "current": {"value": "0"}},
                {"name": "min_ms", "type": "textbox", "query": "0"}
            ]},
            "panels": [
                {"type": "timeseries", "title": "A", "interval": "1m",
                 "targets": [{"refId": "A", "rawSql": "SELECT 1", "format": 0}]},
                {"type": "row", "title": "Raw", "collapsed": true, "panels": [
                    {"type": "table", "title": "B", "targets": [{"refId": "A", "rawSql": "SELECT 2"}]}
                ]}
            ]
        });
        let d = parse(&json).unwrap();
        assert_eq!(d.panels.len(), 2);
        assert_eq!(d.panels[0].min_interval, Some(Duration::from_secs(60)));
        assert_eq!(d.panels[1].row, "Raw");
        assert!(matches!(&d.variables[1].kind, VariableKind::Custom(o) if o == &["0", "1"]));
        assert_eq!(d.variables[2].current, ["0"]);
    }
}

//! Runs the provisioned Grafana alert rules' ClickHouse queries the way Grafana's
//! alerting would: each query over its `relativeTimeRange` ending now, with the
//! data source's macros substituted (alert queries have no template variables).
//!
//! The rules live in `dashboards/provisioning/alerting/*.json` (Grafana reads
//! `.json` alerting files with its YAML reader; JSON is YAML).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::dashboards::{
    interpolate, run_sql, DashboardError, QueryContext, QueryResult, TimeRange,
};

/// `<workspace>/dashboards/provisioning/alerting`.
pub fn workspace_alert_rules() -> PathBuf {
    super::dashboards::workspace_dashboards()
        .parent()
        .expect("dashboards/json has a parent")
        .join("provisioning")
        .join("alerting")
}

/// One ClickHouse query of one rule.
#[derive(Debug, Clone)]
pub struct AlertQuery {
    pub rule_uid: String,
    pub rule_title: String,
    pub ref_id: String,
    pub raw_sql: String,
    /// `relativeTimeRange`: seconds before now the range starts and ends.
    pub from_s: u64,
    pub to_s: u64,
    /// The threshold the rule's condition compares the query's value with.
    pub threshold: Option<f64>,
}

/// Every ClickHouse query of every rule in every `*.json` file of `dir`.
pub fn load_alert_queries(dir: &Path) -> Result<Vec<AlertQuery>, DashboardError> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| DashboardError::Read {
            path: dir.display().to_string(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| DashboardError::Read {
            path: shown.clone(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|source| DashboardError::Json {
            path: shown.clone(),
            source,
        })?;
        out.extend(
            parse_rules(&json).map_err(|e| DashboardError::Invalid(format!("{shown}: {e}")))?,
        );
    }
    Ok(out)
}

fn parse_rules(json: &Value) -> Result<Vec<AlertQuery>, String> {
    let mut out = Vec::new();
    let groups = json["groups"].as_array().ok_or("no groups")?;
    for rule in groups
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
    {
        let uid = rule["uid"].as_str().ok_or("a rule without uid")?;
        let title = rule["title"].as_str().unwrap_or(uid);
        let data = rule["data"]
            .as_array()
            .ok_or_else(|| format!("{uid}: no data"))?;
        let threshold = data
            .iter()
            .filter(|d| d["model"]["type"] == "threshold")
            .find_map(|d| d["model"]["conditions"][0]["evaluator"]["params"][0].as_f64());
        for d in data.iter().filter(|d| d["datasourceUid"] != "__expr__") {
            let sql = d["model"]["rawSql"]
                .as_str()
                .ok_or_else(|| format!("{uid}: a query without rawSql"))?;
            let range = &d["relativeTimeRange"];
            out.push(AlertQuery {
                rule_uid: uid.to_string(),
                rule_title: title.to_string(),
                ref_id: d["refId"].as_str().unwrap_or("").to_string(),
                raw_sql: sql.to_string(),
                from_s: range["from"]
                    .as_u64()
                    .ok_or_else(|| format!("{uid}: no range"))?,
                to_s: range["to"].as_u64().unwrap_or(0),
                threshold,
            });
        }
    }
    Ok(out)
}

/// Runs `q` over its relative range ending at `now_ms`: the SQL as sent and the result.
pub async fn run_alert_query(
    client: &clickhouse::Client,
    q: &AlertQuery,
    now_ms: i64,
) -> (String, Result<QueryResult, String>) {
    let range = TimeRange {
        from_ms: now_ms - 1000 * q.from_s as i64,
        to_ms: now_ms - 1000 * q.to_s as i64,
    };
    let variables = BTreeMap::new();
    let ctx = QueryContext {
        range,
        // Grafana alerting queries with an interval of the rule's evaluation (1 m).
        interval: Duration::from_secs(60),
        variables: &variables,
    };
    match interpolate(&q.raw_sql, &ctx) {
        Ok(sql) => {
            let result = run_sql(client, &sql).await;
            (sql, result)
        }
        Err(e) => (q.raw_sql.clone(), Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provisioned_rules_parse_with_a_query_and_a_threshold_each() {
        let queries = load_alert_queries(&workspace_alert_rules()).unwrap();
        assert!(queries.len() >= 5, "{queries:?}");
        for q in &queries {
            assert!(q.threshold.is_some(), "{}", q.rule_uid);
            assert!(q.from_s > q.to_s, "{}", q.rule_uid);
        }
    }
}

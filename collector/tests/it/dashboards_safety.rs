//! Template variables reach the dashboards' SQL as text only. Every variable is
//! written `decodeURLComponent('${v:percentencode}')` (multi-value: split after
//! decoding): Grafana percent-encodes everything but `A–Z a–z 0–9 - _ . ~`, so no
//! value can close the literal, whatever ClickHouse does with `\'`. A viewer can
//! put any value into a variable through the URL, query variables included.

use std::collections::BTreeMap;
use std::time::Duration;

use testkit::dashboards::{
    interpolate, load_dir, percent_encode_strict, run_dashboard, run_sql, workspace_dashboards,
    Dashboard, QueryContext, RunOptions, TimeRange, VarValue,
};
use testkit::{test_config, unique_database, TestCollector};

const HOSTILE: [&str; 6] = [
    "\\'",
    "'; DROP TABLE otel_traces; --",
    "x\\' OR 1=1) --",
    "ünïcødé 'ß' 🚀 \\",
    "a,b}{c",
    "%27) OR (1=1",
];

/// Statically: every template variable in every panel's and variable's SQL is
/// `decodeURLComponent('${name:percentencode}')`, or the second argument of
/// `$__conditionalAll` (which the data source reads as a name, never as a value).
#[test]
fn every_variable_reference_is_percent_encoded_inside_a_literal() {
    let mut bad = Vec::new();
    for d in load_dir(&workspace_dashboards()).unwrap() {
        let sqls = d
            .panels
            .iter()
            .flat_map(|p| {
                p.targets
                    .iter()
                    .map(move |t| (p.title.clone(), t.raw_sql.clone()))
            })
            .chain(d.variables.iter().filter_map(|v| match &v.kind {
                testkit::dashboards::VariableKind::Query(sql) => {
                    Some((format!("variable {}", v.name), sql.clone()))
                }
                _ => None,
            }));
        for (what, sql) in sqls {
            assert!(!sql.contains("[["), "{}: {what}: [[var]]", d.title);
            for (i, _) in sql.match_indices('$') {
                let rest = &sql[i + 1..];
                // Grafana's variables are `$name` and `${…}`; `$__…` are globals and
                // macros; any other `$` (a regex's end anchor) is plain text.
                let starts_variable =
                    rest.starts_with(|c: char| c == '{' || c == '_' || c.is_ascii_alphanumeric());
                if !starts_variable || rest.starts_with("__") {
                    continue;
                }
                let ok = if let Some(inner) = rest.strip_prefix('{') {
                    let name = &inner[..inner.find('}').unwrap_or(0)];
                    name.ends_with(":percentencode")
                        && sql[..i].ends_with("decodeURLComponent('")
                        && inner[name.len() + 1..].starts_with("')")
                } else {
                    // `$__conditionalAll(condition, $name)`
                    let name_len = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    sql[..i].ends_with(", ") && rest[name_len..].starts_with(')')
                };
                if !ok {
                    bad.push(format!(
                        "{} / {what}: {}",
                        d.title,
                        &sql[i.saturating_sub(30)..(i + 40).min(sql.len())]
                    ));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

async fn normalized(client: &clickhouse::Client, sql: &str) -> String {
    client
        .query("SELECT normalizeQuery(?)")
        .bind(sql)
        .fetch_one::<String>()
        .await
        .unwrap()
}

fn variables_used(d: &Dashboard) -> Vec<(String, bool)> {
    d.variables
        .iter()
        .map(|v| (v.name.clone(), v.multi))
        .collect()
}

/// Dynamically: each hostile value through each variable of each dashboard; every
/// panel still runs, and its SQL has the same structure (ClickHouse's
/// `normalizeQuery`, literals replaced by `?`) as with a plain value: the value
/// stayed inside a string literal. And the literal decodes back to the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_stay_text_in_every_panel() {
    let c = TestCollector::start_with(test_config(&unique_database("dash_safety"))).await;
    let range = TimeRange::last(Duration::from_secs(3600));
    let mut checked = 0;
    for d in load_dir(&workspace_dashboards()).unwrap() {
        for (name, multi) in variables_used(&d) {
            let plain = run_dashboard(
                &c.client,
                &d,
                &RunOptions::new(range).with_variable(&name, &["plain"]),
            )
            .await
            .unwrap();
            let mut plain_shapes = Vec::new();
            for q in &plain.panels {
                plain_shapes.push(normalized(&c.client, &q.sql).await);
            }
            for hostile in HOSTILE {
                let values: Vec<&str> = if multi {
                    vec![hostile, "plain"]
                } else {
                    vec![hostile]
                };
                let run = run_dashboard(
                    &c.client,
                    &d,
                    &RunOptions::new(range).with_variable(&name, &values),
                )
                .await
                .unwrap();
                assert_eq!(run.panels.len(), plain.panels.len());
                for (p, shape) in run.panels.iter().zip(&plain_shapes) {
                    if let Err(e) = &p.result {
                        panic!(
                            "{} / {} with {name} = {hostile:?}: {e}\n  SQL: {}",
                            d.title, p.panel, p.sql
                        );
                    }
                    assert_eq!(
                        &normalized(&c.client, &p.sql).await,
                        shape,
                        "{} / {} with {name} = {hostile:?} changed the query's structure:\n{}",
                        d.title,
                        p.panel,
                        p.sql
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 500, "{checked} panel runs");

    // The literal decodes to exactly the value, single and multi-value.
    for hostile in HOSTILE {
        let sql = format!(
            "SELECT decodeURLComponent('{}')",
            percent_encode_strict(hostile)
        );
        let r = run_sql(&c.client, &sql).await.unwrap();
        assert_eq!(r.rows[0][0], serde_json::Value::String(hostile.to_string()));
        let mut vars = BTreeMap::new();
        vars.insert(
            "v".to_string(),
            VarValue::Multi(vec![hostile.to_string(), "plain".to_string()]),
        );
        let ctx = QueryContext {
            range,
            interval: Duration::from_secs(60),
            variables: &vars,
        };
        let sql = interpolate(
            "SELECT groupArray(v) FROM (SELECT arrayJoin(splitByChar(',', replaceRegexpOne(decodeURLComponent('${v:percentencode}'), '^\\\\{(.*)\\\\}$', '\\\\1'))) AS v)",
            &ctx,
        )
        .unwrap();
        let r = run_sql(&c.client, &sql).await.unwrap();
        let got: Vec<String> = serde_json::from_value(r.rows[0][0].clone()).unwrap();
        // A comma inside a value splits it: more values, still text.
        let mut expected: Vec<String> = hostile.split(',').map(String::from).collect();
        expected.push("plain".into());
        assert_eq!(got, expected, "{hostile:?}");
    }

    // The format the dashboards used before, `${v:sqlstring}`, lets `\'` out of
    // the literal: the check above would have caught it.
    let mut vars = BTreeMap::new();
    vars.insert(
        "v".to_string(),
        VarValue::Single("\\' OR 1=1 --".to_string()),
    );
    let ctx = QueryContext {
        range,
        interval: Duration::from_secs(60),
        variables: &vars,
    };
    let broken = interpolate(
        "SELECT count() FROM otel_traces WHERE ServiceName = ${v:sqlstring}",
        &ctx,
    )
    .unwrap();
    let plain = "SELECT count() FROM otel_traces WHERE ServiceName = 'x'";
    assert_ne!(
        normalized(&c.client, &broken).await,
        normalized(&c.client, plain).await,
        "{broken}"
    );
    c.stop().await;
}

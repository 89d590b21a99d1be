//! One TOML file, then `COLLECTOR__SECTION__KEY` environment variables, then flags.

use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::batching::BatchingConfig;
use crate::embedded::EmbeddedConfig;
use crate::exporters::clickhouse::ClickHouseConfig;
use crate::receivers::ReceiversConfig;
use crate::spool::SpoolConfig;
use crate::telemetry::TelemetryConfig;
use crate::ui::UiConfig;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub receivers: ReceiversConfig,
    pub spool: SpoolConfig,
    pub batching: BatchingConfig,
    pub clickhouse: ClickHouseConfig,
    pub embedded: EmbeddedConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// The collector's own metrics written into ClickHouse.
    pub telemetry: TelemetryConfig,
    /// The built-in web UI.
    pub ui: UiConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// `/health/live`, `/health/ready`, `/metrics`.
    pub addr: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            addr: "0.0.0.0:13133".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("setting {key}: {reason}")]
    Override { key: String, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(toml::de::Error),
}

const ENV_PREFIX: &str = "COLLECTOR__";
const REDACTED: &str = "<redacted>";

impl Config {
    /// Layers, later ones winning: defaults, the file, environment, `overrides`
    /// (`section.key=value` pairs from flags).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut root = toml::Table::new();
        if let Some(path) = file {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: shown.clone(),
                source,
            })?;
            root = text
                .parse::<toml::Table>()
                .map_err(|source| ConfigError::Parse {
                    path: shown,
                    source,
                })?;
        }
        for (name, value) in env {
            let key = match name.as_str() {
                "CLICKHOUSE_URL" => "clickhouse.url".to_string(),
                "CLICKHOUSE_PASSWORD" => "clickhouse.password".to_string(),
                _ => match name.strip_prefix(ENV_PREFIX) {
                    Some(rest) => rest.to_ascii_lowercase().replace("__", "."),
                    None => continue,
                },
            };
            set(&mut root, &key, &value)?;
        }
        for (key, value) in overrides {
            set(&mut root, key, value)?;
        }
        toml::Value::Table(root)
            .try_into()
            .map_err(ConfigError::Invalid)
    }

    /// The config with every secret replaced, for `--print-config` and logs.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        if !c.clickhouse.password.is_empty() {
            c.clickhouse.password = REDACTED.into();
        }
        c.clickhouse.url = redact_url(&c.clickhouse.url);
        c
    }
}

/// Sets `a.b.c` in a TOML table; the value is read as a TOML scalar when it is one
/// (`8`, `true`), else as a string.
fn set(root: &mut toml::Table, key: &str, value: &str) -> Result<(), ConfigError> {
    let err = |reason: &str| ConfigError::Override {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    let mut path: Vec<&str> = key.split('.').collect();
    let leaf = path
        .pop()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| err("empty key"))?;
    let mut table = root;
    for part in path {
        table = table
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| err("is not a section"))?;
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table())
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    table.insert(leaf.to_string(), parsed);
    Ok(())
}

/// `http://user:secret@host` → `http://user:<redacted>@host`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((creds, host)) if creds.contains(':') => {
            let user = creds.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:{REDACTED}@{host}")
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_file_env_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[batching]\nmax_rows = 10\n[clickhouse]\ndatabase = \"a\"\n",
        )
        .unwrap();
        let env = [
            (
                "COLLECTOR__CLICKHOUSE__DATABASE".to_string(),
                "b".to_string(),
            ),
            (
                "COLLECTOR__BATCHING__MAX_DELAY_MS".to_string(),
                "5".to_string(),
            ),
            ("CLICKHOUSE_PASSWORD".to_string(), "s3cret".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let flags = [("clickhouse.database".to_string(), "c".to_string())];
        let c = Config::load(Some(&file), env, &flags).unwrap();
        assert_eq!(c.batching.max_rows, 10);
        assert_eq!(c.batching.max_delay_ms, 5);
        assert_eq!(c.clickhouse.database, "c");
        assert_eq!(c.clickhouse.password, "s3cret");
        let shown = toml::to_string(&c.redacted()).unwrap();
        assert!(!shown.contains("s3cret") && shown.contains(REDACTED));
    }

    #[test]
    fn unknown_keys_and_bad_types_are_errors() {
        let e = Config::load(None, [], &[("batching.max_rowz".into(), "1".into())]).unwrap_err();
        assert!(e.to_string().contains("max_rowz"), "{e}");
        let e = Config::load(None, [], &[("batching.max_rows".into(), "many".into())]).unwrap_err();
        assert!(e.to_string().contains("invalid"), "{e}");
    }

    #[test]
    fn url_credentials_are_redacted() {
        assert_eq!(
            redact_url("http://u:pw@h:8123"),
            "http://u:<redacted>@h:8123"
        );
        assert_eq!(redact_url("http://h:8123"), "http://h:8123");
    }
}

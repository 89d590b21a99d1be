use serde::{Deserialize, Serialize};

use super::UiError;
use crate::exporters::clickhouse::ClickHouseConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    /// Where the web UI listens; empty: no UI.
    pub addr: String,
    /// The ClickHouse user the UI reads as (give it read-only grants). Empty: the
    /// collector's user, with `readonly=2` on every query.
    pub clickhouse_user: String,
    /// That user's password, from a file.
    pub clickhouse_password_file: String,
    /// Bearer tokens, one per line (`#` comments); empty: no token auth.
    pub auth_tokens_file: String,
    /// `user:password` lines for HTTP basic auth; empty: no basic auth.
    pub basic_auth_file: String,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            addr: "127.0.0.1:16686".into(),
            clickhouse_user: String::new(),
            clickhouse_password_file: String::new(),
            auth_tokens_file: String::new(),
            basic_auth_file: String::new(),
        }
    }
}

impl UiConfig {
    /// The UI's own client: never the one that INSERTs.
    pub(super) fn client(
        &self,
        clickhouse: &ClickHouseConfig,
        url: &str,
    ) -> Result<clickhouse::Client, UiError> {
        let read = |what, path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim_end().to_string())
                .map_err(|source| UiError::Read {
                    what,
                    path: path.to_string(),
                    source,
                })
        };
        let client = if self.clickhouse_user.is_empty() {
            let password = clickhouse
                .resolve_password()
                .map_err(|source| UiError::Read {
                    what: "the ClickHouse password file",
                    path: clickhouse.password_file.clone(),
                    source,
                })?;
            clickhouse::Client::default()
                .with_url(url)
                .with_user(&clickhouse.user)
                .with_password(password)
                // Reads only; settings may still be changed per query.
                .with_setting("readonly", "2")
        } else {
            let password = if self.clickhouse_password_file.is_empty() {
                String::new()
            } else {
                read(
                    "the UI's ClickHouse password file",
                    &self.clickhouse_password_file,
                )?
            };
            clickhouse::Client::default()
                .with_url(url)
                .with_user(&self.clickhouse_user)
                .with_password(password)
        };
        Ok(client
            .with_database(&clickhouse.database)
            .with_compression(clickhouse::Compression::Lz4))
    }
}

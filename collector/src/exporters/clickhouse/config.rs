use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// `http://host:8123`. Empty: start the embedded ClickHouse.
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
    /// Read the password from this file (wins over `password`).
    pub password_file: String,
    /// Create the database and tables at start; off: only check them.
    pub create_schema: bool,
    /// Drop rows older than this many days (0: keep).
    pub ttl_days: u32,
    /// The `remote_servers` cluster: `<table>_local` Replicated tables `ON CLUSTER` under
    /// `Distributed` tables with the usual names (empty: single server).
    pub cluster: String,
    /// INSERTs in flight at once per table: each table is its own lane, so a table
    /// whose INSERTs keep failing never holds another's.
    pub insert_concurrency: usize,
    /// Let ClickHouse buffer small inserts server-side (`async_insert=1`).
    pub async_insert: bool,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Timeout of one INSERT or query.
    pub timeout_secs: u64,
    /// A batch ClickHouse keeps refusing with an error (not an outage: those are
    /// waited out) is split to isolate the refused rows, which go to the
    /// dead-letter store, once it was refused at least this many times…
    pub dead_letter_after_attempts: u32,
    /// …over at least this many seconds. Rows ClickHouse rejects as invalid go
    /// there at once.
    pub dead_letter_after_secs: u64,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: String::new(),
            database: "otel".into(),
            user: "default".into(),
            password: String::new(),
            password_file: String::new(),
            create_schema: true,
            ttl_days: 0,
            cluster: String::new(),
            insert_concurrency: 4,
            async_insert: false,
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
            timeout_secs: 60,
            dead_letter_after_attempts: 20,
            dead_letter_after_secs: 600,
        }
    }
}

impl ClickHouseConfig {
    /// The password, from its file when one is named.
    pub fn resolve_password(&self) -> std::io::Result<String> {
        if self.password_file.is_empty() {
            Ok(self.password.clone())
        } else {
            Ok(std::fs::read_to_string(&self.password_file)?
                .trim_end()
                .to_string())
        }
    }
}

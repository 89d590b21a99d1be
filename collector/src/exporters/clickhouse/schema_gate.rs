//! Sets the schema up and keeps checking it; writers wait until it is right.
//!
//! A failed or mismatching probe never degrades into writing fewer columns: the
//! collector stays unready, says exactly what is wrong, and tries again.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::schema::cast::TableCast;
use crate::schema::migrate::{self, MigrationError};
use crate::schema::{create_statements_except, probe_report, Rollup, SchemaOptions, TableId};

/// How long a failed migration of the RED rollups waits before the next attempt.
const MIGRATION_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    Pending(String),
    Ready,
}

#[derive(Clone)]
pub struct SchemaGate {
    state: watch::Sender<SchemaState>,
    recheck: Arc<Notify>,
    /// What the last good probe found besides "ready".
    found: Arc<RwLock<Found>>,
}

#[derive(Default)]
struct Found {
    casts: HashMap<TableId, Arc<TableCast>>,
    absent_extras: Vec<String>,
    /// Rollups of an earlier release's shape, and why they still are.
    outdated_extras: Vec<String>,
    /// The migration failed: try it again later.
    retry_migration: bool,
}

impl SchemaGate {
    pub fn new() -> SchemaGate {
        SchemaGate {
            state: watch::Sender::new(SchemaState::Pending("schema not checked yet".into())),
            recheck: Arc::new(Notify::new()),
            found: Arc::default(),
        }
    }

    /// How rows of `table` must be re-encoded for the server's column types
    /// (tables made by an older upstream exporter), if at all.
    pub fn cast_for(&self, table: TableId) -> Option<Arc<TableCast>> {
        self.found.read().ok()?.casts.get(&table).cloned()
    }

    /// Our rollups and views the database lacks (created when `create_schema` is
    /// on; with it off, reported here and in the log, never blocking).
    pub fn absent_extras(&self) -> Vec<String> {
        self.found
            .read()
            .map(|f| f.absent_extras.clone())
            .unwrap_or_default()
    }

    /// Our rollups in an earlier release's shape (migrated at start on a single node
    /// with `create_schema`; else, or while that fails, reported here and in the
    /// log, never blocking).
    pub fn outdated_extras(&self) -> Vec<String> {
        self.found
            .read()
            .map(|f| f.outdated_extras.clone())
            .unwrap_or_default()
    }

    pub fn state(&self) -> SchemaState {
        self.state.borrow().clone()
    }

    /// Resolves once the schema is known to be right.
    pub async fn ready(&self) {
        let mut rx = self.state.subscribe();
        // The sender lives in self, so the channel cannot close while we wait.
        let _ = rx.wait_for(|s| *s == SchemaState::Ready).await;
    }

    /// An INSERT hit a missing table or column: check again before more writes.
    pub fn invalidate(&self, why: String) {
        self.state.send_replace(SchemaState::Pending(why));
        self.recheck.notify_one();
    }

    /// Creates (if asked) and probes the schema until it is right, then waits for an
    /// invalidation and starts over. Runs for the collector's lifetime.
    pub async fn run(self, client: clickhouse::Client, opts: SchemaOptions, create: bool) {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.check(&client, &opts, create).await {
                Ok(found) => {
                    if !found.absent_extras.is_empty()
                        && found.absent_extras != self.absent_extras()
                    {
                        tracing::warn!(
                            absent = %found.absent_extras.join("; "),
                            "ClickHouse schema: writing, but our extras are absent (create them, or turn create_schema on)"
                        );
                    }
                    if !found.outdated_extras.is_empty()
                        && found.outdated_extras != self.outdated_extras()
                    {
                        tracing::warn!(
                            outdated = %found.outdated_extras.join("; "),
                            "ClickHouse schema: writing, but rollups have an earlier release's shape"
                        );
                    }
                    let retry_migration = found.retry_migration;
                    if let Ok(mut f) = self.found.write() {
                        *f = found;
                    }
                    if self.state() != SchemaState::Ready {
                        tracing::info!(database = %opts.database, "ClickHouse schema ready");
                    }
                    self.state.send_replace(SchemaState::Ready);
                    delay = Duration::from_millis(200);
                    if retry_migration {
                        tokio::select! {
                            _ = tokio::time::sleep(MIGRATION_RETRY) => {}
                            _ = self.recheck.notified() => {}
                        }
                    } else {
                        self.recheck.notified().await;
                    }
                }
                Err(why) => {
                    tracing::warn!(reason = %why, retry_in_ms = delay.as_millis() as u64, "ClickHouse schema not ready");
                    self.state.send_replace(SchemaState::Pending(why));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.recheck.notified() => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn check(
        &self,
        client: &clickhouse::Client,
        opts: &SchemaOptions,
        create: bool,
    ) -> Result<Found, String> {
        let mut migration_failed = None;
        if create {
            let (outdated, failed) = self
                .migrate(client, opts)
                .await
                .map_err(|e| format!("creating the schema failed: {e}"))?;
            migration_failed = failed;
            let names: Vec<&str> = outdated.iter().map(|r| r.name).collect();
            for sql in create_statements_except(opts, &names) {
                client
                    .query(&sql)
                    .execute()
                    .await
                    .map_err(|e| format!("creating the schema failed: {e}"))?;
            }
        }
        let report = probe_report(client, &opts.database)
            .await
            .map_err(|e| format!("schema probe failed: {e}"))?;
        if !report.problems.is_empty() {
            return Err(report
                .problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; "));
        }
        let mut outdated_extras: Vec<String> =
            report.outdated.iter().map(|o| o.to_string()).collect();
        let retry_migration = migration_failed.is_some();
        if let Some(e) = migration_failed {
            tracing::warn!(error = %e, retry_in_s = MIGRATION_RETRY.as_secs(), "migrating the RED rollups failed");
            outdated_extras.push(migration_failure(&e));
        }
        Ok(Found {
            casts: report
                .casts
                .into_iter()
                .map(|(t, c)| (t, Arc::new(c)))
                .collect(),
            absent_extras: report.absent_extras.iter().map(|p| p.to_string()).collect(),
            outdated_extras,
            retry_migration,
        })
    }

    /// Migrates the RED rollups of an earlier shape where the collector can (a
    /// single node); returns those still in it, and why if the migration failed.
    async fn migrate(
        &self,
        client: &clickhouse::Client,
        opts: &SchemaOptions,
    ) -> Result<(Vec<&'static Rollup>, Option<MigrationError>), clickhouse::error::Error> {
        let outdated = migrate::outdated(client, opts).await?;
        if opts.cluster.is_some() {
            return Ok((outdated, None));
        }
        if !outdated.is_empty() {
            // Writers wait: the spans they hold then reach the new views.
            self.state.send_replace(SchemaState::Pending(
                "migrating the RED rollups to their current shape".into(),
            ));
        }
        let failed = match migrate::migrate(client, opts, &outdated).await {
            Ok(done) => {
                for m in done {
                    tracing::info!(
                        table = m.table,
                        rows_before = m.rows_before,
                        rows_after = m.rows_after,
                        requests = m.requests,
                        "migrated a RED rollup to its current shape"
                    );
                }
                None
            }
            Err(e) => Some(e),
        };
        // A migration that succeeded leaves no table in the old shape.
        let still = match failed {
            Some(_) => migrate::outdated(client, opts).await?,
            None => Vec::new(),
        };
        Ok((still, failed))
    }
}

fn migration_failure(e: &MigrationError) -> String {
    format!(
        "migrating the RED rollups failed (tried again every {} s): {e}",
        MIGRATION_RETRY.as_secs()
    )
}

impl Default for SchemaGate {
    fn default() -> Self {
        Self::new()
    }
}

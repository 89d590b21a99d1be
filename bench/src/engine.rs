//! The embedded ClickHouse front (`collector embedded-clickhouse`, the real engine)
//! as a child process of a runner.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::process::{pinned, stop};

pub struct Engine {
    child: std::sync::Mutex<Child>,
    /// The process doing the engine's work, whose CPU seconds count.
    pub pid: u32,
    pub url: String,
    http: reqwest::Client,
}

impl Engine {
    /// Starts the engine on a fresh data directory under `work`, pinned to `core`
    /// if given.
    pub async fn start(
        collector: &Path,
        core: Option<usize>,
        work: &Path,
    ) -> anyhow::Result<Engine> {
        let data = work.join("embedded-data");
        let _ = std::fs::remove_dir_all(&data);
        let url_file = work.join("embedded-url");
        let mut cmd = match core {
            Some(core) => pinned(core, collector),
            None => Command::new(collector),
        };
        let mut child = cmd
            .arg("embedded-clickhouse")
            .env("COLLECTOR__EMBEDDED__DATA_DIR", &data)
            .env("RUST_LOG", "warn")
            .stdout(std::fs::File::create(&url_file)?)
            .stderr(std::fs::File::create(work.join("embedded.log"))?)
            .spawn()
            .context("starting the embedded ClickHouse")?;
        let deadline = Instant::now() + Duration::from_secs(240);
        let url = loop {
            let text = std::fs::read_to_string(&url_file).unwrap_or_default();
            if let Some(line) = text.lines().next().filter(|l| l.starts_with("http")) {
                break line.trim().to_string();
            }
            if child.try_wait()?.is_some() || Instant::now() > deadline {
                bail!("the embedded ClickHouse did not start (see embedded.log)");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // The collector process that printed the URL runs the engine as its child.
        let pid = engine_pid(child.id()).unwrap_or(child.id());
        Ok(Engine {
            child: std::sync::Mutex::new(child),
            pid,
            url,
            http: reqwest::Client::new(),
        })
    }

    /// Runs one statement; its text answer, or an error with the engine's message.
    pub async fn query(&self, sql: &str) -> anyhow::Result<String> {
        let response = self
            .http
            .post(&self.url)
            .body(sql.to_string())
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{sql}: {status}: {}", text.trim());
        }
        Ok(text)
    }

    /// Waits until `expected` rows are in `database`'s `otel_traces`, or the count
    /// did not change for `stall`, or `max` passed; returns the count.
    pub async fn wait_rows(
        &self,
        database: &str,
        expected: u64,
        max: Duration,
        stall: Duration,
    ) -> anyhow::Result<u64> {
        let deadline = Instant::now() + max;
        let (mut last, mut since) = (u64::MAX, Instant::now());
        loop {
            let text = self
                .query(&format!("SELECT count() FROM `{database}`.otel_traces"))
                .await?;
            let rows: u64 = text.trim().parse().unwrap_or(0);
            if rows >= expected || Instant::now() > deadline {
                return Ok(rows);
            }
            if rows != last {
                (last, since) = (rows, Instant::now());
            } else if since.elapsed() > stall {
                return Ok(rows);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn stop(self) {
        let mut child = self.child.into_inner().expect("not poisoned");
        stop(&mut child).await;
    }
}

/// The python child of `collector embedded-clickhouse`, where the engine's CPU goes.
fn engine_pid(parent: u32) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

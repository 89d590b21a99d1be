//! Test support for every crate's tests, kept out of the product (a dev-dependency
//! only; the bench tool uses its synthetic data): a real collector on free loopback
//! ports, writing into its own database of a real ClickHouse (`CLICKHOUSE_URL`, or one
//! embedded engine shared by the test process); [`dashboards`] runs Grafana
//! dashboards' SQL; [`synthetic`] generates OTLP load; [`upstream`] holds the upstream
//! exporter's DDL; [`decode_for_tests`] is what a
//! receiver does to a body before the pipeline; [`run_with_subscriber`] gives a test
//! its own `tracing` subscriber inside a shared test binary.

pub mod alert_rules;
pub mod dashboards;
mod decode;
mod subscriber;
pub mod synthetic;
pub mod upstream;

pub use collector::Config as CollectorConfig;
pub use decode::decode_for_tests;
pub use subscriber::run_with_subscriber;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use collector::embedded::{EmbeddedClickHouse, EmbeddedConfig};
use collector::{Collector, Config};

/// The ClickHouse every test of this process uses.
pub fn clickhouse_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("CLICKHOUSE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => start_shared_embedded(),
    })
    .clone()
}

/// Starts one embedded engine on a thread of its own, so it outlives any single
/// test's runtime; it exits with the test process (the front watches its parent).
fn start_shared_embedded() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let data = tempfile::tempdir().expect("temp dir");
            let config = EmbeddedConfig {
                home: workspace_local("embedded-clickhouse"),
                data_dir: data.path().display().to_string(),
                ..EmbeddedConfig::default()
            };
            match EmbeddedClickHouse::start(&config).await {
                Ok(ch) => {
                    let _ = tx.send(Ok(ch.url().to_string()));
                    std::future::pending::<()>().await;
                    drop((ch, data));
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        });
    });
    rx.recv()
        .expect("embedded ClickHouse thread")
        .unwrap_or_else(|e| panic!("embedded ClickHouse: {e}"))
}

/// `<workspace>/.local/<name>`, shared by every crate's tests (one install).
pub fn workspace_local(name: &str) -> String {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(manifest)
        .join(".local")
        .join(name)
        .display()
        .to_string()
}

/// A database name no other test of any process uses.
pub fn unique_database(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "test_{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A collector for tests: loopback ports, short batching delay, its own database.
pub fn test_config(database: &str) -> Config {
    let mut config = Config::default();
    config.receivers.grpc_addr = "127.0.0.1:0".into();
    config.receivers.http_addr = "127.0.0.1:0".into();
    config.admin.addr = "127.0.0.1:0".into();
    config.ui.addr = "127.0.0.1:0".into();
    config.clickhouse.url = clickhouse_url();
    config.clickhouse.database = database.into();
    config.spool.dir = std::env::temp_dir()
        .join(format!("{database}-spool"))
        .display()
        .to_string();
    config.batching.max_delay_ms = 100;
    // Fixtures carry fixed times (2023): no lower bound on item times.
    config.receivers.timestamps.max_past_secs = 0;
    // Tests count rows in the metric tables; the collector's own would join them.
    config.telemetry.export_interval_ms = 0;
    config
}

pub struct TestCollector {
    pub collector: Collector,
    pub database: String,
    /// A client whose default database is the test's.
    pub client: clickhouse::Client,
}

impl TestCollector {
    pub async fn start(prefix: &str) -> TestCollector {
        let database = unique_database(prefix);
        Self::start_with(test_config(&database)).await
    }

    /// Starts with a config (typically from [`test_config`]) and waits until the
    /// schema is ready.
    pub async fn start_with(config: Config) -> TestCollector {
        let c = Self::launch(config).await;
        assert!(
            c.wait_ready(Duration::from_secs(60)).await,
            "schema not ready within 60 s"
        );
        c
    }

    /// Starts without waiting for the schema.
    pub async fn launch(config: Config) -> TestCollector {
        let database = config.clickhouse.database.clone();
        let collector = Collector::start(config).await.expect("collector starts");
        let client = clickhouse::Client::default()
            .with_url(collector.clickhouse_url())
            .with_database(&database);
        TestCollector {
            collector,
            database,
            client,
        }
    }

    /// Whether the collector became ready within `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.collector.is_ready() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Status and body of an admin endpoint such as `/health/ready`.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("{}{path}", self.admin_endpoint()))
            .await
            .expect("admin endpoint answers");
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.collector.grpc_addr)
    }

    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.collector.http_addr)
    }

    pub fn admin_endpoint(&self) -> String {
        format!("http://{}", self.collector.admin_addr)
    }

    /// Polls `SELECT count() FROM table [WHERE …]` until it reaches `at_least` (or
    /// 30 s pass) and returns the last count.
    pub async fn wait_for_rows(&self, table: &str, filter: &str, at_least: u64) -> u64 {
        let sql = if filter.is_empty() {
            format!("SELECT count() FROM {table}")
        } else {
            format!("SELECT count() FROM {table} WHERE {filter}")
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n: u64 = self.client.query(&sql).fetch_one().await.unwrap_or(0);
            if n >= at_least || Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        let spool_dir = std::env::temp_dir().join(format!("{}-spool", self.database));
        self.collector.shutdown(Duration::from_secs(10)).await;
        let _ = std::fs::remove_dir_all(spool_dir);
    }
}

/// Polls `f` until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one series (e.g. `collector_duplicate_requests_total{signal="traces"}`)
/// in the `/metrics` of the collector whose admin endpoint is given; None when the
/// collector does not answer.
pub async fn scrape(admin_endpoint: &str, series: &str) -> Option<u64> {
    let text = reqwest::get(format!("{admin_endpoint}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A free loopback port (bound, then released for a child process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The collector binary as a separate process, for tests that kill it, measure
/// its memory or need its real signal handling.
pub struct CollectorProcess {
    pub child: std::process::Child,
    pub grpc_port: u16,
    pub http_port: u16,
    pub admin_port: u16,
}

impl CollectorProcess {
    /// Runs `binary` (the test's `env!("CARGO_BIN_EXE_collector")`) with loopback
    /// ports, `--set` overrides and extra arguments, and waits until it exports
    /// (`/health/exporting`: the schema is ready).
    /// Without a `spool.dir` in `sets`, each process gets a fresh one of its own
    /// (two processes cannot share a spool).
    pub fn spawn(binary: &str, sets: &[(&str, String)], extra_args: &[&str]) -> CollectorProcess {
        let p = Self::launch(binary, sets, extra_args);
        p.wait_for("/health/exporting", Duration::from_secs(60));
        p
    }

    /// [`CollectorProcess::spawn`] on given (gRPC, HTTP, admin) ports: a
    /// restarted process keeps the address its clients know.
    pub fn spawn_on(
        binary: &str,
        ports: (u16, u16, u16),
        sets: &[(&str, String)],
        extra_args: &[&str],
    ) -> CollectorProcess {
        let p = Self::launch_on(binary, ports, sets, extra_args);
        p.wait_for("/health/exporting", Duration::from_secs(60));
        p
    }

    /// Like [`CollectorProcess::spawn`], but waits only until it accepts
    /// (`/health/ready`), which it does while ClickHouse is away.
    pub fn spawn_accepting(
        binary: &str,
        sets: &[(&str, String)],
        extra_args: &[&str],
    ) -> CollectorProcess {
        let p = Self::launch(binary, sets, extra_args);
        p.wait_for("/health/ready", Duration::from_secs(60));
        p
    }

    /// Starts the process and returns at once (it may still be starting up).
    pub fn launch(binary: &str, sets: &[(&str, String)], extra_args: &[&str]) -> CollectorProcess {
        let ports = (free_port(), free_port(), free_port());
        Self::launch_on(binary, ports, sets, extra_args)
    }

    /// [`CollectorProcess::launch`] on given (gRPC, HTTP, admin) ports.
    pub fn launch_on(
        binary: &str,
        (grpc_port, http_port, admin_port): (u16, u16, u16),
        sets: &[(&str, String)],
        extra_args: &[&str],
    ) -> CollectorProcess {
        let spool = std::env::temp_dir().join(format!(
            "collector-process-spool-{}-{grpc_port}",
            std::process::id()
        ));
        let mut cmd = std::process::Command::new(binary);
        cmd.args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
            .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
            .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
            // Processes run side by side: none may take the UI's default port.
            .args(["--ui-addr", "127.0.0.1:0"])
            .args(["--set", &format!("spool.dir={}", spool.display())])
            // Fixtures carry fixed times (2023): no lower bound on item times.
            .args(["--set", "receivers.timestamps.max_past_secs=0"])
            .env("RUST_LOG", "warn");
        for (k, v) in sets {
            cmd.args(["--set", &format!("{k}={v}")]);
        }
        cmd.args(extra_args);
        let child = cmd.spawn().expect("collector binary starts");
        CollectorProcess {
            child,
            grpc_port,
            http_port,
            admin_port,
        }
    }

    /// Waits until `path` on the admin endpoint answers 200.
    pub fn wait_for(&self, path: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.admin_port));
        loop {
            if let Ok(mut s) =
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            {
                use std::io::{Read, Write};
                let _ = s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
                let mut resp = String::new();
                let _ = s.read_to_string(&mut resp);
                if resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "collector process: {path} not 200 within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn admin_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    pub fn ports(&self) -> (u16, u16, u16) {
        (self.grpc_port, self.http_port, self.admin_port)
    }

    /// Resident memory of the process now, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// SIGKILL: no chance to flush.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        self.child.wait().expect("collector exits")
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

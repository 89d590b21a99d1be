//! The embedded ClickHouse: the real engine (PyPI `chdb-core`) behind a small HTTP
//! front that speaks the part of ClickHouse's HTTP interface the `clickhouse` crate
//! uses. Used when no ClickHouse URL is configured, so one command gives a working
//! collector. It installs itself into a private virtualenv on first start.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

const FRONT_SCRIPT: &str = include_str!("../../embedded/chdb_front.py");
const REQUIREMENTS: &str = include_str!("../../embedded/requirements.txt");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Holds the virtualenv and the front script.
    pub home: String,
    /// The database files.
    pub data_dir: String,
    /// The Python that creates the virtualenv.
    pub python: String,
    /// Port of the HTTP front (0: any free port).
    pub port: u16,
    /// A ClickHouse server config for the engine (e.g. a `remote_servers` cluster
    /// for tests of the cluster layout); none by default.
    pub config_file: Option<String>,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            home: ".local/embedded-clickhouse".into(),
            data_dir: ".local/clickhouse-data".into(),
            python: "python3".into(),
            port: 0,
            config_file: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum EmbeddedError {
    #[error("{action}: {source}")]
    Io {
        action: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Install(String),
    #[error("the embedded ClickHouse did not start: {0}")]
    Start(String),
}

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedError {
    let action = action.into();
    move |source| EmbeddedError::Io { action, source }
}

/// A running front; stopped when dropped.
pub struct EmbeddedClickHouse {
    child: Child,
    /// Held open for the front's lifetime; see `--exit-on-stdin-close`.
    _stdin: ChildStdin,
    url: String,
}

impl EmbeddedClickHouse {
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Installs the engine if needed and starts the front.
    pub async fn start(config: &EmbeddedConfig) -> Result<EmbeddedClickHouse, EmbeddedError> {
        let python = install(config).await?;
        let home = PathBuf::from(&config.home);
        let script = home.join("chdb_front.py");
        tokio::fs::write(&script, FRONT_SCRIPT)
            .await
            .map_err(io(format!("writing {}", script.display())))?;
        tokio::fs::create_dir_all(&config.data_dir)
            .await
            .map_err(io(format!("creating {}", config.data_dir)))?;
        let mut child = Command::new(&python)
            .arg(&script)
            .args(["--data-dir", &config.data_dir, "--host", "127.0.0.1"])
            .args(["--port", &config.port.to_string()])
            .args(
                config
                    .config_file
                    .iter()
                    .flat_map(|f| ["--config-file", f.as_str()]),
            )
            // The front exits when this pipe closes: it cannot outlive us, even
            // after a SIGKILL.
            .arg("--exit-on-stdin-close")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(io(format!("running {}", python.display())))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .map_err(|_| EmbeddedError::Start("no answer within 120 s".into()))?
            .map_err(io("reading the front's output"))?;
        let port = first
            .as_deref()
            .and_then(|l| l.strip_prefix("LISTENING "))
            .and_then(|p| p.trim().parse::<u16>().ok())
            .ok_or_else(|| {
                EmbeddedError::Start(format!(
                    "unexpected first line {first:?} (see its log above)"
                ))
            })?;
        // Keep draining stdout so the front never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let url = format!("http://127.0.0.1:{port}");
        tracing::info!(%url, data_dir = %config.data_dir, "embedded ClickHouse started");
        Ok(EmbeddedClickHouse {
            child,
            _stdin: stdin,
            url,
        })
    }

    /// Asks the front to stop and waits for it.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SIGTERM lets chdb close its files; SIGKILL (on drop) is the fallback.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Creates the virtualenv and installs the pinned packages unless already done;
/// returns the virtualenv's Python.
pub async fn install(config: &EmbeddedConfig) -> Result<PathBuf, EmbeddedError> {
    let home = PathBuf::from(&config.home);
    let venv = home.join("venv");
    let python = venv.join("bin").join("python");
    let marker = venv.join("installed-requirements.txt");
    if python.exists()
        && tokio::fs::read_to_string(&marker).await.ok().as_deref() == Some(REQUIREMENTS)
    {
        return Ok(python);
    }
    tokio::fs::create_dir_all(&home)
        .await
        .map_err(io(format!("creating {}", home.display())))?;
    tracing::info!(venv = %venv.display(), "installing the embedded ClickHouse (chdb-core, about 180 MB; first start only)");
    run(
        Command::new(&config.python).args(["-m", "venv"]).arg(&venv),
        "creating the virtualenv",
    )
    .await?;
    let requirements = home.join("requirements.txt");
    tokio::fs::write(&requirements, REQUIREMENTS)
        .await
        .map_err(io("writing requirements.txt"))?;
    // --no-deps: chdb-core's declared dependencies (pandas, pyarrow) are not needed
    // for SQL over HTTP and would triple the download.
    run(
        Command::new(venv.join("bin").join("pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "-r",
            ])
            .arg(&requirements),
        "installing chdb-core",
    )
    .await?;
    tokio::fs::write(&marker, REQUIREMENTS)
        .await
        .map_err(io("writing the install marker"))?;
    Ok(python)
}

async fn run(cmd: &mut Command, what: &str) -> Result<(), EmbeddedError> {
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .await
        .map_err(io(what.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(EmbeddedError::Install(format!("{what} failed ({status})")))
    }
}

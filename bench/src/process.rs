//! Child processes of the runners (collectors, the embedded engine): start pinned,
//! wait until they serve, stop them.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::bail;

/// `bin` under `taskset -c core`.
/// Our collector's command line: the ClickHouse it writes to and its database, its
/// three listeners on loopback (the web UI off), its spool and its drain time.
pub fn collector_args<'c>(
    cmd: &'c mut Command,
    clickhouse_url: &str,
    [grpc, http, admin]: [u16; 3],
    spool: &Path,
    database: &str,
    drain_secs: u64,
) -> &'c mut Command {
    cmd.args(["--clickhouse-url", clickhouse_url])
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .args(["--ui-addr", ""])
        .args(["--set", &format!("spool.dir={}", spool.display())])
        .args(["--set", &format!("clickhouse.database={database}")])
        .args(["--drain-secs", &drain_secs.to_string()])
}

pub fn pinned(core: usize, bin: &Path) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(core.to_string()).arg(bin);
    cmd
}

/// How to tell that a collector serves.
#[derive(Debug, Clone, Copy)]
pub enum Ready {
    /// The port accepts connections (rotel has no health endpoint).
    Port(u16),
    /// Our collector's `/health/ready` on this admin port answers 200.
    Health(u16),
}

/// Waits up to 60 s for `ready`; fails at once if the child exits.
pub async fn wait_ready(child: &mut Child, ready: Ready) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let http = reqwest::Client::new();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the collector exited at start: {status}");
        }
        let up = match ready {
            Ready::Port(port) => tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok(),
            Ready::Health(admin) => http
                .get(format!("http://127.0.0.1:{admin}/health/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
        };
        if up {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the collector did not become ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, then SIGKILL after 20 s. Async: the in-process sink must keep answering
/// the INSERTs a collector sends while it drains.
pub async fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    // Bound together so they differ; released just before the collector binds them.
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

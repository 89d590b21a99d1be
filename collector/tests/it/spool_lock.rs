//! Two collector processes on one spool directory: the second refuses to start and
//! says why, naming the directory; the first keeps running.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{clickhouse_url, free_port, unique_database, CollectorProcess};

#[test]
fn a_second_collector_on_the_same_spool_directory_refuses_to_start() {
    let spool = tempfile::tempdir().unwrap();
    let dir = spool.path().display().to_string();
    let database = unique_database("spool_lock");
    let sets = [
        ("clickhouse.url", clickhouse_url()),
        ("clickhouse.database", database.clone()),
        ("spool.dir", dir.clone()),
    ];
    let mut first = CollectorProcess::spawn(env!("CARGO_BIN_EXE_collector"), &sets, &[]);

    let mut second = Command::new(env!("CARGO_BIN_EXE_collector"));
    for addr in ["--grpc-addr", "--http-addr", "--admin-addr"] {
        second.args([addr, &format!("127.0.0.1:{}", free_port())]);
    }
    second.args(["--ui-addr", "127.0.0.1:0"]);
    for (k, v) in &sets {
        second.args(["--set", &format!("{k}={v}")]);
    }
    let mut second = second
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the second collector kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{status}");
    assert!(
        stderr.contains(&format!(
            "the spool directory {dir} is in use by another collector process (pid {})",
            first.child.id()
        )),
        "{stderr}"
    );
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "the first collector keeps running"
    );
    assert!(first.terminate().success());
}

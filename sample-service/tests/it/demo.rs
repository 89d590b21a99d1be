//! The README's one command (`scripts/demo.sh`) in a bounded run on embedded defaults:
//! what it prints must hold the RED table with `POST /orders` and one order's trace
//! with the request, the relay and the worker under one trace id.

use std::path::{Path, PathBuf};
use std::process::Command;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The directory of this test's binaries; `collector` is built there if it is not
/// (`cargo test -p sample-service` builds this package's binaries only).
fn bin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_sample-service"))
        .parent()
        .unwrap()
        .to_path_buf();
    if !dir.join("collector").exists() {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-p", "collector", "--bin", "collector"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build -p collector");
        assert!(status.success(), "building the collector failed");
    }
    assert!(dir.join("collector").exists(), "no collector in {dir:?}");
    dir
}

/// The lines of the section that starts with the line beginning with `title`, up to
/// the next blank line after its table.
fn section<'a>(stdout: &'a str, title: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = stdout.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with(title))
        .unwrap_or_else(|| panic!("no {title:?} section in:\n{stdout}"));
    // title, blank, table header, rows… up to the next blank line.
    lines[start..]
        .iter()
        .enumerate()
        .skip(2)
        .take_while(|(_, l)| !l.trim().is_empty())
        .map(|(_, l)| *l)
        .collect()
}

#[test]
fn the_demo_prints_the_red_table_and_one_order_trace_from_request_to_worker() {
    let bin = bin_dir();
    let state = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut cmd = Command::new(root.join("scripts/demo.sh"));
    cmd.env("DEMO_BIN_DIR", &bin)
        .env("DEMO_STATE_DIR", state.path())
        .env("DEMO_PROFILE", "debug")
        .env("DEMO_SECONDS", "5")
        .env("DEMO_CONCURRENCY", "4")
        .env("DEMO_KEEP_RUNNING", "0");
    for var in [
        "DEMO_GRPC_PORT",
        "DEMO_HTTP_PORT",
        "DEMO_ADMIN_PORT",
        "DEMO_SHOP_PORT",
        "DEMO_CLICKHOUSE_PORT",
    ] {
        cmd.env(var, free_port().to_string());
    }
    let ui_port = free_port();
    cmd.env("DEMO_UI_PORT", ui_port.to_string());
    // Embedded defaults, whatever the environment of the test run holds.
    for var in [
        "DATABASE_URL",
        "REDIS_URL",
        "AMQP_URL",
        "SHOP_PREFIX",
        "CLICKHOUSE_URL",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd.output().expect("run scripts/demo.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the demo failed ({}):\n{stderr}",
        output.status
    );

    assert!(
        stdout.contains(&format!("web UI             http://127.0.0.1:{ui_port}/")),
        "the demo names the web UI: {stdout}"
    );

    let red = section(&stdout, "RED per service and route");
    assert!(red[0].starts_with("service"), "{red:?}");
    assert!(
        red.iter()
            .any(|l| l.starts_with("shop ") && l.contains(" POST /orders ")),
        "POST /orders in the RED table: {red:#?}"
    );

    let title = stdout
        .lines()
        .find(|l| l.starts_with("Trace "))
        .expect("a waterfall");
    let trace_id = &title["Trace ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(
        trace_id.len() == 32 && trace_id.chars().all(|c| c.is_ascii_hexdigit()),
        "{title}"
    );
    let rows = section(&stdout, "Trace ");
    let row = |kind: &str, name: &str| {
        rows.iter()
            .find(|r| r.contains(&format!(" {kind} ")) && r.contains(name))
            .unwrap_or_else(|| panic!("no {kind} {name} row in the waterfall:\n{rows:#?}"))
            .to_string()
    };
    let depth = |r: &str, name: &str| r.find(name).unwrap();
    let server = row("SERVER", "POST /orders");
    for queue in ["payment", "email", "sms"] {
        let relay = row("PRODUCER", &format!("publish shop.{queue}"));
        let worker = row("CONSUMER", &format!("process shop.{queue}"));
        // The tree: the worker under the relay under the request.
        assert!(
            depth(&server, "POST /orders") < depth(&relay, "publish ")
                && depth(&relay, "publish ") < depth(&worker, "process "),
            "{server}\n{relay}\n{worker}"
        );
    }
    // One trace: the log section and the closing notes are about the same trace.
    assert!(
        stdout.contains(&format!("Log lines of trace {trace_id} ")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("--trace-id {trace_id}")),
        "{stdout}"
    );
    assert!(stdout.contains("Keep exploring"), "{stdout}");
}

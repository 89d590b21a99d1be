//! The side-by-side runner: the same load against each collector, pinned to one core,
//! in alternating rounds, measured from /proc; prints each run and a table of medians.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::load::{LoadReport, Protocol, SpanProfile};
use crate::process::{collector_args, free_ports, pinned, stop, wait_ready, Ready};
use crate::procfs;
use crate::sink::Sink;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Ours into the discard sink, spool fsync on (the default).
    Ours,
    /// rotel into the discard sink.
    Rotel,
    /// Ours into the discard sink with `spool.sync = none`.
    OursNofsync,
    /// Ours end to end into the embedded ClickHouse front (the real engine).
    OursEmbedded,
    /// Ours while the sink refuses every INSERT (an overloaded ClickHouse).
    OursOverload,
    /// rotel while the sink refuses every INSERT.
    RotelOverload,
}

impl Scenario {
    fn is_rotel(self) -> bool {
        matches!(self, Scenario::Rotel | Scenario::RotelOverload)
    }

    fn is_overload(self) -> bool {
        matches!(self, Scenario::OursOverload | Scenario::RotelOverload)
    }

    fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Our collector's release binary.
    #[arg(long, default_value = "target/release/collector")]
    pub collector: PathBuf,
    /// rotel's `rotel-agent` binary.
    #[arg(long)]
    pub rotel: Option<PathBuf>,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ours,rotel,ours-nofsync,ours-embedded"
    )]
    pub scenarios: Vec<Scenario>,
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    #[arg(long, default_value_t = 512)]
    pub spans: u16,
    #[arg(long, value_enum, default_value_t = SpanProfile::Basic)]
    pub profile: SpanProfile,
    #[arg(long, value_enum, default_value_t = Protocol::Grpc)]
    pub protocol: Protocol,
    /// Core the collector under test is pinned to.
    #[arg(long, default_value_t = 0)]
    pub collector_core: usize,
    /// Core of the load generator, the sink and the embedded engine.
    #[arg(long, default_value_t = 1)]
    pub load_core: usize,
    /// Spool budget in the overload scenarios (small, so it fills within the run).
    #[arg(long, default_value_t = 32 << 20)]
    pub overload_spool_bytes: u64,
    /// A collector past this resident memory is killed (MiB).
    #[arg(long, default_value_t = 4096)]
    pub rss_cap_mib: u64,
    /// Request timeout of the load generator.
    #[arg(long, default_value_t = 5_000)]
    pub timeout_ms: u64,
    /// Scratch directory (spools, logs, results).
    #[arg(long, default_value = ".local/bench")]
    pub work: PathBuf,
    /// Extra `--set key=value` for our collector (repeatable).
    #[arg(long = "set")]
    pub set: Vec<String>,
}

/// One measured run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub scenario: Scenario,
    pub round: u32,
    pub load: LoadReport,
    /// Collector CPU seconds from the start of the load until everything was written.
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
    pub rss_end_bytes: u64,
    /// Bytes of INSERTs into otel_traces the sink received (compressed / raw).
    pub wire_bytes: u64,
    pub raw_bytes: u64,
    pub inserts: u64,
    /// INSERTs the sink refused (overload scenarios).
    pub refused_inserts: u64,
    /// Rows stored in the real ClickHouse (embedded scenario).
    pub stored_rows: Option<u64>,
    /// CPU seconds the embedded engine used over the run.
    pub engine_cpu_seconds: Option<f64>,
    pub load_average: String,
}

impl Run {
    pub fn spans_per_cpu_second(&self) -> f64 {
        self.load.spans_acknowledged as f64 / self.cpu_seconds.max(1e-9)
    }

    pub fn bytes_per_span(&self) -> Option<f64> {
        (self.wire_bytes > 0)
            .then(|| self.wire_bytes as f64 / self.load.spans_acknowledged.max(1) as f64)
    }

    pub fn raw_bytes_per_span(&self) -> Option<f64> {
        (self.raw_bytes > 0)
            .then(|| self.raw_bytes as f64 / self.load.spans_acknowledged.max(1) as f64)
    }
}

pub async fn run(args: CompareArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.work)?;
    let work = std::fs::canonicalize(&args.work)?;
    if args.scenarios.iter().any(|s| s.is_rotel()) && args.rotel.is_none() {
        bail!("--rotel is needed for the rotel scenarios");
    }
    let engine = if args.scenarios.contains(&Scenario::OursEmbedded) {
        Some(Engine::start(&args.collector, Some(args.load_core), &work).await?)
    } else {
        None
    };
    println!(
        "# {} rounds of {} s, {} clients x {} {} spans/request over {:?}; collector on core {}, load on core {}; nproc {}; load average {}",
        args.rounds,
        args.seconds,
        args.clients,
        args.spans,
        args.profile.name(),
        args.protocol,
        args.collector_core,
        args.load_core,
        procfs::online_cpus(),
        procfs::load_average()
    );
    let results_path = work.join("results.jsonl");
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for &scenario in &args.scenarios {
            let run = run_one(&args, &work, scenario, round, engine.as_ref())
                .await
                .with_context(|| format!("{} round {round}", scenario.name()))?;
            println!("{}", run_line(&run));
            let mut line = serde_json::to_string(&run)?;
            line.push('\n');
            append(&results_path, &line)?;
            runs.push(run);
        }
    }
    if let Some(e) = engine {
        e.stop().await;
    }
    println!();
    print!("{}", table(&runs));
    println!("\n(results of every run: {})", results_path.display());
    Ok(())
}

fn append(path: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(line.as_bytes())
}

async fn run_one(
    args: &CompareArgs,
    work: &Path,
    scenario: Scenario,
    round: u32,
    engine: Option<&Engine>,
) -> anyhow::Result<Run> {
    let sink = Sink::new(false);
    let sink_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink_url = format!("http://{}", sink_listener.local_addr()?);
    let sink_task = tokio::spawn(sink.clone().serve(sink_listener));
    sink.set_refuse_inserts(scenario.is_overload());

    let [grpc, http, admin] = free_ports::<3>()?;
    let tag = format!("{}-{round}", scenario.name());
    let log = std::fs::File::create(work.join(format!("{tag}.log")))?;
    let database = format!("bench_{round}");
    let mut child = if scenario.is_rotel() {
        let rotel = args.rotel.as_ref().expect("checked");
        let mut cmd = pinned(args.collector_core, rotel);
        cmd.args(["start", "--exporter", "clickhouse"])
            .args(["--clickhouse-exporter-endpoint", &sink_url])
            .args(["--clickhouse-exporter-database", "otel"])
            .args(["--clickhouse-exporter-table-prefix", "otel"])
            .args(["--clickhouse-exporter-compression", "lz4"])
            .args(["--clickhouse-exporter-async-insert", "true"])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")]);
        cmd
    } else {
        let mut cmd = pinned(args.collector_core, &args.collector);
        let spool = work.join(format!("spool-{tag}"));
        let _ = std::fs::remove_dir_all(&spool);
        let url = match (scenario, engine) {
            (Scenario::OursEmbedded, Some(e)) => e.url.clone(),
            _ => sink_url.clone(),
        };
        let drain_secs = if scenario.is_overload() { 1 } else { 10 };
        collector_args(
            &mut cmd,
            &url,
            [grpc, http, admin],
            &spool,
            &database,
            drain_secs,
        );
        let sync = if scenario == Scenario::OursNofsync {
            "none"
        } else {
            "fsync"
        };
        cmd.args(["--set", &format!("spool.sync={sync}")]);
        if scenario.is_overload() {
            cmd.args([
                "--set",
                &format!("spool.max_disk_bytes={}", args.overload_spool_bytes),
            ]);
        }
        for s in &args.set {
            cmd.args(["--set", s]);
        }
        cmd.env("RUST_LOG", "warn");
        cmd
    }
    .stdout(log.try_clone()?)
    .stderr(log)
    .spawn()
    .context("starting the collector")?;
    let pid = child.id();
    let ready = if scenario.is_rotel() {
        Ready::Port(grpc)
    } else {
        Ready::Health(admin)
    };
    let started = wait_ready(&mut child, ready).await;
    if let Err(e) = started {
        stop(&mut child).await;
        sink_task.abort();
        return Err(e);
    }

    let engine_cpu0 = engine.map(|e| procfs::cpu_seconds(e.pid)).transpose()?;
    let cpu0 = procfs::cpu_seconds(pid)?;
    let endpoint = match args.protocol {
        Protocol::Grpc => format!("http://127.0.0.1:{grpc}"),
        Protocol::Http => format!("http://127.0.0.1:{http}"),
    };
    // A collector whose memory grows without bound is stopped at the cap: the
    // machine is shared, and the point is made.
    let cap = args.rss_cap_mib << 20;
    let (load, capped) = tokio::select! {
        load = run_load(args, &endpoint) => (load?, None),
        t = rss_cap(pid, cap) => {
            let at_kill = (procfs::cpu_seconds(pid)? - cpu0, procfs::peak_rss_bytes(pid)?);
            let _ = child.kill();
            (killed_at_cap(t), Some(at_kill))
        }
    };
    let load_average = procfs::load_average();
    // Everything acknowledged must leave before the CPU is read: batching delays differ.
    let stored_rows = match (scenario, engine) {
        _ if capped.is_some() => None,
        (Scenario::OursEmbedded, Some(e)) => Some(
            e.wait_rows(
                &database,
                load.spans_acknowledged,
                Duration::from_secs(60),
                Duration::from_secs(5),
            )
            .await?,
        ),
        _ if scenario.is_overload() => None,
        _ => {
            wait_settled(&sink, Duration::from_secs(2), Duration::from_secs(60)).await;
            None
        }
    };
    let (cpu_seconds, peak_rss_bytes, rss_end_bytes) = match capped {
        Some((cpu, peak)) => (cpu, peak, peak),
        None => (
            procfs::cpu_seconds(pid)? - cpu0,
            procfs::peak_rss_bytes(pid)?,
            procfs::rss_bytes(pid)?,
        ),
    };
    let engine_cpu_seconds = match (engine, engine_cpu0) {
        (Some(e), Some(c0)) if scenario == Scenario::OursEmbedded => {
            Some(procfs::cpu_seconds(e.pid)? - c0)
        }
        _ => None,
    };
    stop(&mut child).await;
    sink_task.abort();
    let traces = sink.stats().get("otel_traces").copied().unwrap_or_default();
    Ok(Run {
        scenario,
        round,
        load,
        cpu_seconds,
        peak_rss_bytes,
        rss_end_bytes,
        wire_bytes: traces.wire_bytes,
        raw_bytes: traces.raw_bytes,
        inserts: traces.inserts,
        refused_inserts: sink.refused_inserts(),
        stored_rows,
        engine_cpu_seconds,
        load_average,
    })
}

/// The load generator as its own process (this binary's `load`), on the load core.
async fn run_load(args: &CompareArgs, endpoint: &str) -> anyhow::Result<LoadReport> {
    let exe = std::env::current_exe()?;
    let protocol = match args.protocol {
        Protocol::Grpc => "grpc",
        Protocol::Http => "http",
    };
    let out = tokio::process::Command::new("taskset")
        .arg("-c")
        .arg(args.load_core.to_string())
        .arg(exe)
        .args(["load", "--endpoint", endpoint, "--protocol", protocol])
        .args(["--clients", &args.clients.to_string()])
        .args(["--spans", &args.spans.to_string()])
        .args(["--profile", args.profile.name()])
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--timeout-ms", &args.timeout_ms.to_string()])
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await?;
    if !out.status.success() {
        bail!("the load generator failed: {}", out.status);
    }
    let text = String::from_utf8(out.stdout)?;
    let last = text
        .lines()
        .last()
        .context("no output from the load generator")?;
    Ok(serde_json::from_str(last)?)
}

/// Returns (seconds since called) once `pid` holds more than `cap` bytes resident.
async fn rss_cap(pid: u32, cap: u64) -> f64 {
    let started = Instant::now();
    loop {
        if procfs::rss_bytes(pid).is_ok_and(|r| r > cap) {
            return started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The report of a load cut short: the collector was killed at the memory cap, and
/// the load generator with it, so nothing counts as acknowledged.
fn killed_at_cap(after: f64) -> LoadReport {
    LoadReport {
        seconds: after,
        first_error: Some(format!(
            "the collector passed the memory cap after {after:.1} s and was killed"
        )),
        ..Default::default()
    }
}

/// Waits until the sink has received nothing new for `quiet`.
async fn wait_settled(sink: &Sink, quiet: Duration, max: Duration) {
    let deadline = Instant::now() + max;
    let mut last = sink.stats();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sink.stats();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

fn run_line(r: &Run) -> String {
    let mut s = format!(
        "{:<14} round {}: {:>9.0} spans/s per core ({:>8} spans acked, {:.2} CPU s over {:.1} s), peak RSS {:>6.1} MiB, p99 {:>7.1} ms",
        r.scenario.name(),
        r.round,
        r.spans_per_cpu_second(),
        r.load.spans_acknowledged,
        r.cpu_seconds,
        r.load.seconds,
        mib(r.peak_rss_bytes),
        r.load.p99_ms,
    );
    if let Some(b) = r.bytes_per_span() {
        let _ = write!(
            s,
            ", {b:.1} B/span ({:.0} raw, {} inserts)",
            r.raw_bytes_per_span().unwrap_or(0.0),
            r.inserts
        );
    }
    if r.refused_inserts > 0 {
        let _ = write!(s, ", {} INSERTs refused by the sink", r.refused_inserts);
    }
    if let Some(rows) = r.stored_rows {
        let _ = write!(s, ", stored {rows} rows");
    }
    if let Some(c) = r.engine_cpu_seconds {
        let _ = write!(s, ", engine {c:.2} CPU s");
    }
    if r.load.refused + r.load.timeouts + r.load.errors > 0 {
        let _ = write!(
            s,
            ", refused {} (p99 {:.1} ms), timeouts {}, errors {}",
            r.load.refused, r.load.refusal_p99_ms, r.load.timeouts, r.load.errors
        );
    }
    if let Some(e) = &r.load.first_error {
        let _ = write!(s, " [first error: {e}]");
    }
    let _ = write!(s, ", RSS at end {:.1} MiB", mib(r.rss_end_bytes));
    s
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians per scenario, as a Markdown table, and ours / rotel ratios.
pub fn table(runs: &[Run]) -> String {
    let mut by: BTreeMap<Scenario, Vec<&Run>> = BTreeMap::new();
    for r in runs {
        by.entry(r.scenario).or_default().push(r);
    }
    let med = |rs: &[&Run], f: &dyn Fn(&Run) -> Option<f64>| {
        let v: Vec<f64> = rs.iter().filter_map(|r| f(r)).collect();
        (!v.is_empty()).then(|| median(v))
    };
    struct Row {
        per_core: f64,
        wall: f64,
        rss: f64,
        bytes: Option<f64>,
        raw: Option<f64>,
        p99: f64,
        refused: f64,
        timeouts: f64,
        runs: usize,
    }
    let rows: BTreeMap<Scenario, Row> = by
        .iter()
        .map(|(s, rs)| {
            let row = Row {
                per_core: med(rs, &|r| Some(r.spans_per_cpu_second())).unwrap_or(f64::NAN),
                wall: med(rs, &|r| Some(r.load.spans_per_second)).unwrap_or(f64::NAN),
                rss: med(rs, &|r| Some(mib(r.peak_rss_bytes))).unwrap_or(f64::NAN),
                bytes: med(rs, &|r| r.bytes_per_span()),
                raw: med(rs, &|r| r.raw_bytes_per_span()),
                p99: med(rs, &|r| Some(r.load.p99_ms)).unwrap_or(f64::NAN),
                refused: med(rs, &|r| Some(r.load.refused as f64)).unwrap_or(0.0),
                timeouts: med(rs, &|r| Some(r.load.timeouts as f64)).unwrap_or(0.0),
                runs: rs.len(),
            };
            (*s, row)
        })
        .collect();
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("—".to_string(), |v| format!("{v:.digits$}"));
    let mut out = String::from(
        "| collector (median of runs) | spans/s per core | acked spans/s (wall) | peak RSS MiB | bytes/span to ClickHouse (raw) | p99 ack ms | refused | timeouts | runs |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (s, r) in &rows {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.1} | {} ({}) | {:.1} | {:.0} | {:.0} | {} |",
            s.name(),
            r.per_core,
            r.wall,
            r.rss,
            opt(r.bytes, 1),
            opt(r.raw, 0),
            r.p99,
            r.refused,
            r.timeouts,
            r.runs
        );
    }
    // Under overload the figures that matter are memory, refusals and timeouts, not
    // ratios of throughput: only the ClickHouse path gets a ratio row.
    for (ours, theirs) in [(Scenario::Ours, Scenario::Rotel)] {
        let (Some(a), Some(b)) = (rows.get(&ours), rows.get(&theirs)) else {
            continue;
        };
        let ratio = |x: f64, y: f64| format!("{:.2}", x / y);
        let _ = writeln!(
            out,
            "| **{} / {}** | **{}** | {} | **{}** | **{}** | {} | | | |",
            ours.name(),
            theirs.name(),
            ratio(a.per_core, b.per_core),
            ratio(a.wall, b.wall),
            ratio(a.rss, b.rss),
            match (a.bytes, b.bytes) {
                (Some(x), Some(y)) => ratio(x, y),
                _ => "—".into(),
            },
            ratio(a.p99, b.p99),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(scenario: Scenario, spans: u64, cpu: f64, wire: u64) -> Run {
        Run {
            scenario,
            round: 1,
            load: LoadReport {
                seconds: 10.0,
                spans_acknowledged: spans,
                spans_per_second: spans as f64 / 10.0,
                p99_ms: 10.0,
                ..Default::default()
            },
            cpu_seconds: cpu,
            peak_rss_bytes: 50 << 20,
            rss_end_bytes: 40 << 20,
            wire_bytes: wire,
            raw_bytes: wire * 8,
            inserts: 3,
            refused_inserts: 0,
            stored_rows: None,
            engine_cpu_seconds: None,
            load_average: String::new(),
        }
    }

    #[test]
    fn medians_and_ratios() {
        let runs = [
            run(Scenario::Ours, 3_000_000, 10.0, 150_000_000),
            run(Scenario::Ours, 2_000_000, 10.0, 100_000_000),
            run(Scenario::Ours, 1_000_000, 10.0, 50_000_000),
            run(Scenario::Rotel, 1_000_000, 10.0, 85_000_000),
        ];
        let t = table(&runs);
        assert!(
            t.contains("| ours | 200000 | 200000 | 50.0 | 50.0 (400) | 10.0 | 0 | 0 | 3 |"),
            "{t}"
        );
        assert!(
            t.contains("| **ours / rotel** | **2.00** | 2.00 | **1.00** | **0.59** | 1.00 |"),
            "{t}"
        );
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), 2.5);
    }
}

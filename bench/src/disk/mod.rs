//! `bench disk`: what a span costs on disk in our layout and in the upstream
//! exporter's DDL, as the engine reports it.
//!
//! Distinct synthetic requests go through our real collector (OTLP/HTTP) into the
//! embedded ClickHouse; the same rows are then copied into the upstream exporter's
//! tables (`testkit::upstream::CURRENT`) in another database; every
//! table is merged (`OPTIMIZE … FINAL`) and measured from `system.parts` and
//! `system.parts_columns`. Each `--variant` (a candidate codec or sorting key for
//! our `otel_traces`) gets its own copy of the rows, with the engine's CPU for the
//! copy, the merge and a full read.

mod measure;
mod report;
mod variant;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use collector::schema::{quote_ident, ALL_ROLLUPS, TRACES, TRACE_ID_TS};
use futures::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use crate::engine::Engine;
use crate::load::SpanProfile;
use crate::process::{collector_args, free_ports, stop, wait_ready, Ready};
use crate::procfs;
pub use report::{DiskReport, VariantRun};
pub use variant::Variant;

const OURS: &str = "disk_ours";
const UPSTREAM: &str = "disk_upstream";

/// `--ids`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ids {
    /// The profile's span ids spell (client, request, index) and compress to a
    /// quarter of what an SDK's random ids do; each id (and every reference to it)
    /// is mapped through a bijection onto random-looking bytes.
    Random,
    /// As the profile makes them.
    AsGenerated,
}

#[derive(Debug, Clone, Args)]
pub struct DiskArgs {
    /// Our collector's release binary (also runs the embedded engine).
    #[arg(long, default_value = "target/release/collector")]
    pub collector: PathBuf,
    /// Distinct requests to send.
    #[arg(long, default_value_t = 2000)]
    pub requests: u32,
    /// Spans per request.
    #[arg(long, default_value_t = 512)]
    pub spans: u16,
    #[arg(long, value_enum, default_value_t = SpanProfile::Rich)]
    pub profile: SpanProfile,
    /// Service instances (resources) the requests come from, in turn.
    #[arg(long, default_value_t = 8)]
    pub instances: u32,
    /// Time between the starts of consecutive requests' spans: the rows cover
    /// `requests × interval` of time, ending a minute ago.
    #[arg(long, default_value_t = 100)]
    pub request_interval_ms: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Trace and span ids as the profile makes them, or each mapped one to one onto
    /// random-looking bytes as SDKs make them.
    #[arg(long, value_enum, default_value_t = Ids::Random)]
    pub ids: Ids,
    /// A candidate change to our otel_traces, measured on a copy of the same rows
    /// against our DDL as it is (repeatable):
    /// `NAME=COLUMN:CODEC;COLUMN:CODEC;order_by:(…);primary_key:(…)`.
    #[arg(long = "variant")]
    pub variants: Vec<Variant>,
    /// Copies (and merges) of each variant, for the spread of their CPU cost.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Columns listed.
    #[arg(long, default_value_t = 12)]
    pub top: usize,
    /// Core the embedded engine is pinned to (none: not pinned).
    #[arg(long)]
    pub engine_core: Option<usize>,
    /// Scratch directory (engine data, spool, logs, the JSON report).
    #[arg(long, default_value = ".local/bench-disk")]
    pub work: PathBuf,
}

pub async fn run(args: DiskArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.work)?;
    let work = std::fs::canonicalize(&args.work)?;
    // A mistyped variant fails now, not after the ingest.
    for v in &args.variants {
        v.statements(OURS)?;
    }
    let load_average_start = procfs::load_average();
    let engine = Engine::start(&args.collector, args.engine_core, &work).await?;
    let result = measure_all(&args, &work, &engine, load_average_start).await;
    engine.stop().await;
    let report = result?;
    let json = work.join(format!("disk-{}.json", args.profile.name()));
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    print!("{}", report.markdown(args.top));
    println!("\n(every figure: {})", json.display());
    Ok(())
}

async fn measure_all(
    args: &DiskArgs,
    work: &Path,
    engine: &Engine,
    load_average_start: String,
) -> anyhow::Result<DiskReport> {
    let client = clickhouse::Client::default().with_url(&engine.url);
    let spans = u64::from(args.requests) * u64::from(args.spans);

    let cpu0 = procfs::cpu_seconds(engine.pid)?;
    let started = Instant::now();
    ingest(args, work, engine, spans).await?;
    let ingest = measure::Cost {
        wall_seconds: started.elapsed().as_secs_f64(),
        engine_cpu_seconds: procfs::cpu_seconds(engine.pid)? - cpu0,
    };
    eprintln!(
        "{spans} spans stored through the collector in {:.1} s",
        ingest.wall_seconds
    );

    let mut tables: Vec<&str> = vec![TRACES.name, TRACE_ID_TS.name];
    tables.extend(ALL_ROLLUPS.iter().map(|r| r.name));
    let mut ours_optimize = measure::Cost::default();
    for table in &tables {
        ours_optimize = ours_optimize + optimize(engine, OURS, table).await?;
    }
    for sql in upstream_statements(UPSTREAM) {
        engine.query(&sql).await?;
    }
    let copy = measure::timed(engine, &copy_traces(OURS, UPSTREAM)).await?;
    let upstream_tables: Vec<String> = client
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(UPSTREAM)
        .fetch_all()
        .await?;
    for table in tables
        .iter()
        .filter(|t| upstream_tables.iter().any(|u| u == *t))
    {
        optimize(engine, UPSTREAM, table).await?;
    }
    eprintln!(
        "copied into the upstream tables in {:.1} s",
        copy.wall_seconds
    );

    let ours_fingerprint = measure::fingerprint(&client, OURS).await?;
    let mut variants = Vec::new();
    if !args.variants.is_empty() {
        let all = std::iter::once(Variant::baseline()).chain(args.variants.iter().cloned());
        for (i, v) in all.enumerate() {
            variants.push(
                measure_variant(engine, &client, &v, i, args.rounds, &ours_fingerprint).await?,
            );
        }
    }

    Ok(DiskReport {
        profile: args.profile.name().to_string(),
        requests: args.requests,
        spans_per_request: args.spans,
        spans,
        nproc: procfs::online_cpus(),
        load_average_start,
        load_average_end: procfs::load_average(),
        ingest,
        ours_optimize,
        ours: measure::table_sizes(&client, OURS, &tables).await?,
        upstream: measure::table_sizes(&client, UPSTREAM, &tables).await?,
        upstream_tables,
        ours_columns: measure::column_sizes(&client, OURS, TRACES.name).await?,
        upstream_columns: measure::column_sizes(&client, UPSTREAM, TRACES.name).await?,
        ours_fingerprint,
        upstream_fingerprint: measure::fingerprint(&client, UPSTREAM).await?,
        copy,
        variants,
    })
}

/// Sends the requests through our collector and waits until every span is stored
/// and the collector has drained (so the views have run for every INSERT).
async fn ingest(args: &DiskArgs, work: &Path, engine: &Engine, spans: u64) -> anyhow::Result<()> {
    let [grpc, http, admin] = free_ports::<3>()?;
    let spool = work.join("spool");
    let _ = std::fs::remove_dir_all(&spool);
    let log = std::fs::File::create(work.join("collector.log"))?;
    let mut child = collector_args(
        &mut Command::new(&args.collector),
        &engine.url,
        [grpc, http, admin],
        &spool,
        OURS,
        120,
    )
    .env("RUST_LOG", "warn")
    .stdout(log.try_clone()?)
    .stderr(log)
    .spawn()
    .context("starting the collector")?;
    let sent = async {
        wait_ready(&mut child, Ready::Health(admin)).await?;
        send(args, &format!("http://127.0.0.1:{http}/v1/traces")).await?;
        let stored = engine
            .wait_rows(
                OURS,
                spans,
                Duration::from_secs(1800),
                Duration::from_secs(120),
            )
            .await?;
        if stored != spans {
            bail!("{stored} spans stored of {spans} acknowledged (see collector.log)");
        }
        Ok(())
    }
    .await;
    stop(&mut child).await;
    sent
}

/// Every request once, `concurrency` in flight; a refusal (429, 503) is retried.
async fn send(args: &DiskArgs, url: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let interval = args.request_interval_ms * 1_000_000;
    let first = now - 60_000_000_000 - u64::from(args.requests) * interval;
    let profile = args.profile.synthetic();
    let done = AtomicU32::new(0);
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..args.requests)
        .map(|r| {
            let (http, done) = (&http, &done);
            async move {
                let mut request = profile.traces_request(
                    r % args.instances.max(1),
                    r,
                    args.spans,
                    first + u64::from(r) * interval,
                );
                if args.ids == Ids::Random {
                    scramble_ids(&mut request);
                }
                let body = request.encode_to_vec();
                post(http, url, body).await?;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(200) {
                    eprintln!("{n} of {} requests acknowledged", args.requests);
                }
                Ok(())
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// Replaces every trace, span and parent id by its image under a bijection, so ids
/// stay distinct and parents stay linked.
fn scramble_ids(request: &mut ExportTraceServiceRequest) {
    fn scramble(id: &mut [u8]) {
        for half in id.chunks_exact_mut(8) {
            let v = u64::from_be_bytes(half.try_into().expect("8 bytes"));
            half.copy_from_slice(&testkit::synthetic::mix64(v).to_be_bytes());
        }
    }
    for span in request
        .resource_spans
        .iter_mut()
        .flat_map(|r| &mut r.scope_spans)
        .flat_map(|s| &mut s.spans)
    {
        scramble(&mut span.trace_id);
        scramble(&mut span.span_id);
        scramble(&mut span.parent_span_id);
    }
}

async fn post(http: &reqwest::Client, url: &str, body: Vec<u8>) -> anyhow::Result<()> {
    let body = bytes::Bytes::from(body);
    for attempt in 0..600 {
        let response = http
            .post(url)
            .header("content-type", "application/x-protobuf")
            .body(body.clone())
            .send()
            .await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        match status {
            200 => {
                let answer = ExportTraceServiceResponse::decode(bytes)?;
                if let Some(p) = answer.partial_success.filter(|p| p.rejected_spans > 0) {
                    bail!("{} spans rejected: {}", p.rejected_spans, p.error_message);
                }
                return Ok(());
            }
            429 | 503 => {
                tokio::time::sleep(Duration::from_millis(100 * (1 + attempt.min(9)))).await
            }
            _ => bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
        }
    }
    bail!("the collector kept refusing a request for ten minutes")
}

/// The upstream exporter's DDL for `database`, the database included.
fn upstream_statements(database: &str) -> Vec<String> {
    std::iter::once(format!(
        "CREATE DATABASE IF NOT EXISTS {}",
        quote_ident(database)
    ))
    .chain(testkit::upstream::statements(
        testkit::upstream::CURRENT,
        database,
    ))
    .collect()
}

/// Our otel_traces rows into another database's table: the column names are the
/// same in both layouts, and so are the types.
fn copy_traces(from: &str, to: &str) -> String {
    let columns = TRACES.insert_columns();
    format!(
        "INSERT INTO {to}.{t} ({columns}) SELECT {columns} FROM {from}.{t}",
        to = quote_ident(to),
        from = quote_ident(from),
        t = quote_ident(TRACES.name),
    )
}

async fn optimize(engine: &Engine, database: &str, table: &str) -> anyhow::Result<measure::Cost> {
    measure::timed(
        engine,
        &format!(
            "OPTIMIZE TABLE {}.{} FINAL",
            quote_ident(database),
            quote_ident(table)
        ),
    )
    .await
}

/// The variant's table in `disk_variant_<index>`, filled with a copy of our rows,
/// merged and read whole, `rounds` times (the database dropped before each); sizes
/// of the last.
async fn measure_variant(
    engine: &Engine,
    client: &clickhouse::Client,
    v: &Variant,
    index: usize,
    rounds: u32,
    ours: &measure::Fingerprint,
) -> anyhow::Result<VariantRun> {
    let database = format!("disk_variant_{index}");
    let mut run = VariantRun {
        name: v.name.clone(),
        changes: v.changes(),
        ..Default::default()
    };
    for _ in 0..rounds.max(1) {
        engine
            .query(&format!(
                "DROP DATABASE IF EXISTS {}",
                quote_ident(&database)
            ))
            .await?;
        engine
            .query(&format!("CREATE DATABASE {}", quote_ident(&database)))
            .await?;
        for sql in v.statements(&database)? {
            engine.query(&sql).await?;
        }
        run.insert
            .push(measure::timed(engine, &copy_traces(OURS, &database)).await?);
        run.optimize
            .push(optimize(engine, &database, TRACES.name).await?);
        // Every column read and decompressed: what a higher level costs queries.
        let read = format!(
            "SELECT count() FROM {}.{} WHERE NOT ignore(*)",
            quote_ident(&database),
            quote_ident(TRACES.name)
        );
        run.read.push(measure::timed(engine, &read).await?);
    }
    if measure::fingerprint(client, &database).await? != *ours {
        bail!("variant {} holds other rows than ours", v.name);
    }
    run.size = measure::table_sizes(client, &database, &[TRACES.name])
        .await?
        .pop()
        .unwrap_or_default();
    run.columns = measure::column_sizes(client, &database, TRACES.name).await?;
    eprintln!(
        "variant {}: {} bytes on disk, copy {:.1} CPU s, merge {:.1} CPU s, read {:.1} CPU s",
        v.name,
        run.size.bytes_on_disk,
        run.insert.last().map_or(0.0, |c| c.engine_cpu_seconds),
        run.optimize.last().map_or(0.0, |c| c.engine_cpu_seconds),
        run.read.last().map_or(0.0, |c| c.engine_cpu_seconds)
    );
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_statements_create_the_traces_tables_in_the_database() {
        let s = upstream_statements("up");
        assert_eq!(s[0], "CREATE DATABASE IF NOT EXISTS `up`");
        assert!(s
            .iter()
            .any(|s| s.starts_with("CREATE TABLE IF NOT EXISTS `up`.otel_traces (")));
    }

    #[test]
    fn scrambled_ids_stay_distinct_and_linked() {
        let mut request =
            testkit::synthetic::Profile::Rich.traces_request(1, 2, 64, 1_700_000_000_000_000_000);
        let before = request.clone();
        scramble_ids(&mut request);
        let spans = |r: &ExportTraceServiceRequest| -> Vec<_> {
            r.resource_spans[0]
                .scope_spans
                .iter()
                .flat_map(|s| s.spans.clone())
                .collect()
        };
        let (old, new) = (spans(&before), spans(&request));
        let ids: std::collections::HashSet<_> = new.iter().map(|s| s.span_id.clone()).collect();
        assert_eq!(ids.len(), 64);
        for (o, n) in old.iter().zip(&new) {
            assert_ne!(o.span_id, n.span_id);
            assert_eq!(n.span_id.len(), 8);
            assert_eq!(n.trace_id.len(), 16);
            assert_eq!(o.parent_span_id.is_empty(), n.parent_span_id.is_empty());
            // A parent inside the request is still found under its new id.
            if let Some(p) = old.iter().position(|p| p.span_id == o.parent_span_id) {
                assert_eq!(new[p].span_id, n.parent_span_id);
            }
        }
    }

    #[test]
    fn copy_names_every_column_we_write() {
        let sql = copy_traces("a", "b");
        assert!(sql.starts_with("INSERT INTO `b`.`otel_traces` (`Timestamp`, `TraceId`,"));
        assert!(sql.ends_with("`Links.Attributes` FROM `a`.`otel_traces`"));
    }
}

//! The collector benchmark: `bench load` (OTLP load generator), `bench sink` (discard
//! ClickHouse), `bench compare` (ours and rotel side by side) and `bench disk` (bytes
//! per span on disk, ours vs the upstream DDL). `scripts/bench.sh` builds everything
//! and runs the comparison; see BENCHMARKS.md.

use bench::{compare, disk, load, procfs, sink};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send OTLP trace requests for a while; print what was acknowledged as JSON.
    Load(load::LoadArgs),
    /// Serve a discard ClickHouse HTTP endpoint until killed.
    Sink {
        #[arg(long, default_value = "127.0.0.1:8123")]
        addr: String,
        /// Print every statement other than INSERT data.
        #[arg(long)]
        log_queries: bool,
        /// Refuse every INSERT as an overloaded ClickHouse does (Code 252).
        #[arg(long)]
        refuse_inserts: bool,
    },
    /// Run the collectors side by side and print the comparison table.
    Compare(compare::CompareArgs),
    /// Store spans through our collector into the embedded ClickHouse, copy them into
    /// the upstream exporter's tables, and print what each costs on disk.
    Disk(disk::DiskArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        // A single-threaded runtime: the load generator owns one core.
        Cmd::Load(args) => runtime(false)?.block_on(async {
            let report = load::run(&args).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }),
        Cmd::Sink {
            addr,
            log_queries,
            refuse_inserts,
        } => runtime(true)?.block_on(async {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            eprintln!("discard sink on http://{}", listener.local_addr()?);
            let sink = sink::Sink::new(log_queries);
            sink.set_refuse_inserts(refuse_inserts);
            let stats = sink.clone();
            tokio::spawn(async move {
                let mut last = Default::default();
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    let now = stats.stats();
                    if now != last {
                        eprintln!(
                            "discard sink: {}",
                            serde_json::to_string(&now).unwrap_or_default()
                        );
                        last = now;
                    }
                }
            });
            sink.serve(listener).await?;
            Ok(())
        }),
        Cmd::Compare(args) => {
            // The runner, its in-process sink and the load generator it starts share
            // the load core; the collector under test gets the other one.
            procfs::pin_self(args.load_core)?;
            runtime(false)?.block_on(compare::run(args))
        }
        Cmd::Disk(args) => runtime(true)?.block_on(disk::run(args)),
    }
}

fn runtime(multi: bool) -> std::io::Result<tokio::runtime::Runtime> {
    if multi {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
}

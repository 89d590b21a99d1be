use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use collector::embedded::EmbeddedClickHouse;
use collector::{Collector, Config};

/// OTLP (gRPC and HTTP) in, ClickHouse in the OpenTelemetry layout out.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML config file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override any setting: `--set batching.max_rows=50000` (repeatable).
    #[arg(long = "set", value_parser = parse_kv)]
    set: Vec<(String, String)>,
    #[arg(long)]
    grpc_addr: Option<String>,
    #[arg(long)]
    http_addr: Option<String>,
    #[arg(long)]
    admin_addr: Option<String>,
    /// The web UI's address (`127.0.0.1:16686`); empty disables it.
    #[arg(long)]
    ui_addr: Option<String>,
    /// ClickHouse HTTP URL; without one the embedded ClickHouse is used.
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
    /// Seconds to flush queued data on SIGTERM / Ctrl-C.
    #[arg(long, default_value_t = 10)]
    drain_secs: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run only the embedded ClickHouse (for tests and tools); prints its URL.
    EmbeddedClickhouse {
        /// Install it and exit.
        #[arg(long)]
        install_only: bool,
    },
    /// Print the statements that move RED rollups made by an earlier release to
    /// their current shape, for this configuration's database (and cluster); see
    /// docs/upgrading.md.
    MigrationSql,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut overrides = cli.set.clone();
    for (key, value) in [
        ("receivers.grpc_addr", &cli.grpc_addr),
        ("receivers.http_addr", &cli.http_addr),
        ("admin.addr", &cli.admin_addr),
        ("ui.addr", &cli.ui_addr),
        ("clickhouse.url", &cli.clickhouse_url),
    ] {
        if let Some(v) = value {
            overrides.push((key.to_string(), v.clone()));
        }
    }
    let config = Config::load(cli.config.as_deref(), std::env::vars(), &overrides)?;
    if cli.print_config {
        print!("{}", toml::to_string_pretty(&config.redacted())?);
        return Ok(());
    }
    collector::telemetry::init_logging(&config.log.level);

    if let Some(Command::MigrationSql) = cli.command {
        for sql in
            collector::schema::migrate::manual_statements(&collector::app::schema_options(&config))
        {
            if sql.starts_with("--") {
                println!("\n{sql}");
            } else {
                println!("{sql};");
            }
        }
        return Ok(());
    }
    if let Some(Command::EmbeddedClickhouse { install_only }) = cli.command {
        if install_only {
            collector::embedded::install(&config.embedded).await?;
            return Ok(());
        }
        let ch = EmbeddedClickHouse::start(&config.embedded).await?;
        println!("{}", ch.url());
        wait_for_signal().await?;
        ch.stop().await;
        return Ok(());
    }

    tracing::info!(config = %serde_json::to_string(&config.redacted())?, "starting");
    let collector = Collector::start(config).await?;
    wait_for_signal().await?;
    tracing::info!("stopping: flushing queued data");
    collector
        .shutdown(Duration::from_secs(cli.drain_secs))
        .await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
    }
    Ok(())
}

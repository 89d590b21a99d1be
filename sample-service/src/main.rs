//! `sample-service`: the shop API, its outbox relay and workers, or one downstream
//! simulator on its own.

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sample_service::downstream::simulator;
use sample_service::faults::FaultSwitch;
use sample_service::{Config, Shop};

#[derive(Parser)]
#[command(
    version,
    about = "An instrumented shop API with the patterns of high-load services"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one downstream simulator (inventory, shipping or recommendations).
    Downstream {
        #[arg(long, value_parser = ["inventory", "shipping", "recommendations"])]
        name: String,
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: std::net::SocketAddr,
    },
    /// Print what the collector stored, read back from ClickHouse: RED per service and
    /// route, the latest complete order trace as a waterfall, its log lines.
    Report(sample_service::report::ReportArgs),
}

async fn ctrl_c_or_term() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Downstream { name, listen }) => {
            let name: &'static str = simulator::NAMES
                .into_iter()
                .find(|n| *n == name)
                .expect("clap checked the name");
            let guard = agent::builder().service_name(name).init()?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            tracing::info!(%listen, service = name, "downstream simulator started");
            simulator::serve(
                name,
                listener,
                Arc::new(FaultSwitch::default()),
                guard.agent().clone(),
                ctrl_c_or_term(),
            )
            .await?;
            guard.shutdown_async().await.ok();
        }
        Some(Command::Report(args)) => {
            sample_service::report::run(&args, &mut std::io::stdout()).await?;
        }
        None => {
            let guard = agent::builder()
                .configure(|c| {
                    if c.service_name == "unknown_service" {
                        c.service_name = "shop".into();
                    }
                })
                .init()?;
            let factory: sample_service::AgentFactory =
                Arc::new(|name| agent::builder().service_name(name));
            let shop = Shop::start(cli.config, guard.agent().clone(), factory).await?;
            ctrl_c_or_term().await;
            tracing::info!("stopping");
            shop.shutdown().await;
            guard.shutdown_async().await.ok();
        }
    }
    Ok(())
}

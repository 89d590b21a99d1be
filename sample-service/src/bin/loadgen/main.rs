//! `loadgen`: realistic traffic for the shop sample service, ending with a RED table per
//! route (see `sample-service/LOADGEN.md`).
//!
//! - [`cli`] flags; [`mix`] what a worker does next (seeded), over [`zipf`] hot keys;
//! - [`auth`] RS256 bearer tokens per principal; [`trace`] W3C traceparent;
//! - [`runner`] workers, bursts, requests; [`pacing`] budget, deadline and Retry-After holds;
//! - [`stats`] per-route counts and histograms; [`report`] the table and the JSON (its fields
//!   are documented there); [`progress`] the bar on stderr.
//!
//! Ctrl-C stops the run early and still prints the report.
//!
//! Exit codes: 0 when the run completed, whatever the service answered; 1 when no request got
//! any answer (service down) or setup failed (key, JSON file); 2 for bad flags.

mod auth;
mod cli;
mod mix;
mod pacing;
mod progress;
mod report;
mod runner;
mod stats;
mod trace;
mod zipf;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;

use crate::report::{Report, RunFacts};

fn main() -> ExitCode {
    let args = cli::Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: cli::Args) -> Result<ExitCode> {
    let minter = auth::TokenMinter::from_pem_file(
        &args.jwt_private_key,
        &args.jwt_kid,
        &args.jwt_issuer,
        &args.jwt_audience,
        args.principals,
    )?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let plan = mix::Plan::new(
        args.products,
        args.principals,
        args.zipf_exponent,
        rand::random(),
    );
    let config = runner::Config {
        base_urls: args.base_urls.clone(),
        requests: args.requests,
        duration: args.duration,
        concurrency: args.concurrency,
        seed,
        burst_every: args.burst_every,
        burst_size: args.burst_size,
        burst_parallel: args.burst_parallel,
        request_timeout: args.request_timeout,
        traceparent: !args.no_traceparent,
    };
    let base_urls: Vec<String> = args.base_urls.iter().map(|u| u.to_string()).collect();
    eprintln!(
        "loadgen: seed {seed}; {} for {:?} or {} requests, {} workers, {} principals, {} products",
        base_urls.join(" "),
        args.duration,
        args.requests,
        args.concurrency,
        args.principals,
        args.products
    );
    let progress = Arc::new(runner::Progress::default());
    let shared = runner::shared(&config, minter, plan, progress.clone())?;
    let bar = progress::Bar::start(
        progress::enabled(args.no_progress),
        args.requests,
        args.duration,
        shared.clone(),
        progress,
    );
    let on_ctrl_c = {
        let shared = shared.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("loadgen: interrupted, finishing the requests in flight");
                runner::interrupt(&shared);
            }
        })
    };
    let outcome = runner::run(&config, shared).await;
    on_ctrl_c.abort();
    bar.finish();

    let report = Report::new(
        &outcome.stats,
        RunFacts {
            seed,
            base_urls: base_urls.clone(),
            concurrency: args.concurrency,
            principals: args.principals,
            products: args.products,
            elapsed_s: outcome.elapsed.as_secs_f64(),
            stopped_by: outcome.stopped_by,
            held_back: outcome.held_back,
            bursts: outcome.bursts,
            sample_order_traces: outcome.sample_order_traces,
        },
    );
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report).context("encoding the JSON report")?;
        std::fs::write(path, json)
            .with_context(|| format!("writing the JSON report to {}", path.display()))?;
    }
    if outcome.answered == 0 {
        eprintln!(
            "loadgen: no request got an answer from {} ({} sent; first error: {}) — is the service running?",
            base_urls.join(" "),
            report.requests,
            outcome
                .first_transport_error
                .as_deref()
                .unwrap_or("none, nothing was sent"),
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

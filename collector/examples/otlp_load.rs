//! OTLP/gRPC load generator: clients send span requests in a loop and count what the
//! collector acknowledged.
//!
//! cargo run --release -p collector --example otlp_load -- --endpoint http://127.0.0.1:4317 \
//!     --clients 8 --spans 10 --seconds 10 --pause-ms 5

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    endpoint: String,
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// Spans per request.
    #[arg(long, default_value_t = 10)]
    spans: u16,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Pause between a client's requests.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    spans: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let counts = counts.clone();
        let endpoint = args.endpoint.clone();
        let (spans, pause) = (args.spans, Duration::from_millis(args.pause_ms));
        tasks.push(tokio::spawn(async move {
            let mut grpc = TraceServiceClient::connect(endpoint).await?;
            let mut n = 0u32;
            while Instant::now() < deadline {
                let req = collector::synthetic::traces_request(client, n, spans, now);
                n += 1;
                match grpc.export(req).await {
                    Ok(_) => {
                        counts.requests.fetch_add(1, Relaxed);
                        counts.spans.fetch_add(u64::from(spans), Relaxed);
                    }
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                        counts.refused.fetch_add(1, Relaxed);
                    }
                    Err(_) => {
                        counts.errors.fetch_add(1, Relaxed);
                    }
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let spans = counts.spans.load(Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "seconds": secs,
            "requests_acknowledged": counts.requests.load(Relaxed),
            "spans_acknowledged": spans,
            "spans_per_second": (spans as f64 / secs).round(),
            "refused": counts.refused.load(Relaxed),
            "errors": counts.errors.load(Relaxed),
        })
    );
    Ok(())
}

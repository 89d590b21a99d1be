//! Server CPU per request of an axum handler in three configurations, side by
//! side on the same load, for two request shapes:
//!
//! - `hello`: a minimal handler that logs one line;
//! - `nested`: the handler calls 5 nested `#[instrument]` functions, the
//!   innermost logging one line, before answering (6 spans per request);
//!
//! and three configurations:
//!
//! - (a) uninstrumented;
//! - (b) this agent: SERVER span + RED + one JSON log line per request, all three
//!   exported over OTLP to a running collector;
//! - (c) the standard stack: opentelemetry 0.33 SDK + tracing-opentelemetry 0.34 +
//!   opentelemetry-otlp (tonic) + tower-http `TraceLayer` + tracing-subscriber
//!   JSON + the appender bridge for logs + an SDK histogram for the same metric.
//!
//! ```sh
//! cargo bench -p agent --bench overhead
//! ```
//!
//! Each server runs in a child process pinned to CPU 1 on a current-thread
//! runtime (the load generator, the collector and ClickHouse stay on CPU 0); its
//! CPU time (all threads, from /proc) over the measured requests divided by
//! their number is the figure. The load is open-loop at a fixed rate, the same
//! for all three. Rounds interleave a/b/c (one server per configuration and
//! round, measured on both shapes); every round and the medians are reported,
//! and at the end how many spans and log records of each stack reached the
//! collector. `OVERHEAD_REQUESTS` (20000), `OVERHEAD_RATE` (2500/s),
//! `OVERHEAD_ROUNDS` (5) and `OVERHEAD_CONCURRENCY` (64 in flight at most)
//! override the defaults.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "OVERHEAD_CHILD_MODE";
const ENDPOINT_ENV: &str = "OVERHEAD_ENDPOINT";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Plain,
    Agent,
    Standard,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Plain, Mode::Agent, Mode::Standard];

    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Agent => "agent",
            Mode::Standard => "standard",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// The request shapes: the path each one requests, and the spans each
/// request makes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    Hello,
    Nested,
}

impl Shape {
    const ALL: [Shape; 2] = [Shape::Hello, Shape::Nested];

    fn name(self) -> &'static str {
        match self {
            Shape::Hello => "hello",
            Shape::Nested => "nested",
        }
    }

    fn spans_per_request(self) -> u64 {
        match self {
            Shape::Hello => 1,
            Shape::Nested => 6,
        }
    }
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("warning: could not pin to CPU {cpu}");
        }
    }
}

fn main() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        let mode = Mode::parse(&mode).expect("known mode");
        let endpoint = std::env::var(ENDPOINT_ENV).expect("endpoint");
        pin_to_cpu(1);
        server::run(mode, &endpoint);
        return;
    }
    // `cargo test --benches` runs benches with no arguments but `--bench`-less:
    // only measure when invoked as a bench.
    if !std::env::args().any(|a| a == "--bench") {
        println!("overhead: run with `cargo bench -p agent --bench overhead`");
        return;
    }
    pin_to_cpu(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(drive());
}

/// CPU time a thread has run, in ns (the first field of its `schedstat`).
fn thread_cpu_ns(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// (all threads, the main thread) CPU time of `pid`, in ns.
fn process_cpu_ns(pid: u32) -> (u64, u64) {
    let mut total = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            total += thread_cpu_ns(&task.path());
        }
    }
    let main = thread_cpu_ns(std::path::Path::new(&format!("/proc/{pid}/task/{pid}")));
    (total, main)
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(mode: Mode, endpoint: &str) -> Server {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .env(CHILD_ENV, mode.name())
        .env(ENDPOINT_ENV, endpoint)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null()) // the JSON lines; both stacks write them
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let port = loop {
        let line = lines.next().expect("server output").expect("read");
        if let Some(port) = line.strip_prefix("LISTENING ") {
            break port.trim().parse().expect("port");
        }
        eprintln!("[{}] {line}", mode.name());
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, port }
}

/// Open-loop load at a fixed rate, the same for every configuration: CPU per
/// request depends on how many requests each wake-up finds, so a closed loop
/// (whose rate follows each server's speed) would not compare like with like.
async fn load(
    client: &reqwest::Client,
    port: u16,
    shape: Shape,
    requests: usize,
    rate: usize,
    concurrency: usize,
) {
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..requests {
        tokio::time::sleep_until(started + period * i as u32).await;
        let permit = limit.clone().acquire_owned().await.expect("semaphore");
        let client = client.clone();
        tasks.spawn(async move {
            let url = format!("http://127.0.0.1:{port}/{}/{}", shape.name(), i % 16);
            let ok = match client.get(url).send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            };
            drop(permit);
            ok
        });
    }
    let mut failures = 0;
    while let Some(ok) = tasks.join_next().await {
        if !ok.unwrap_or(false) {
            failures += 1;
        }
    }
    assert_eq!(failures, 0, "requests failed");
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn drive() {
    let requests = env_number("OVERHEAD_REQUESTS", 20_000);
    let rounds = env_number("OVERHEAD_ROUNDS", 5);
    let concurrency = env_number("OVERHEAD_CONCURRENCY", 64);
    let rate = env_number("OVERHEAD_RATE", 2500);
    let collector = testkit::TestCollector::start("agent_bench").await;
    let endpoint = collector.grpc_endpoint();
    println!(
        "overhead: {requests} requests x {rounds} rounds per shape at {rate} req/s (at most {concurrency} in flight); collector at {endpoint}"
    );
    // results[shape][mode] = µs CPU per request, one per round.
    let mut results = vec![vec![Vec::new(); Mode::ALL.len()]; Shape::ALL.len()];
    for round in 0..rounds {
        for (m, mode) in Mode::ALL.iter().enumerate() {
            let server = spawn_server(*mode, &endpoint);
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(concurrency)
                .build()
                .expect("client");
            for (s, shape) in Shape::ALL.iter().enumerate() {
                // Warm-up: connections, lazily built series, exporter channels.
                load(
                    &client,
                    server.port,
                    *shape,
                    requests / 10,
                    rate,
                    concurrency,
                )
                .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let pid = server.child.id();
                let (cpu_before, main_before) = process_cpu_ns(pid);
                let started = Instant::now();
                load(&client, server.port, *shape, requests, rate, concurrency).await;
                let wall = started.elapsed();
                let (cpu_after, main_after) = process_cpu_ns(pid);
                let per_request = |ns: u64| ns as f64 / 1000.0 / requests as f64;
                let us_per_request = per_request(cpu_after - cpu_before);
                println!(
                    "round {round} {:>6} {:>8}: {us_per_request:6.2} µs CPU/request, {:6.2} on the request thread ({:.0} req/s)",
                    shape.name(),
                    mode.name(),
                    per_request(main_after - main_before),
                    requests as f64 / wall.as_secs_f64()
                );
                results[s][m].push(us_per_request);
            }
            drop(server);
        }
    }
    for (s, shape) in Shape::ALL.iter().enumerate() {
        let mut medians = [0.0; 3];
        for (m, mode) in Mode::ALL.iter().enumerate() {
            let samples = &mut results[s][m];
            let rounds: Vec<String> = samples.iter().map(|v| format!("{v:.2}")).collect();
            medians[m] = median(samples);
            println!(
                "{:>6} {:>8}: {:6.2} µs CPU/request (median of {})",
                shape.name(),
                mode.name(),
                medians[m],
                rounds.join(", ")
            );
        }
        let [a, b, c] = medians;
        println!(
            "{:>6} ratio (b-a)/(c-a) = ({b:.2}-{a:.2})/({c:.2}-{a:.2}) = {:.3}  (target <= 0.25)",
            shape.name(),
            (b - a) / (c - a)
        );
        // The ratio of each round's own figures, to show the spread.
        let per_round: Vec<String> = (0..results[s][0].len())
            .map(|r| {
                let (a, b, c) = (results[s][0][r], results[s][1][r], results[s][2][r]);
                format!("{:.3}", (b - a) / (c - a))
            })
            .collect();
        println!(
            "{:>6} per-round ratios (unsorted): {}",
            shape.name(),
            per_round.join(", ")
        );
    }
    // Both stacks should have delivered what they recorded; a stack that drops
    // (its queues full) looks cheaper than it is, so show what arrived. Servers
    // are killed, so each run loses at most its last unsent batch.
    let per_shape = ((requests + requests / 10) * rounds) as u64;
    let spans_sent: u64 = Shape::ALL
        .iter()
        .map(|s| s.spans_per_request() * per_shape)
        .sum();
    let logs_sent = per_shape * Shape::ALL.len() as u64;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for service in ["bench-agent", "bench-standard"] {
        let filter = format!("ServiceName = '{service}'");
        let count = |table: &str| {
            let sql = format!("SELECT count() FROM {table} WHERE {filter}");
            let client = collector.client.clone();
            async move { client.query(&sql).fetch_one::<u64>().await.unwrap_or(0) }
        };
        let (spans, logs) = (count("otel_traces").await, count("otel_logs").await);
        println!(
            "{service}: collector stored {spans} of {spans_sent} spans and {logs} of {logs_sent} log records"
        );
    }
    collector.stop().await;
}

mod server {
    use std::time::{Duration, Instant};

    use axum::extract::{MatchedPath, Path, Request, State};
    use axum::middleware::{self, Next};
    use axum::response::Response;
    use axum::routing::get;
    use axum::Router;

    use super::Mode;

    async fn hello(Path(name): Path<String>) -> String {
        format!("hello {name}")
    }

    async fn hello_logged(Path(name): Path<String>) -> String {
        tracing::info!(%name, "said hello");
        format!("hello {name}")
    }

    // The nested shape: five levels of `#[instrument]`, as service code marks
    // its steps; the innermost logs one line. Every configuration runs this
    // same code (uninstrumented, nothing listens to the spans).
    #[tracing::instrument]
    async fn step1(name: &str) -> usize {
        step2(name).await + 1
    }

    #[tracing::instrument]
    async fn step2(name: &str) -> usize {
        step3(name).await + 1
    }

    #[tracing::instrument]
    async fn step3(name: &str) -> usize {
        step4(name).await + 1
    }

    #[tracing::instrument]
    async fn step4(name: &str) -> usize {
        step5(name).await + 1
    }

    #[tracing::instrument]
    async fn step5(name: &str) -> usize {
        tracing::info!(%name, "deepest step");
        name.len()
    }

    async fn nested(Path(name): Path<String>) -> String {
        let n = step1(&name).await;
        format!("nested {name} {n}")
    }

    /// The routes of both shapes.
    fn routes() -> Router {
        Router::new()
            .route("/hello/{name}", get(hello_logged))
            .route("/nested/{name}", get(nested))
    }

    pub fn run(mode: Mode, endpoint: &str) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let app = match mode {
                Mode::Plain => Router::new()
                    .route("/hello/{name}", get(hello))
                    .route("/nested/{name}", get(nested)),
                Mode::Agent => agent_app(endpoint),
                Mode::Standard => standard_app(endpoint),
            };
            eprintln!("LISTENING {port}");
            axum::serve(listener, app).await.expect("serve");
        });
    }

    fn agent_app(endpoint: &str) -> Router {
        let guard = agent::AgentBuilder::from_config(agent::Config::default())
            .service_name("bench-agent")
            .endpoint(endpoint)
            .metric_export_interval(Duration::from_secs(1))
            .init()
            .expect("agent");
        let layer = guard.agent().http_layer();
        // The process is killed at the end; the guard lives as long as it does.
        std::mem::forget(guard);
        routes().layer(layer)
    }

    fn standard_app(endpoint: &str) -> Router {
        use opentelemetry::metrics::{Histogram, MeterProvider as _};
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry::KeyValue;
        use opentelemetry_otlp::WithExportConfig;
        use opentelemetry_sdk::logs::SdkLoggerProvider;
        use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
        use opentelemetry_sdk::trace::SdkTracerProvider;
        use opentelemetry_sdk::Resource;
        use tower_http::trace::{DefaultMakeSpan, TraceLayer};
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;

        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let resource = Resource::builder()
            .with_service_name("bench-standard")
            .build();
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .expect("span exporter");
        let tracer_provider = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource.clone())
            .build();
        let logs = opentelemetry_otlp::LogExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .expect("log exporter");
        let logger_provider = SdkLoggerProvider::builder()
            .with_batch_exporter(logs)
            .with_resource(resource.clone())
            .build();
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .expect("metric exporter");
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(
                PeriodicReader::builder(metrics)
                    .with_interval(Duration::from_secs(1))
                    .build(),
            )
            .with_resource(resource)
            .build();
        let histogram = meter_provider
            .meter("bench")
            .f64_histogram("http.server.request.duration")
            .with_unit("s")
            .with_boundaries(agent::metrics::DURATION_BUCKETS_SECONDS.to_vec())
            .build();
        // The transport crates are kept out of the exported logs (as the agent
        // does). Not `tower`: EnvFilter matches target prefixes and would also
        // silence `tower_http`'s request spans.
        let filter =
            tracing_subscriber::EnvFilter::new("info,h2=off,hyper=off,hyper_util=off,tonic=off");
        tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().json())
            .with(tracing_opentelemetry::layer().with_tracer(tracer_provider.tracer("bench")))
            .with(
                opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(
                    &logger_provider,
                ),
            )
            .init();
        // Kept alive for the life of the process (it is killed at the end).
        std::mem::forget((tracer_provider, logger_provider, meter_provider.clone()));

        async fn record(
            State(histogram): State<Histogram<f64>>,
            request: Request,
            next: Next,
        ) -> Response {
            let started = Instant::now();
            let method = request.method().to_string();
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .map(|m| m.as_str().to_string())
                .unwrap_or_default();
            let response = next.run(request).await;
            histogram.record(
                started.elapsed().as_secs_f64(),
                &[
                    KeyValue::new("http.request.method", method),
                    KeyValue::new("http.route", route),
                    KeyValue::new(
                        "http.response.status_code",
                        i64::from(response.status().as_u16()),
                    ),
                ],
            );
            response
        }

        routes()
            .layer(middleware::from_fn_with_state(histogram, record))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO)),
            )
    }
}

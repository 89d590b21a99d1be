//! The run: `--concurrency` workers drawing scenarios from the mix, one burst task, a shared
//! budget. Every request goes through [`Shared::send`], which honours the principal's hold,
//! claims budget, picks the next base URL and turns a 429 / 503 into a hold.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::stream::{FuturesUnordered, StreamExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Method, Url};
use tokio::time::Instant;

use crate::auth::{subject, TokenMinter};
use crate::mix::{Order, Plan, ProductId, Scenario, CONCURRENT_COPIES};
use crate::pacing::{parse_retry_after, Budget, Holds};
use crate::report::{Burst, OrderTrace, StopReason};
use crate::stats::{Route, Stats};
use crate::trace::TraceParent;

/// Polls of an order's Location after its 202, until its status is no longer `pending`.
const MAX_POLLS: u32 = 3;
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// A 409's Retry-After is honoured up to this before the one retry.
const MAX_CONFLICT_WAIT: Duration = Duration::from_secs(2);
/// Order Locations kept for summary reads.
const ORDER_POOL: usize = 4096;
const SAMPLE_TRACES: usize = 10;

pub struct Config {
    pub base_urls: Vec<Url>,
    pub requests: u64,
    pub duration: Duration,
    pub concurrency: u32,
    pub seed: u64,
    pub burst_every: Duration,
    pub burst_size: u32,
    pub burst_parallel: u32,
    pub request_timeout: Duration,
    pub traceparent: bool,
}

pub struct Outcome {
    pub stats: Stats,
    pub elapsed: Duration,
    pub stopped_by: StopReason,
    pub held_back: u64,
    pub bursts: Vec<Burst>,
    pub sample_order_traces: Vec<OrderTrace>,
    pub answered: u64,
    pub first_transport_error: Option<String>,
}

/// Progress counters the progress bar reads while the run goes on.
#[derive(Default)]
pub struct Progress {
    pub answered: AtomicU64,
    pub transport_errors: AtomicU64,
}

struct Request<'a> {
    route: Route,
    method: Method,
    path: String,
    principal: u32,
    body: Option<&'a serde_json::Value>,
    idempotency_key: Option<&'a str>,
    /// 4xx statuses this request provokes on purpose.
    expected: &'static [u16],
    /// Wait out the principal's hold (false: give up instead, as a burst does).
    wait_if_held: bool,
}

enum Attempt {
    /// Budget or time ran out, or the principal was held and the caller would not wait.
    Skipped,
    Failed,
    Answered(Answer),
}

struct Answer {
    status: u16,
    retry_after: Duration,
    location: Option<String>,
    replayed: bool,
    order_status: Option<String>,
    trace: Option<TraceParent>,
}

pub struct Shared {
    client: reqwest::Client,
    base_urls: Vec<String>,
    next_url: AtomicUsize,
    minter: TokenMinter,
    plan: Plan,
    budget: Budget,
    holds: Holds,
    traceparent: bool,
    /// Created orders (owner principal, Location); once full, the oldest is replaced.
    /// Orders are scoped to their principal, so only the owner may read one.
    orders: Mutex<(Vec<(u32, String)>, usize)>,
    traces: Mutex<Vec<OrderTrace>>,
    progress: Arc<Progress>,
    first_error: Mutex<Option<String>>,
    /// Transport errors before the first answer after which the service counts as down.
    give_up_after: u64,
    interrupted: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn url(&self, path: &str) -> String {
        let i = self.next_url.fetch_add(1, Ordering::Relaxed) % self.base_urls.len();
        format!("{}{}", self.base_urls[i], path)
    }

    async fn send(&self, req: Request<'_>, stats: &mut Stats) -> Attempt {
        if req.wait_if_held {
            if !self.holds.wait(req.principal, &self.budget).await {
                return Attempt::Skipped;
            }
        } else if self
            .holds
            .held_until(req.principal, Instant::now())
            .is_some()
        {
            return Attempt::Skipped;
        }
        if !self.budget.take() {
            return Attempt::Skipped;
        }
        let sent = self.exchange(&req).await;
        match &sent {
            Ok((answer, elapsed)) => {
                stats.record(
                    req.route,
                    Some(answer.status),
                    req.expected,
                    *elapsed,
                    answer.replayed,
                );
                self.progress.answered.fetch_add(1, Ordering::Relaxed);
                if answer.status == 429 || answer.status == 503 {
                    self.holds
                        .hold(req.principal, Instant::now() + answer.retry_after);
                }
            }
            Err(e) => {
                stats.record(req.route, None, req.expected, Duration::ZERO, false);
                let errors = self
                    .progress
                    .transport_errors
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                {
                    let mut first = self.first_error.lock().expect("poisoned");
                    if first.is_none() {
                        *first = Some(format!("{e:#}"));
                    }
                }
                if self.progress.answered.load(Ordering::Relaxed) == 0
                    && errors >= self.give_up_after
                {
                    self.budget.stop();
                }
            }
        }
        match sent {
            Ok((answer, _)) => Attempt::Answered(answer),
            Err(_) => Attempt::Failed,
        }
    }

    async fn exchange(&self, req: &Request<'_>) -> Result<(Answer, Duration)> {
        let url = self.url(&req.path);
        let mut builder = self
            .client
            .request(req.method.clone(), &url)
            .header(AUTHORIZATION, self.minter.bearer(req.principal)?);
        let trace = self
            .traceparent
            .then(|| TraceParent::random(&mut rand::rng()));
        if let Some(t) = &trace {
            builder = builder.header("traceparent", t.header());
        }
        if let Some(key) = req.idempotency_key {
            builder = builder.header("Idempotency-Key", key);
        }
        if let Some(body) = req.body {
            builder = builder
                .header(CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(body)?);
        }
        let start = Instant::now();
        let response = builder
            .send()
            .await
            .with_context(|| format!("{} {url}", req.method))?;
        let status = response.status().as_u16();
        let headers = response.headers();
        let retry_after = parse_retry_after(header_str(headers, RETRY_AFTER.as_str()));
        let location = header_str(headers, LOCATION.as_str()).map(location_path);
        let replayed = header_str(headers, "idempotent-replayed")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        // The latency includes the whole body: that is what a client waits for.
        let body = response
            .bytes()
            .await
            .with_context(|| format!("reading the body of {} {url}", req.method))?;
        let elapsed = start.elapsed();
        let order_status = (req.route == Route::GetOrder && status == 200)
            .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
            .flatten()
            .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(String::from));
        Ok((
            Answer {
                status,
                retry_after,
                location,
                replayed,
                order_status,
                trace,
            },
            elapsed,
        ))
    }

    fn remember_order(&self, principal: u32, location: &str, answer: &Answer) {
        {
            let mut guard = self.orders.lock().expect("poisoned");
            let (orders, next) = &mut *guard;
            if orders.len() < ORDER_POOL {
                orders.push((principal, location.to_string()));
            } else {
                orders[*next] = (principal, location.to_string());
                *next = (*next + 1) % ORDER_POOL;
            }
        }
        if let Some(t) = &answer.trace {
            let mut traces = self.traces.lock().expect("poisoned");
            if traces.len() < SAMPLE_TRACES {
                traces.push(OrderTrace {
                    trace_id: t.trace_id.clone(),
                    span_id: t.span_id.clone(),
                    order_id: location.rsplit('/').next().unwrap_or("").to_string(),
                    location: location.to_string(),
                });
            }
        }
    }

    fn pick_order(&self, pick: u64) -> Option<(u32, String)> {
        let guard = self.orders.lock().expect("poisoned");
        let orders = &guard.0;
        (!orders.is_empty()).then(|| orders[(pick % orders.len() as u64) as usize].clone())
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Keep only the path of a Location, so polls go round-robin over the replicas too.
fn location_path(value: &str) -> String {
    match Url::parse(value) {
        Ok(url) => url.path().to_string(),
        Err(_) => value.to_string(),
    }
}

pub fn shared(
    config: &Config,
    minter: TokenMinter,
    plan: Plan,
    progress: Arc<Progress>,
) -> Result<Arc<Shared>> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.request_timeout)
        .pool_max_idle_per_host((config.concurrency * 3 + config.burst_parallel) as usize)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;
    let principals = plan.principals();
    Ok(Arc::new(Shared {
        client,
        base_urls: config
            .base_urls
            .iter()
            .map(|u| u.as_str().trim_end_matches('/').to_string())
            .collect(),
        next_url: AtomicUsize::new(0),
        minter,
        plan,
        budget: Budget::new(config.requests, Instant::now() + config.duration),
        holds: Holds::new(principals),
        traceparent: config.traceparent,
        orders: Mutex::new((Vec::new(), 0)),
        traces: Mutex::new(Vec::new()),
        progress,
        first_error: Mutex::new(None),
        give_up_after: u64::from(config.concurrency).max(5) * 2,
        interrupted: std::sync::atomic::AtomicBool::new(false),
    }))
}

pub fn taken(shared: &Shared) -> u64 {
    shared.budget.taken()
}

/// Ctrl-C: start no more requests, let the ones in flight finish, report.
pub fn interrupt(shared: &Shared) {
    shared.interrupted.store(true, Ordering::SeqCst);
    shared.budget.stop();
}

pub async fn run(config: &Config, shared: Arc<Shared>) -> Outcome {
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..config.concurrency {
        let shared = shared.clone();
        // Worker w's sequence depends only on the seed and w.
        let rng = StdRng::seed_from_u64(
            config.seed ^ (u64::from(w) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        workers.spawn(async move { worker(&shared, rng).await });
    }
    let burst_task = (!config.burst_every.is_zero()).then(|| {
        let shared = shared.clone();
        let every = config.burst_every;
        let size = config.burst_size;
        let parallel = config.burst_parallel;
        let seed = config.seed;
        tokio::spawn(async move { bursts(&shared, every, size, parallel, seed).await })
    });

    let mut stats = Stats::default();
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(s) => stats.merge(&s),
            Err(e) => eprintln!("loadgen: a worker failed: {e}"),
        }
    }
    // Workers end when the budget is over; the burst task then ends at its next check.
    let mut burst_log = Vec::new();
    if let Some(task) = burst_task {
        shared.budget.stop();
        match task.await {
            Ok((s, log)) => {
                stats.merge(&s);
                burst_log = log;
            }
            Err(e) => eprintln!("loadgen: the burst task failed: {e}"),
        }
    }
    let elapsed = start.elapsed();
    let answered = shared.progress.answered.load(Ordering::Relaxed);
    let stopped_by = if answered == 0 {
        StopReason::NoAnswer
    } else if shared.interrupted.load(Ordering::SeqCst) {
        StopReason::Interrupted
    } else if shared.budget.count_spent() {
        StopReason::Requests
    } else {
        StopReason::Duration
    };
    Outcome {
        stats,
        elapsed,
        stopped_by,
        held_back: shared.holds.held_back(),
        bursts: burst_log,
        sample_order_traces: shared.traces.lock().expect("poisoned").clone(),
        answered,
        first_transport_error: shared.first_error.lock().expect("poisoned").clone(),
    }
}

async fn worker(shared: &Shared, mut rng: StdRng) -> Stats {
    let mut stats = Stats::default();
    while !shared.budget.is_over() {
        let mut step = shared.plan.next(&mut rng);
        // A held principal's user waits; the others keep shopping.
        let principal = loop {
            match shared.holds.pick(step.principal, Instant::now()) {
                Ok(p) => break Some(p),
                Err(until) => {
                    if !shared.budget.sleep_until(until).await {
                        break None;
                    }
                }
            }
        };
        let Some(principal) = principal else { break };
        step.principal = principal;
        if let Scenario::Summary { pick, fallback } = &step.scenario {
            if shared.pick_order(*pick).is_none() {
                // Nothing to summarise yet: create an order instead.
                step.scenario = Scenario::Order {
                    order: fallback.clone(),
                    poison: false,
                };
            }
        }
        run_scenario(shared, step.principal, &step.scenario, &mut stats).await;
    }
    stats
}

fn product_request(principal: u32, id: &ProductId, wait_if_held: bool) -> Request<'static> {
    let expected: &'static [u16] = match id {
        ProductId::Seeded(_) => &[],
        ProductId::Missing(_) => &[404],
        ProductId::Malformed(_) => &[400],
    };
    Request {
        route: Route::Product,
        method: Method::GET,
        path: format!("/products/{}", id.segment()),
        principal,
        body: None,
        idempotency_key: None,
        expected,
        wait_if_held,
    }
}

fn order_request<'a>(
    principal: u32,
    key: &'a str,
    body: &'a serde_json::Value,
    expected: &'static [u16],
) -> Request<'a> {
    Request {
        route: Route::CreateOrder,
        method: Method::POST,
        path: "/orders".to_string(),
        principal,
        body: Some(body),
        idempotency_key: Some(key),
        expected,
        wait_if_held: true,
    }
}

fn get_request(route: Route, principal: u32, path: String) -> Request<'static> {
    Request {
        route,
        method: Method::GET,
        path,
        principal,
        body: None,
        idempotency_key: None,
        expected: &[],
        wait_if_held: true,
    }
}

async fn run_scenario(shared: &Shared, principal: u32, scenario: &Scenario, stats: &mut Stats) {
    match scenario {
        Scenario::Product(id) => {
            shared
                .send(product_request(principal, id, true), stats)
                .await;
        }
        Scenario::Categories => {
            shared
                .send(
                    get_request(Route::Categories, principal, "/categories".into()),
                    stats,
                )
                .await;
        }
        Scenario::Order { order, .. } => {
            let location = create(shared, principal, order, &[], stats).await;
            poll(shared, principal, location, stats).await;
        }
        Scenario::RetriedOrder(order) => {
            let location = create(shared, principal, order, &[], stats).await;
            // The client "lost" the answer and retries: a replay, or 409 if still in flight.
            let retry = order_request(principal, &order.idempotency_key, &order.body, &[409]);
            shared.send(retry, stats).await;
            poll(shared, principal, location, stats).await;
        }
        Scenario::ConcurrentOrder(order) => {
            let location = concurrent_copies(shared, principal, order, stats).await;
            poll(shared, principal, location, stats).await;
        }
        Scenario::MismatchedOrder { order, other_body } => {
            let location = create(shared, principal, order, &[], stats).await;
            let reuse = order_request(principal, &order.idempotency_key, other_body, &[422]);
            shared.send(reuse, stats).await;
            poll(shared, principal, location, stats).await;
        }
        Scenario::Summary { pick, .. } => {
            if let Some((owner, location)) = shared.pick_order(*pick) {
                let path = format!("{location}/summary");
                shared
                    .send(get_request(Route::OrderSummary, owner, path), stats)
                    .await;
            }
        }
    }
}

/// POST /orders; the Location of a new (not replayed) 202.
async fn create(
    shared: &Shared,
    principal: u32,
    order: &Order,
    expected: &'static [u16],
    stats: &mut Stats,
) -> Option<String> {
    let req = order_request(principal, &order.idempotency_key, &order.body, expected);
    match shared.send(req, stats).await {
        Attempt::Answered(a) => accepted(shared, principal, &a),
        Attempt::Skipped | Attempt::Failed => None,
    }
}

fn accepted(shared: &Shared, principal: u32, a: &Answer) -> Option<String> {
    if a.status != 202 {
        return None;
    }
    let location = a.location.clone()?;
    if !a.replayed {
        shared.remember_order(principal, &location, a);
    }
    Some(location)
}

/// The same order sent CONCURRENT_COPIES times at once: one is new, the others see it in
/// flight (409 + Retry-After) or replay it. After a 409 one retry honours its Retry-After.
async fn concurrent_copies(
    shared: &Shared,
    principal: u32,
    order: &Order,
    stats: &mut Stats,
) -> Option<String> {
    let mut copy_stats: Vec<Stats> = (0..CONCURRENT_COPIES).map(|_| Stats::default()).collect();
    let answers = futures::future::join_all(copy_stats.iter_mut().map(|s| {
        let req = order_request(principal, &order.idempotency_key, &order.body, &[409]);
        shared.send(req, s)
    }))
    .await;
    for s in &copy_stats {
        stats.merge(s);
    }
    let mut location = None;
    let mut conflict_wait = None;
    for a in &answers {
        if let Attempt::Answered(a) = a {
            if let Some(l) = accepted(shared, principal, a) {
                location.get_or_insert(l);
            }
            if a.status == 409 {
                conflict_wait = Some(a.retry_after.min(MAX_CONFLICT_WAIT));
            }
        }
    }
    if let Some(wait) = conflict_wait {
        if !shared.budget.sleep_until(Instant::now() + wait).await {
            return location;
        }
        let req = order_request(principal, &order.idempotency_key, &order.body, &[409]);
        if let Attempt::Answered(a) = shared.send(req, stats).await {
            if let Some(l) = accepted(shared, principal, &a) {
                location.get_or_insert(l);
            }
        }
    }
    location
}

/// GET the order until it leaves `pending` (at most MAX_POLLS times).
async fn poll(shared: &Shared, principal: u32, location: Option<String>, stats: &mut Stats) {
    let Some(location) = location else { return };
    for i in 0..MAX_POLLS {
        let next = Instant::now() + POLL_INTERVAL;
        if i > 0 && !shared.budget.sleep_until(next).await {
            return;
        }
        let req = get_request(Route::GetOrder, principal, location.clone());
        match shared.send(req, stats).await {
            Attempt::Answered(a) if a.status == 200 => {
                if a.order_status.as_deref() != Some("pending") {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Every `every`, one principal (in turn) fires up to `size` product reads with `parallel`
/// in flight, stopping at the first 429 / 503: then its hold applies as for everyone.
async fn bursts(
    shared: &Shared,
    every: Duration,
    size: u32,
    parallel: u32,
    seed: u64,
) -> (Stats, Vec<Burst>) {
    let mut stats = Stats::default();
    let mut log = Vec::new();
    let mut rng = StdRng::seed_from_u64(seed.rotate_left(17) ^ 0xB0B5);
    let principals = shared.plan.principals();
    let mut next = Instant::now() + every;
    let mut turn: u32 = (seed % u64::from(principals)) as u32;
    loop {
        if !shared.budget.sleep_until(next).await {
            break;
        }
        next += every;
        let Ok(principal) = shared.holds.pick(turn, Instant::now()) else {
            continue;
        };
        turn = (principal + 1) % principals;
        let mut entry = Burst {
            principal: subject(principal),
            sent: 0,
            rate_limited: 0,
            shed: 0,
        };
        let mut launched = 0u32;
        let mut throttled = false;
        let mut in_flight = FuturesUnordered::new();
        loop {
            while !throttled && launched < size && in_flight.len() < parallel as usize {
                let id = ProductId::Seeded(shared.plan.hot_product(&mut rng));
                launched += 1;
                in_flight.push(async move {
                    let mut s = Stats::default();
                    let sent = shared
                        .send(product_request(principal, &id, false), &mut s)
                        .await;
                    (s, sent)
                });
            }
            let Some((s, sent)) = in_flight.next().await else {
                break;
            };
            stats.merge(&s);
            match sent {
                Attempt::Answered(a) => {
                    entry.sent += 1;
                    match a.status {
                        429 => {
                            entry.rate_limited += 1;
                            throttled = true;
                        }
                        503 => {
                            entry.shed += 1;
                            throttled = true;
                        }
                        _ => {}
                    }
                }
                Attempt::Failed => entry.sent += 1,
                // Held (by our own 429 or another worker's) or out of budget: stop firing.
                Attempt::Skipped => throttled = true,
            }
        }
        log.push(entry);
    }
    (stats, log)
}

//! Runs the built `loadgen` binary against a TEST PEER: a tiny axum server that answers with
//! the status behaviour of the shop contract (auth, rate limit with Retry-After, idempotent
//! orders with 409 / 422 / replays, polls, a summary that sometimes fails) and counts what it
//! served. It is not the shop service: it exists only to check the load generator's counting,
//! its Retry-After handling and its report. The end-to-end run against the real service
//! lives with the service.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Products 1..=PRODUCTS exist on the peer.
const PRODUCTS: u32 = 50;
/// Requests a principal may make before the peer answers 429 and blocks it for BLOCK.
const QUOTA: u32 = 60;
const BLOCK: Duration = Duration::from_secs(1);
/// How long an order stays "in flight" on the peer, so concurrent copies see 409.
const IN_FLIGHT: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
struct BlockEvent {
    sub: String,
    until: Instant,
    /// Requests of `sub` that arrived while it was blocked.
    early: u32,
}

enum Idem {
    InFlight { body: Value },
    Done { body: Value, location: String },
}

#[derive(Default)]
struct PeerState {
    /// (route template, status) → responses served.
    served: BTreeMap<(String, u16), u64>,
    /// Per port the peer listens on: requests received.
    per_listener: BTreeMap<u16, u64>,
    replayed: u64,
    used: HashMap<String, u32>,
    blocks: Vec<BlockEvent>,
    idempotency: HashMap<(String, String), Idem>,
    /// order id → polls so far
    orders: HashMap<String, u32>,
    /// order id → trace id from the traceparent of the request that created it
    order_traces: HashMap<String, String>,
    next_order: u64,
    summaries: u64,
}

struct Peer {
    state: Mutex<PeerState>,
    key: DecodingKey,
}

#[derive(Clone)]
struct Ctx {
    peer: Arc<Peer>,
    port: u16,
}

fn problem(status: StatusCode, detail: &str) -> Response {
    let body = json!({"type": "about:blank", "title": status.canonical_reason(), "status": status.as_u16(), "detail": detail});
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

fn with_retry_after(mut r: Response, secs: u64) -> Response {
    r.headers_mut()
        .insert("retry-after", HeaderValue::from(secs));
    r
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

fn route_of(method: &Method, path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["categories"]) => Some("GET /categories"),
        ("GET", ["products", _]) => Some("GET /products/{id}"),
        ("POST", ["orders"]) => Some("POST /orders"),
        ("GET", ["orders", _]) => Some("GET /orders/{id}"),
        ("GET", ["orders", _, "summary"]) => Some("GET /orders/{id}/summary"),
        _ => None,
    }
}

async fn handle(
    State(ctx): State<Ctx>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let peer = ctx.peer.clone();
    let path = uri.path().to_string();
    let route = route_of(&method, &path).unwrap_or("unknown");
    let response = serve(&peer, route, &path, &headers, &body).await;
    let mut s = peer.state.lock().unwrap();
    *s.per_listener.entry(ctx.port).or_default() += 1;
    *s.served
        .entry((route.to_string(), response.status().as_u16()))
        .or_default() += 1;
    if response.headers().contains_key("idempotent-replayed") {
        s.replayed += 1;
    }
    response
}

fn subject(peer: &Peer, headers: &HeaderMap) -> Option<String> {
    let token = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let mut v = Validation::new(Algorithm::RS256);
    v.algorithms = vec![Algorithm::RS256];
    v.set_issuer(&["shop-dev"]);
    v.set_audience(&["shop-api"]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Value>(token, &peer.key, &v).ok()?;
    let scope = data.claims["scope"].as_str()?.to_string();
    if !scope.split(' ').any(|s| s == "orders:write") {
        return None;
    }
    data.claims["sub"].as_str().map(String::from)
}

/// The peer's rate limit: QUOTA requests, then 429 + Retry-After and a BLOCK-long block,
/// after which the quota starts again. Arrivals during a block are counted as early.
fn rate_limit(peer: &Peer, sub: &str) -> Option<Response> {
    let now = Instant::now();
    let mut s = peer.state.lock().unwrap();
    if let Some(b) = s
        .blocks
        .iter_mut()
        .rev()
        .find(|b| b.sub == sub && b.until > now)
    {
        b.early += 1;
        let left = (b.until - now).as_secs_f64().ceil().max(1.0) as u64;
        return Some(with_retry_after(
            problem(StatusCode::TOO_MANY_REQUESTS, "rate limited"),
            left,
        ));
    }
    let used = s.used.entry(sub.to_string()).or_default();
    *used += 1;
    if *used > QUOTA {
        *used = 0;
        s.blocks.push(BlockEvent {
            sub: sub.to_string(),
            until: now + BLOCK,
            early: 0,
        });
        return Some(with_retry_after(
            problem(StatusCode::TOO_MANY_REQUESTS, "rate limited"),
            BLOCK.as_secs(),
        ));
    }
    None
}

async fn serve(peer: &Peer, route: &str, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let Some(sub) = subject(peer, headers) else {
        return problem(StatusCode::UNAUTHORIZED, "bad token");
    };
    if let Some(limited) = rate_limit(peer, &sub) {
        return limited;
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match route {
        "GET /categories" => json_response(StatusCode::OK, json!([{"id": 1, "name": "tools"}])),
        "GET /products/{id}" => match segments[1].parse::<i64>() {
            Err(_) => problem(StatusCode::BAD_REQUEST, "bad id"),
            Ok(id) if (1..=i64::from(PRODUCTS)).contains(&id) => json_response(
                StatusCode::OK,
                json!({"id": id, "category_id": 1, "name": "p", "price_cents": 100, "stock": 5}),
            ),
            Ok(_) => problem(StatusCode::NOT_FOUND, "no such product"),
        },
        "POST /orders" => create_order(peer, &sub, headers, body).await,
        "GET /orders/{id}" => {
            let mut s = peer.state.lock().unwrap();
            match s.orders.get_mut(segments[1]) {
                None => problem(StatusCode::NOT_FOUND, "no such order"),
                Some(polls) => {
                    *polls += 1;
                    let status = if *polls == 1 { "pending" } else { "confirmed" };
                    json_response(StatusCode::OK, json!({"id": segments[1], "status": status}))
                }
            }
        }
        "GET /orders/{id}/summary" => {
            let n = {
                let mut s = peer.state.lock().unwrap();
                if !s.orders.contains_key(segments[1]) {
                    return problem(StatusCode::NOT_FOUND, "no such order");
                }
                s.summaries += 1;
                s.summaries
            };
            if n % 7 == 3 {
                problem(StatusCode::INTERNAL_SERVER_ERROR, "downstream failed")
            } else if n % 11 == 5 {
                with_retry_after(problem(StatusCode::SERVICE_UNAVAILABLE, "shed"), 1)
            } else {
                json_response(StatusCode::OK, json!({"id": segments[1]}))
            }
        }
        _ => problem(StatusCode::NOT_FOUND, "no such route"),
    }
}

async fn create_order(peer: &Peer, sub: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
        return problem(StatusCode::BAD_REQUEST, "Idempotency-Key required");
    };
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return problem(StatusCode::BAD_REQUEST, "bad JSON");
    };
    let slot = (sub.to_string(), key.to_string());
    {
        let mut s = peer.state.lock().unwrap();
        match s.idempotency.get(&slot) {
            Some(Idem::InFlight { body: b }) | Some(Idem::Done { body: b, .. }) if *b != body => {
                return problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "key reused with another body",
                )
            }
            Some(Idem::InFlight { .. }) => {
                return with_retry_after(problem(StatusCode::CONFLICT, "in flight"), 1)
            }
            Some(Idem::Done { location, .. }) => {
                let mut r = json_response(StatusCode::ACCEPTED, json!({"status": "pending"}));
                r.headers_mut()
                    .insert("location", HeaderValue::from_str(location).unwrap());
                r.headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return r;
            }
            None => {
                s.idempotency
                    .insert(slot.clone(), Idem::InFlight { body: body.clone() });
            }
        }
    }
    tokio::time::sleep(IN_FLIGHT).await;
    let mut s = peer.state.lock().unwrap();
    s.next_order += 1;
    let id = format!("order-{}", s.next_order);
    let location = format!("/orders/{id}");
    s.orders.insert(id.clone(), 0);
    if let Some(trace_id) = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
    {
        s.order_traces.insert(id.clone(), trace_id.to_string());
    }
    s.idempotency.insert(
        slot,
        Idem::Done {
            body,
            location: location.clone(),
        },
    );
    let mut r = json_response(StatusCode::ACCEPTED, json!({"id": id, "status": "pending"}));
    r.headers_mut()
        .insert("location", HeaderValue::from_str(&location).unwrap());
    r
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Two listeners (two "replicas") sharing one peer state.
async fn start_peer() -> (Arc<Peer>, Vec<SocketAddr>) {
    let pem = std::fs::read(manifest_dir().join("dev-keys/jwt-public.pem")).unwrap();
    let peer = Arc::new(Peer {
        state: Mutex::new(PeerState::default()),
        key: DecodingKey::from_rsa_pem(&pem).unwrap(),
    });
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(Ctx {
            peer: peer.clone(),
            port: addr.port(),
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addrs.push(addr);
    }
    (peer, addrs)
}

fn loadgen() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"));
    c.arg("--jwt-private-key")
        .arg(manifest_dir().join("dev-keys/jwt-private.pem"))
        .arg("--no-progress")
        .kill_on_drop(true);
    c
}

const CONCURRENCY: u64 = 4;
const BURST_PARALLEL: u64 = 8;
const REQUESTS: u64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_counts_match_what_the_peer_served() {
    let (peer, addrs) = start_peer().await;
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("report.json");
    let out = loadgen()
        .args(["--base-url", &format!("http://{}", addrs[0])])
        .args(["--base-url", &format!("http://{}/", addrs[1])])
        .args(["--requests", &REQUESTS.to_string(), "--duration", "120s"])
        .args(["--concurrency", &CONCURRENCY.to_string()])
        .args(["--principals", "4", "--products", &PRODUCTS.to_string()])
        .args([
            "--seed",
            "7",
            "--burst-every",
            "200ms",
            "--burst-size",
            "40",
        ])
        .args(["--burst-parallel", &BURST_PARALLEL.to_string()])
        .arg("--json")
        .arg(&json_path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadgen failed: {stderr}\n{stdout}");
    println!("{stdout}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let s = peer.state.lock().unwrap();

    // Counts: exactly what the peer served, route by route and status by status.
    assert_eq!(report["stopped_by"], "requests");
    assert_eq!(report["requests"], REQUESTS);
    assert_eq!(s.served.values().sum::<u64>(), REQUESTS);
    assert!(!s.served.keys().any(|(route, _)| route == "unknown"));
    let mut from_report: BTreeMap<(String, u16), u64> = BTreeMap::new();
    for r in report["routes"].as_array().unwrap() {
        let route = r["route"].as_str().unwrap().to_string();
        let mut sum = 0;
        for (status, n) in r["statuses"].as_object().unwrap() {
            from_report.insert(
                (route.clone(), status.parse().unwrap()),
                n.as_u64().unwrap(),
            );
            sum += n.as_u64().unwrap();
        }
        assert_eq!(r["requests"].as_u64().unwrap(), sum, "{route}");
        assert_eq!(r["outcomes"]["transport_error"], 0);
        assert_eq!(
            r["outcomes"]["unexpected_status"], 0,
            "every 4xx was provoked on purpose: {r}"
        );
    }
    assert_eq!(from_report, s.served);
    for route in [
        "GET /categories",
        "GET /products/{id}",
        "POST /orders",
        "GET /orders/{id}",
        "GET /orders/{id}/summary",
    ] {
        assert!(
            s.served.keys().any(|(r, _)| r == route),
            "the mix reached {route}"
        );
    }

    // Classification and error %.
    let count = |route: &str, status: u16| {
        s.served
            .get(&(route.to_string(), status))
            .copied()
            .unwrap_or(0)
    };
    let total_with = |status: u16| {
        s.served
            .iter()
            .filter(|((_, st), _)| *st == status)
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    let t = &report["total"]["outcomes"];
    assert_eq!(t["rate_limited"], total_with(429));
    assert_eq!(t["shed"], total_with(503));
    assert_eq!(t["server_error"], total_with(500));
    assert_eq!(report["total"]["replayed"], s.replayed);
    let summary = report["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "GET /orders/{id}/summary")
        .unwrap();
    let expected_pct = 100.0 * count("GET /orders/{id}/summary", 500) as f64
        / summary["requests"].as_u64().unwrap() as f64;
    assert!((summary["error_pct"].as_f64().unwrap() - expected_pct).abs() < 1e-9);
    let products = &report["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "GET /products/{id}")
        .unwrap()["outcomes"];
    assert_eq!(
        products["expected_4xx"],
        count("GET /products/{id}", 404) + count("GET /products/{id}", 400)
    );
    // Unknown ids are 4 % of the scenarios (malformed ones only 1 %, too rare to insist on).
    assert!(count("GET /products/{id}", 404) > 0);
    assert!(count("POST /orders", 409) + count("POST /orders", 422) > 0);

    // Retry-After: the quota forces blocks (4 principals × QUOTA < REQUESTS). After a 429 only
    // requests already in flight may arrive during the block.
    assert!(!s.blocks.is_empty());
    let in_flight_bound = CONCURRENCY * 3 + BURST_PARALLEL;
    for b in &s.blocks {
        assert!(
            u64::from(b.early) <= in_flight_bound,
            "{} sent {} requests into its block (at most {in_flight_bound} can be in flight)",
            b.sub,
            b.early
        );
    }
    assert!(report["held_back"].as_u64().unwrap() > 0);

    // Round-robin over the two listeners.
    let per: Vec<u64> = s.per_listener.values().copied().collect();
    assert_eq!(per.len(), 2);
    assert!(per[0].abs_diff(per[1]) <= 1, "round-robin split {per:?}");

    // Trace samples name orders the peer created, with the trace id it saw.
    let traces = report["sample_order_traces"].as_array().unwrap();
    assert!(!traces.is_empty());
    for tr in traces {
        let order = tr["order_id"].as_str().unwrap();
        assert_eq!(tr["location"], format!("/orders/{order}"));
        assert_eq!(
            s.order_traces.get(order).map(String::as_str),
            tr["trace_id"].as_str(),
            "trace of {order}"
        );
    }

    for b in report["bursts"].as_array().unwrap() {
        assert!(b["sent"].as_u64().unwrap() <= 40);
    }

    // The table printed the same numbers.
    let total_line = stdout
        .lines()
        .find(|l| l.starts_with("total"))
        .expect("a total row");
    assert!(total_line.split_whitespace().nth(1) == Some(&REQUESTS.to_string()[..]));
    assert!(stdout.contains("GET /orders/{id}/summary"));
}

#[tokio::test]
async fn service_down_is_a_clear_failure() {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = loadgen()
        .args(["--base-url", &format!("http://127.0.0.1:{port}")])
        .args([
            "--requests",
            "500",
            "--duration",
            "30s",
            "--concurrency",
            "2",
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no request got an answer"), "{stderr}");
    assert!(stderr.contains(&port.to_string()), "{stderr}");
}

#[tokio::test]
async fn bad_flags_and_a_missing_key_are_refused() {
    let out = loadgen().args(["--requests", "0"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--requests"));

    let out = loadgen()
        .args(["--duration", "soon"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a duration"));

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--jwt-private-key",
            "/nonexistent/key.pem",
            "--requests",
            "1",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading the JWT private key"));
}

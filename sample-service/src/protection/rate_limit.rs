//! Rate limiting with GCRA (the generic cell rate algorithm): each key has a
//! "theoretical arrival time"; a request is allowed while that time is at most
//! `burst` emission intervals ahead of now. One number per key, no timers.
//!
//! Keyed by the verified principal (the token's `sub`), else by client IP: a token
//! that does not verify is no principal, so minting random ones buys no new bucket.
//! `X-Forwarded-For` names the client only when the peer is a configured proxy.
//! The bucket lives in Redis (one script, atomic) so all replicas share the limit; a
//! failing Redis lets requests through (the limit protects capacity, and refusing
//! everything because Redis is down would be the worse outage).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use redis::Script;
use sha2::{Digest, Sha256};

use crate::api::problem::Problem;
use crate::app::AppState;
use crate::auth::Principal;
use crate::cache::redis::Redis;

#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub per_second: f64,
    pub burst: u32,
}

impl Policy {
    fn interval_ms(&self) -> f64 {
        1000.0 / self.per_second
    }

    /// The window the quota refers to: the time to earn a full burst back.
    fn window_secs(&self) -> u64 {
        (self.burst as f64 / self.per_second).ceil().max(1.0) as u64
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests still allowed right now.
    pub remaining: u64,
    /// Until the next request is allowed (refused requests only).
    pub retry_after: Duration,
    /// Until the bucket is full again.
    pub reset: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("rate limit store: {0}")]
pub struct LimitError(String);

#[async_trait]
pub trait RateLimiter: Send + Sync {
    async fn check(&self, key: &str, policy: Policy) -> Result<Decision, LimitError>;
}

/// GCRA for one key given its stored theoretical arrival time: the decision and the
/// new time to store (when allowed).
fn gcra(tat: Option<f64>, now: f64, policy: Policy) -> (Decision, Option<f64>) {
    let interval = policy.interval_ms();
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat + interval;
    let allow_at = new_tat - policy.burst as f64 * interval;
    if allow_at > now {
        let decision = Decision {
            allowed: false,
            remaining: 0,
            retry_after: Duration::from_millis((allow_at - now).ceil() as u64),
            reset: Duration::from_millis((tat - now).ceil() as u64),
        };
        return (decision, None);
    }
    let decision = Decision {
        allowed: true,
        remaining: ((now - allow_at) / interval).floor() as u64,
        retry_after: Duration::ZERO,
        reset: Duration::from_millis((new_tat - now).ceil() as u64),
    };
    (decision, Some(new_tat))
}

const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, 0, math.ceil(allow_at - now), math.ceil(tat - now)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1)
return {1, math.floor((now - allow_at) / interval), 0, math.ceil(new_tat - now)}";

pub struct RedisRateLimiter {
    redis: Redis,
    script: Script,
}

impl RedisRateLimiter {
    pub fn new(redis: Redis) -> Self {
        RedisRateLimiter {
            redis,
            script: Script::new(GCRA),
        }
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, key: &str, policy: Policy) -> Result<Decision, LimitError> {
        let mut conn = self.redis.conn();
        let mut check = self.script.key(self.redis.key(&format!("rl:{key}")));
        check.arg(policy.interval_ms()).arg(policy.burst);
        let (allowed, remaining, retry_ms, reset_ms): (i64, i64, i64, i64) =
            crate::telemetry::traced(
                self.redis.span("EVALSHA gcra"),
                check.invoke_async(&mut conn),
            )
            .await
            .map_err(|e| LimitError(e.to_string()))?;
        Ok(Decision {
            allowed: allowed == 1,
            remaining: remaining.max(0) as u64,
            retry_after: Duration::from_millis(retry_ms.max(0) as u64),
            reset: Duration::from_millis(reset_ms.max(0) as u64),
        })
    }
}

/// The same algorithm in process memory, for a single instance without Redis.
pub struct LocalRateLimiter {
    started: Instant,
    tats: Mutex<HashMap<String, f64>>,
}

impl Default for LocalRateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalRateLimiter {
    pub fn new() -> Self {
        LocalRateLimiter {
            started: Instant::now(),
            tats: Mutex::default(),
        }
    }
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn check(&self, key: &str, policy: Policy) -> Result<Decision, LimitError> {
        let now = self.started.elapsed().as_secs_f64() * 1000.0;
        let mut tats = self.tats.lock().unwrap_or_else(|e| e.into_inner());
        let (decision, new_tat) = gcra(tats.get(key).copied(), now, policy);
        if let Some(t) = new_tat {
            tats.insert(key.to_string(), t);
        }
        // Entries whose time has passed carry no state: drop them now and then.
        if tats.len() > 100_000 {
            tats.retain(|_, t| *t > now);
        }
        Ok(decision)
    }
}

/// Who is limited: the verified principal, else the client address.
fn limit_key(principal: Option<&Principal>, client: Option<IpAddr>) -> (String, &'static str) {
    if let Some(p) = principal {
        let digest = Sha256::digest(p.subject.as_bytes());
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        return (format!("sub:{hex}"), "token");
    }
    let ip = client.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
    (format!("ip:{ip}"), "ip")
}

/// The client's address: the peer's, or — when the peer is a trusted proxy — the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy (entries left
/// of it are the client's own claims).
pub fn client_ip(request: &Request, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    let hops = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            break; // not an address: nothing left of it can be trusted
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    Some(client)
}

fn set_headers(response: &mut Response, policy: Policy, d: &Decision) {
    let headers = response.headers_mut();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    put(
        "ratelimit-policy",
        format!("\"default\";q={};w={}", policy.burst, policy.window_secs()),
    );
    put(
        "ratelimit",
        format!(
            "\"default\";r={};t={}",
            d.remaining,
            d.reset.as_secs_f64().ceil() as u64
        ),
    );
}

pub async fn middleware(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let policy = state.rate_policy;
    // Verified once here; the handlers' extractor takes the result from the request.
    let verified = crate::auth::verify_request(&state, &mut request);
    let client = client_ip(&request, &state.trusted_proxies);
    let (key, kind) = limit_key(verified.as_ref(), client);
    let decision = match state.rate_limiter.check(&key, policy).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "rate limit unavailable; letting the request through");
            return next.run(request).await;
        }
    };
    if !decision.allowed {
        state.metrics.rate_limited.add(1, &[("limit.key", kind)]);
        let retry = decision.retry_after.as_secs_f64().ceil() as u64;
        let mut response = Problem::retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            format!(
                "rate limit of {} requests per second exceeded",
                policy.per_second
            ),
            retry,
        )
        .into_response();
        set_headers(&mut response, policy, &decision);
        return response;
    }
    let mut response = next.run(request).await;
    set_headers(&mut response, policy, &decision);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let policy = Policy {
            per_second: 10.0,
            burst: 5,
        };
        let mut tat = None;
        let mut allowed = 0;
        for _ in 0..8 {
            let (d, new) = gcra(tat, 0.0, policy);
            if d.allowed {
                allowed += 1;
                tat = new;
            } else {
                // The next slot opens one emission interval (100 ms) later.
                assert_eq!(d.retry_after, Duration::from_millis(100));
            }
        }
        assert_eq!(allowed, 5);
        // 100 ms later exactly one more fits.
        let (d, new) = gcra(tat, 100.0, policy);
        assert!(d.allowed);
        assert!(!gcra(new, 100.0, policy).0.allowed);
    }

    #[tokio::test]
    async fn local_limiter_keeps_keys_apart() {
        let limiter = LocalRateLimiter::new();
        let policy = Policy {
            per_second: 1.0,
            burst: 2,
        };
        for key in ["a", "b"] {
            assert!(limiter.check(key, policy).await.unwrap().allowed);
            assert!(limiter.check(key, policy).await.unwrap().allowed);
            assert!(!limiter.check(key, policy).await.unwrap().allowed);
        }
    }
}

//! Idempotency keys (IETF draft "The Idempotency-Key HTTP Header Field"):
//! a retried request with the same key and payload gets the first answer again,
//! whichever replica it reaches and however often it is retried.
//!
//! The record lives in a shared store with an owner token and a lease: the first
//! request claims the key, completes it with its response (compare-and-set on the
//! token, so a late original cannot overwrite a re-claimed key), or releases it when
//! it fails before deciding. A crashed handler's lease expires. Only the handler's
//! own outcome is recorded: authentication, validation, rate limiting and shedding
//! happen before the claim, so those requests may be retried with the same key.

pub mod embedded;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::api::problem::Problem;

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED: &str = "idempotent-replayed";
const MAX_KEY_LEN: usize = 255;

/// A response worth replaying: status, the headers that matter, body.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredResponse {
    pub status: u16,
    pub content_type: String,
    pub location: String,
    pub body: Vec<u8>,
}

impl StoredResponse {
    pub fn into_response(self, replayed: bool) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let mut response = (status, self.body).into_response();
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.content_type) {
            headers.insert(header::CONTENT_TYPE, v);
        }
        if !self.location.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&self.location) {
                headers.insert(header::LOCATION, v);
            }
        }
        if replayed {
            headers.insert(REPLAYED, HeaderValue::from_static("true"));
        }
        response
    }
}

/// What the store says about a key.
#[derive(Debug, PartialEq)]
pub enum Claim {
    /// This request owns the key now.
    Acquired,
    /// Another request with this key is running; retry after about this long.
    InFlight(Duration),
    /// The key was used with another payload.
    Mismatch,
    Completed(StoredResponse),
}

#[derive(Debug, thiserror::Error)]
#[error("idempotency store: {0}")]
pub struct StoreError(pub String);

#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    async fn claim(
        &self,
        key: &str,
        owner: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError>;
    /// Stores the response if `owner` still holds the key; false when it lost it.
    async fn complete(
        &self,
        key: &str,
        owner: &str,
        response: &StoredResponse,
        retention: Duration,
    ) -> Result<bool, StoreError>;
    /// Forgets the claim if `owner` still holds it, so a retry can run.
    async fn release(&self, key: &str, owner: &str) -> Result<(), StoreError>;
}

/// Reads the key: a structured-field string (`"abc"`) or a bare token, 1–255
/// visible ASCII characters.
pub fn parse_key(headers: &HeaderMap) -> Result<String, Problem> {
    let raw = headers
        .get(HEADER)
        .ok_or_else(|| Problem::bad_request("this endpoint requires an Idempotency-Key header"))?;
    let raw = raw
        .to_str()
        .map_err(|_| Problem::bad_request("the Idempotency-Key must be visible ASCII"))?
        .trim();
    let key = match raw.strip_prefix('"') {
        Some(rest) => unquote(rest).ok_or_else(|| {
            Problem::bad_request("the Idempotency-Key is not a valid structured-field string")
        })?,
        None => raw.to_string(),
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Problem::bad_request(format!(
            "the Idempotency-Key must have 1 to {MAX_KEY_LEN} characters"
        )));
    }
    if !key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(Problem::bad_request(
            "the Idempotency-Key must be visible ASCII",
        ));
    }
    Ok(key)
}

/// The inside of an sf-string after its opening quote: `\"` and `\\` escapes, then
/// the closing quote and nothing after it.
fn unquote(rest: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                e @ ('"' | '\\') => out.push(e),
                _ => return None,
            },
            '"' => return chars.next().is_none().then_some(out),
            c => out.push(c),
        }
    }
    None
}

/// The store key of `key` used by `subject`: the subject's length first, so no pair of
/// (subject, key) shares an encoding with another ("a:b" + "c" ≠ "a" + "b:c").
pub fn scope(subject: &str, key: &str) -> String {
    format!("{}:{subject}:{key}", subject.len())
}

/// SHA-256 of method, route, tenant and the body with object keys sorted, so the
/// same payload in another key order or spacing is the same request.
pub fn fingerprint(method: &str, route: &str, tenant: &str, body: &serde_json::Value) -> String {
    let mut hasher = Sha256::new();
    for part in [method, route, tenant] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    canonical(body, &mut hasher);
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn canonical(value: &serde_json::Value, out: &mut Sha256) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<_> = map.keys().collect();
            keys.sort();
            out.update(b"{");
            for k in keys {
                out.update(serde_json::to_string(k).unwrap_or_default().as_bytes());
                out.update(b":");
                canonical(&map[k], out);
                out.update(b",");
            }
            out.update(b"}");
        }
        Value::Array(items) => {
            out.update(b"[");
            for item in items {
                canonical(item, out);
                out.update(b",");
            }
            out.update(b"]");
        }
        scalar => out.update(scalar.to_string().as_bytes()),
    }
}

/// The outcome of trying to start an idempotent request.
pub enum Begin {
    Proceed(Ownership),
    /// Answer this without running the handler (replay, 409 or 422).
    Answer(Response),
}

/// A held claim. Dropping it without completing releases the key in the background
/// (the handler failed, panicked or was cancelled by the request timeout).
pub struct Ownership {
    store: Arc<dyn IdempotencyStore>,
    key: String,
    owner: String,
    done: bool,
}

impl Ownership {
    pub async fn complete(mut self, response: &StoredResponse, retention: Duration) {
        self.done = true;
        match self
            .store
            .complete(&self.key, &self.owner, response, retention)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(key = %self.key, "idempotency lease lost before completion; the database constraint keeps the order unique")
            }
            Err(e) => {
                tracing::warn!(error = %e, key = %self.key, "idempotency record not completed; a retry will find the order through the database constraint")
            }
        }
    }
}

impl Drop for Ownership {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (store, key, owner) = (
            self.store.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.owner),
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = store.release(&key, &owner).await {
                    tracing::warn!(error = %e, %key, "idempotency claim not released; it expires with its lease");
                }
            });
        }
    }
}

pub enum Outcome {
    New,
    Replayed,
    InFlight,
    Mismatch,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::New => "new",
            Outcome::Replayed => "replayed",
            Outcome::InFlight => "in_flight",
            Outcome::Mismatch => "mismatch",
        }
    }
}

/// Claims `key` (already scoped to the principal) or says how to answer instead.
pub async fn begin(
    store: &Arc<dyn IdempotencyStore>,
    key: &str,
    fingerprint: &str,
    lease: Duration,
) -> Result<(Begin, Outcome), Problem> {
    let owner = uuid::Uuid::new_v4().to_string();
    let claim = store
        .claim(key, &owner, fingerprint, lease)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "idempotency store unavailable");
            Problem::unavailable(
                "idempotency records are unavailable; retry later with the same key",
            )
        })?;
    Ok(match claim {
        Claim::Acquired => (
            Begin::Proceed(Ownership {
                store: store.clone(),
                key: key.to_string(),
                owner,
                done: false,
            }),
            Outcome::New,
        ),
        Claim::InFlight(left) => (
            Begin::Answer(
                Problem::retry_later(
                    StatusCode::CONFLICT,
                    "Request in progress",
                    "a request with this Idempotency-Key is still being processed; retry later",
                    left.as_secs().clamp(1, 5),
                )
                .into_response(),
            ),
            Outcome::InFlight,
        ),
        Claim::Mismatch => (
            Begin::Answer(
                Problem::unprocessable(
                    "this Idempotency-Key was already used with a different request payload",
                )
                .into_response(),
            ),
            Outcome::Mismatch,
        ),
        Claim::Completed(stored) => (Begin::Answer(stored.into_response(true)), Outcome::Replayed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn keys_parse_as_sf_strings_or_tokens() {
        assert_eq!(parse_key(&headers("\"abc-1\"")).unwrap(), "abc-1");
        assert_eq!(parse_key(&headers("\"a\\\"b\"")).unwrap(), "a\"b");
        assert_eq!(
            parse_key(&headers("8e03978e-40d5")).unwrap(),
            "8e03978e-40d5"
        );
        for bad in ["\"open", "\"x\"y", "\"\"", "\"a\\b\""] {
            assert_eq!(parse_key(&headers(bad)).unwrap_err().status, 400, "{bad}");
        }
        assert_eq!(
            parse_key(&headers(&"k".repeat(256))).unwrap_err().status,
            400
        );
        assert!(parse_key(&HeaderMap::new())
            .unwrap_err()
            .detail
            .contains("requires"));
    }

    #[test]
    fn fingerprints_ignore_key_order_but_not_values_or_tenant() {
        let a = json!({"items": [{"product_id": 1, "quantity": 2}], "email": "a@b.c"});
        let b: serde_json::Value =
            serde_json::from_str(r#"{ "email":"a@b.c", "items":[{"quantity":2,"product_id":1}] }"#)
                .unwrap();
        let c = json!({"items": [{"product_id": 1, "quantity": 3}], "email": "a@b.c"});
        let f = |v, t| fingerprint("POST", "/orders", t, v);
        assert_eq!(f(&a, "u1"), f(&b, "u1"));
        assert_ne!(f(&a, "u1"), f(&c, "u1"));
        assert_ne!(f(&a, "u1"), f(&a, "u2"));
    }

    #[test]
    fn scopes_do_not_collide() {
        assert_ne!(scope("a:b", "c"), scope("a", "b:c"));
        assert_ne!(scope("1:a", "b"), scope("1", "a:b"));
    }
}

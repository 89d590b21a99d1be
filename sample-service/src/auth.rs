//! Bearer JWT authentication, pinned to RS256: a token signed with HS256 (say, with
//! the public key as the secret) or `none` never passes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, StatusCode};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::api::problem::Problem;
use crate::app::AppState;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not an RSA public key in PEM: {source}")]
    Parse {
        path: String,
        source: jsonwebtoken::errors::Error,
    },
    #[error("{path} is not a JWKS of RSA keys with key ids: {reason}")]
    Jwks { path: String, reason: String },
    #[error(
        "no key verifies tokens: set JWT_PUBLIC_KEY_FILE or JWT_JWKS_FILE \
         (or run with --dev / SHOP_DEV=true to use the committed development key)"
    )]
    NoKey,
}

/// The committed development key (kid `dev-1`): used only in `--dev` mode.
const DEV_PUBLIC_KEY: &[u8] = include_bytes!("../dev-keys/jwt-public.pem");

/// Checks tokens against a set of RSA public keys chosen by `kid`.
pub struct Verifier {
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// Where the keys came from, to re-read the JWKS when a token names a key it
    /// lacks (the issuer rotated), at most once per `refresh`.
    source: KeySource,
    validation: Validation,
}

struct KeySource {
    pem: Option<(String, DecodingKey)>,
    jwks: Option<PathBuf>,
    refresh: Duration,
    last_read: Mutex<Instant>,
}

impl KeySource {
    fn load(&self) -> Result<HashMap<String, DecodingKey>, KeyError> {
        let mut keys = match &self.jwks {
            Some(path) => jwks_keys(path)?,
            None => HashMap::new(),
        };
        if let Some((kid, key)) = &self.pem {
            keys.insert(kid.clone(), key.clone());
        }
        Ok(keys)
    }

    /// True (and the clock restarted) when the JWKS may be read again.
    fn reread_due(&self) -> bool {
        if self.jwks.is_none() {
            return false;
        }
        let mut last = self.last_read.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() < self.refresh {
            return false;
        }
        *last = Instant::now();
        true
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: String,
}

/// The authenticated caller. Idempotency keys and orders are scoped by `subject`.
#[derive(Clone, Debug)]
pub struct Principal {
    pub subject: String,
    scopes: Vec<String>,
}

impl Principal {
    pub fn require(&self, scope: &str) -> Result<(), Problem> {
        if self.scopes.iter().any(|s| s == scope) {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("the token lacks the scope {scope:?}"),
            ))
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn pem_key(pem: &[u8], shown: &str) -> Result<DecodingKey, KeyError> {
    DecodingKey::from_rsa_pem(pem).map_err(|source| KeyError::Parse {
        path: shown.to_string(),
        source,
    })
}

/// The RSA keys of a JWKS by `kid`.
fn jwks_keys(path: &Path) -> Result<HashMap<String, DecodingKey>, KeyError> {
    let fail = |reason: String| KeyError::Jwks {
        path: path.display().to_string(),
        reason,
    };
    let set: JwkSet = serde_json::from_slice(&read(path)?).map_err(|e| fail(e.to_string()))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| fail("a key has no kid".into()))?;
        if !matches!(jwk.algorithm, AlgorithmParameters::RSA(_)) {
            return Err(fail(format!("key {kid:?} is not an RSA key")));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| fail(format!("key {kid:?}: {e}")))?;
        keys.insert(kid, key);
    }
    Ok(keys)
}

impl Verifier {
    /// The keys the configuration names (a PEM file with its kid, a JWKS file, or
    /// both); the development key only in `--dev` mode with neither.
    pub fn from_config(config: &crate::config::Config) -> Result<Verifier, KeyError> {
        let pem = match &config.jwt_public_key_file {
            Some(path) => Some((
                config.jwt_key_id.clone(),
                pem_key(&read(path)?, &path.display().to_string())?,
            )),
            None if config.jwt_jwks_file.is_none() && config.dev => {
                tracing::warn!("development mode: tokens are verified with the committed development key, which anyone can sign with");
                Some((
                    "dev-1".to_string(),
                    pem_key(DEV_PUBLIC_KEY, "dev-keys/jwt-public.pem")?,
                ))
            }
            None => None,
        };
        let source = KeySource {
            pem,
            jwks: config.jwt_jwks_file.clone(),
            refresh: config.jwt_jwks_refresh,
            last_read: Mutex::new(Instant::now()),
        };
        let keys = source.load()?;
        if keys.is_empty() {
            return Err(KeyError::NoKey);
        }
        Ok(Verifier::new(
            keys,
            source,
            &config.jwt_issuer,
            &config.jwt_audience,
        ))
    }

    fn new(
        keys: HashMap<String, DecodingKey>,
        source: KeySource,
        issuer: &str,
        audience: &str,
    ) -> Verifier {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.leeway = 30;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Verifier {
            keys: RwLock::new(keys),
            source,
            validation,
        }
    }

    /// The key for `kid`; a key id the set lacks re-reads the JWKS once per cooldown.
    fn key(&self, kid: Option<&str>) -> Result<DecodingKey, String> {
        let lookup = |keys: &HashMap<String, DecodingKey>| match kid {
            Some(kid) => keys
                .get(kid)
                .cloned()
                .ok_or_else(|| format!("unknown key id {kid:?}")),
            // A single configured key also verifies tokens without a kid.
            None if keys.len() == 1 => Ok(keys.values().next().cloned().expect("one key")),
            None => Err("the token has no key id".into()),
        };
        let found = lookup(&self.keys.read().unwrap_or_else(|e| e.into_inner()));
        if found.is_err() && kid.is_some() && self.source.reread_due() {
            match self.source.load() {
                Ok(keys) if !keys.is_empty() => {
                    tracing::info!(keys = keys.len(), "JWKS re-read for an unknown key id");
                    let mut current = self.keys.write().unwrap_or_else(|e| e.into_inner());
                    *current = keys;
                    return lookup(&current);
                }
                Ok(_) => tracing::warn!("the JWKS has no keys now; keeping the current ones"),
                Err(e) => {
                    tracing::warn!(error = %e, "re-reading the JWKS failed; keeping the current keys")
                }
            }
        }
        found
    }

    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        let header = decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        if header.alg != Algorithm::RS256 {
            return Err(format!(
                "algorithm {:?} is not accepted; RS256 only",
                header.alg
            ));
        }
        let key = self.key(header.kid.as_deref())?;
        let data = decode::<Claims>(token, &key, &self.validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                "the token has expired".to_string()
            }
            jsonwebtoken::errors::ErrorKind::InvalidAudience => "wrong audience".to_string(),
            jsonwebtoken::errors::ErrorKind::InvalidIssuer => "wrong issuer".to_string(),
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                "the token is not valid yet".to_string()
            }
            _ => format!("invalid token: {e}"),
        })?;
        Ok(Principal {
            subject: data.claims.sub,
            scopes: data
                .claims
                .scope
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        })
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer(parts: &Parts) -> Option<&str> {
    bearer_of(&parts.headers)
}

fn bearer_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthorized(detail: impl Into<String>) -> Problem {
    let detail = detail.into();
    let challenge = format!(
        "Bearer error=\"invalid_token\", error_description=\"{}\"",
        detail.replace('"', "'")
    );
    Problem::new(StatusCode::UNAUTHORIZED, "Unauthorized", detail)
        .with_header(header::WWW_AUTHENTICATE, challenge)
}

/// A request's token, verified once (by the rate limiter, which keys on the result).
#[derive(Clone)]
struct Verified(Result<Principal, String>);

/// Verifies the request's bearer token, if any, and keeps the result in the request
/// for the handlers; the principal when the token is valid.
pub fn verify_request(state: &AppState, request: &mut axum::extract::Request) -> Option<Principal> {
    let verified = bearer_of(request.headers()).map(|token| state.verifier.verify(token))?;
    let principal = verified.as_ref().ok().cloned();
    request.extensions_mut().insert(Verified(verified));
    principal
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        if let Some(Verified(v)) = parts.extensions.get::<Verified>() {
            return v.clone().map_err(unauthorized);
        }
        let token = bearer(parts).ok_or_else(|| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "a bearer token is required",
            )
            .with_header(header::WWW_AUTHENTICATE, "Bearer")
        })?;
        state.verifier.verify(token).map_err(unauthorized)
    }
}

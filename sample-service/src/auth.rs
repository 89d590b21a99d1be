//! Bearer JWT authentication, pinned to RS256: a token signed with HS256 (say, with
//! the public key as the secret) or `none` never passes.

use std::collections::HashMap;
use std::path::Path;

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, StatusCode};
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
}

/// Checks tokens against a set of RSA public keys chosen by `kid`.
pub struct Verifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
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

impl Verifier {
    pub fn from_pem_file(
        path: &Path,
        kid: &str,
        issuer: &str,
        audience: &str,
    ) -> Result<Verifier, KeyError> {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: shown.clone(),
            source,
        })?;
        let key = DecodingKey::from_rsa_pem(&pem).map_err(|source| KeyError::Parse {
            path: shown,
            source,
        })?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.leeway = 30;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Ok(Verifier {
            keys: HashMap::from([(kid.to_string(), key)]),
            validation,
        })
    }

    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        let header = decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        if header.alg != Algorithm::RS256 {
            return Err(format!(
                "algorithm {:?} is not accepted; RS256 only",
                header.alg
            ));
        }
        // A single configured key also verifies tokens without a kid.
        let key = match &header.kid {
            Some(kid) => self
                .keys
                .get(kid)
                .ok_or_else(|| format!("unknown key id {kid:?}"))?,
            None if self.keys.len() == 1 => self.keys.values().next().expect("one key"),
            None => return Err("the token has no key id".into()),
        };
        let data = decode::<Claims>(token, key, &self.validation).map_err(|e| match e.kind() {
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
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
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

impl FromRequestParts<AppState> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
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

//! Optional bearer-token or HTTP basic auth in front of every page.
//!
//! Tokens reuse the receivers' token file format and constant-time check; basic
//! credentials are `user:password` lines, compared whole and in constant time.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use subtle::ConstantTimeEq;
use thiserror::Error;

use super::UiConfig;
use crate::receivers::auth::{Auth, AuthError};

#[derive(Debug, Error)]
pub enum AuthConfigError {
    #[error(transparent)]
    Tokens(#[from] AuthError),
    #[error("cannot read the basic auth file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the basic auth file {path}: line {line} is not user:password")]
    Line { path: String, line: usize },
    #[error("the basic auth file {0} holds no user")]
    Empty(String),
}

#[derive(Default)]
pub struct UiAuth {
    tokens: Option<Auth>,
    /// `user:password`, as a browser sends it (base64-decoded).
    basic: Vec<Vec<u8>>,
}

impl UiAuth {
    pub fn load(config: &UiConfig) -> Result<UiAuth, AuthConfigError> {
        let tokens = if config.auth_tokens_file.is_empty() {
            None
        } else {
            Some(Auth::load(Path::new(&config.auth_tokens_file))?)
        };
        let basic = if config.basic_auth_file.is_empty() {
            Vec::new()
        } else {
            let path = &config.basic_auth_file;
            let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
                path: path.clone(),
                source,
            })?;
            parse_basic(&text, path)?
        };
        Ok(UiAuth { tokens, basic })
    }

    pub fn enabled(&self) -> bool {
        self.tokens.is_some() || !self.basic.is_empty()
    }

    fn allows(&self, headers: &HeaderMap) -> bool {
        if !self.enabled() {
            return true;
        }
        if let Some(tokens) = &self.tokens {
            if tokens.check(headers).is_ok() {
                return true;
            }
        }
        let Some(presented) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| basic_credentials(v.as_bytes()))
        else {
            return false;
        };
        // Every entry is compared, also after a match, to keep the time flat.
        let mut ok = false;
        for entry in &self.basic {
            ok |= bool::from(entry.as_slice().ct_eq(&presented));
        }
        ok
    }
}

fn parse_basic(text: &str, path: &str) -> Result<Vec<Vec<u8>>, AuthConfigError> {
    let mut users = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                users.push(line.as_bytes().to_vec())
            }
            _ => {
                return Err(AuthConfigError::Line {
                    path: path.into(),
                    line: i + 1,
                })
            }
        }
    }
    if users.is_empty() {
        return Err(AuthConfigError::Empty(path.into()));
    }
    Ok(users)
}

/// The decoded `user:password` of a `Basic` credential.
fn basic_credentials(value: &[u8]) -> Option<Vec<u8>> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()
}

pub async fn require(State(auth): State<Arc<UiAuth>>, req: Request, next: Next) -> Response {
    if auth.allows(req.headers()) {
        return next.run(req).await;
    }
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        "this UI needs credentials: Authorization: Bearer <token> or basic auth\n",
    )
        .into_response();
    if !auth.basic.is_empty() {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"collector\""),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn basic_auth_accepts_only_a_listed_user_and_password() {
        let auth = UiAuth {
            tokens: None,
            basic: parse_basic("# viewers\nann:s3cret\n", "f").unwrap(),
        };
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(auth.allows(&headers(&format!("Basic {}", b64("ann:s3cret")))));
        assert!(!auth.allows(&headers(&format!("Basic {}", b64("ann:s3cre")))));
        assert!(!auth.allows(&headers("Bearer ann:s3cret")));
        assert!(!auth.allows(&HeaderMap::new()));
        assert!(matches!(
            parse_basic("nopassword\n", "f"),
            Err(AuthConfigError::Line { line: 1, .. })
        ));
        assert!(matches!(
            parse_basic("\n", "f"),
            Err(AuthConfigError::Empty(_))
        ));
    }

    #[test]
    fn without_configuration_everyone_is_let_in() {
        assert!(UiAuth::default().allows(&HeaderMap::new()));
    }
}

//! Optional bearer-token authentication, shared by both receivers.
//!
//! Tokens come from a file, one per line (`#` starts a comment). A presented token is
//! compared with every configured one in constant time, so the time taken says
//! nothing about how much of a token was right, nor which one matched.

use std::path::Path;

use http::HeaderMap;
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::otlp::IngestError;

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("cannot read the auth tokens file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// An empty file would lock every client out; that is never what was meant.
    #[error("the auth tokens file {0} holds no token")]
    Empty(String),
    #[error("line {line} of the auth tokens file {path}: a token cannot contain whitespace")]
    Whitespace { path: String, line: usize },
}

/// Which configured token a request presented: the key of its rate limit.
pub type TokenId = usize;

pub struct Auth {
    tokens: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Auth {
    // Never print the tokens themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth({} tokens)", self.tokens.len())
    }
}

impl Auth {
    pub fn load(path: &Path) -> Result<Auth, AuthError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: shown.clone(),
            source,
        })?;
        Auth::parse(&text, &shown)
    }

    fn parse(text: &str, path: &str) -> Result<Auth, AuthError> {
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let token = line.split('#').next().unwrap_or("").trim();
            if token.is_empty() {
                continue;
            }
            if token.contains(char::is_whitespace) {
                return Err(AuthError::Whitespace {
                    path: path.into(),
                    line: i + 1,
                });
            }
            tokens.push(token.as_bytes().to_vec());
        }
        if tokens.is_empty() {
            return Err(AuthError::Empty(path.into()));
        }
        Ok(Auth { tokens })
    }

    /// Checks `Authorization: Bearer <token>`; only headers are looked at, so this
    /// runs before any of the body is read.
    pub fn check(&self, headers: &HeaderMap) -> Result<TokenId, IngestError> {
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .and_then(bearer)
            .ok_or_else(|| {
                IngestError::Unauthenticated(
                    "missing bearer token: send Authorization: Bearer <token>".into(),
                )
            })?;
        // Every token is compared, also after a match, to keep the time flat.
        let mut found: Option<TokenId> = None;
        for (i, token) in self.tokens.iter().enumerate() {
            if bool::from(token.as_slice().ct_eq(presented)) {
                found = Some(i);
            }
        }
        found.ok_or_else(|| IngestError::Unauthenticated("invalid bearer token".into()))
    }
}

/// The token of a `Bearer` credential (the scheme is case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn parses_tokens_with_comments_and_blank_lines() {
        let auth = Auth::parse("# clients\nalpha\n\n  beta  # the second\n", "f").unwrap();
        assert_eq!(auth.tokens, [b"alpha".to_vec(), b"beta".to_vec()]);
        assert!(matches!(
            Auth::parse("# only a comment\n", "f"),
            Err(AuthError::Empty(_))
        ));
        assert!(matches!(
            Auth::parse("a b\n", "f"),
            Err(AuthError::Whitespace { line: 1, .. })
        ));
        assert_eq!(format!("{auth:?}"), "Auth(2 tokens)");
    }

    #[test]
    fn accepts_the_right_token_only() {
        let auth = Auth::parse("alpha\nbeta\n", "f").unwrap();
        assert_eq!(auth.check(&headers(Some("Bearer beta"))).unwrap(), 1);
        assert_eq!(auth.check(&headers(Some("bearer alpha"))).unwrap(), 0);
        for bad in [
            None,
            Some("Bearer"),
            Some("Bearer "),
            Some("Basic YWxwaGE="),
            Some("Bearer alph"),
            Some("Bearer alphaa"),
            Some("alpha"),
        ] {
            let e = auth.check(&headers(bad)).unwrap_err();
            assert_eq!(e.http_status(), 401, "{bad:?}");
            assert_eq!(e.grpc_code(), tonic::Code::Unauthenticated);
        }
        let e = auth.check(&headers(None)).unwrap_err();
        assert!(e.to_string().contains("missing bearer token"));
        let e = auth.check(&headers(Some("Bearer nope"))).unwrap_err();
        assert_eq!(e.to_string(), "invalid bearer token");
    }

    #[test]
    fn loads_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "t1\n").unwrap();
        assert!(Auth::load(&path).is_ok());
        let e = Auth::load(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("cannot read"));
    }
}

//! Bearer tokens: one RS256 JWT per principal, signed with the (dev) private key, re-minted
//! before it expires so runs longer than the token lifetime keep authenticating.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// The scopes a shopper needs for the loadgen's routes.
pub const SCOPE: &str = "orders:write catalog:read";
pub const LIFETIME: Duration = Duration::from_secs(3600);
/// Re-mint when less than this is left, so no request carries an almost-expired token.
const RENEW_BEFORE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub scope: String,
    pub iat: u64,
    pub exp: u64,
}

pub struct TokenMinter {
    key: EncodingKey,
    kid: String,
    issuer: String,
    audience: String,
    /// Per principal: the bearer header value and its `exp`.
    cache: Mutex<Vec<Option<(String, u64)>>>,
}

pub fn subject(principal: u32) -> String {
    format!("user-{}", principal + 1)
}

impl TokenMinter {
    pub fn from_pem_file(
        path: &Path,
        kid: &str,
        issuer: &str,
        audience: &str,
        principals: u32,
    ) -> Result<Self> {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading the JWT private key {}", path.display()))?;
        Self::from_pem(&pem, kid, issuer, audience, principals)
            .with_context(|| format!("loading the JWT private key {}", path.display()))
    }

    pub fn from_pem(
        pem: &[u8],
        kid: &str,
        issuer: &str,
        audience: &str,
        principals: u32,
    ) -> Result<Self> {
        let key = EncodingKey::from_rsa_pem(pem).context("not an RSA private key in PEM")?;
        let minter = Self {
            key,
            kid: kid.to_string(),
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            cache: Mutex::new(vec![None; principals as usize]),
        };
        // Fail at start, not on the first request, when the key cannot sign.
        minter.mint(0, now_secs())?;
        Ok(minter)
    }

    /// `Bearer <jwt>` for the principal.
    pub fn bearer(&self, principal: u32) -> Result<String> {
        let now = now_secs();
        let mut cache = self.cache.lock().expect("token cache poisoned");
        let slot = &mut cache[principal as usize];
        if let Some((value, exp)) = slot {
            if *exp > now + RENEW_BEFORE.as_secs() {
                return Ok(value.clone());
            }
        }
        let (token, exp) = self.mint(principal, now)?;
        let value = format!("Bearer {token}");
        *slot = Some((value.clone(), exp));
        Ok(value)
    }

    fn mint(&self, principal: u32, now: u64) -> Result<(String, u64)> {
        let exp = now + LIFETIME.as_secs();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject(principal),
            scope: SCOPE.to_string(),
            iat: now,
            exp,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key).context("signing a JWT")?;
        Ok((token, exp))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    const PRIVATE: &[u8] = include_bytes!("../../../dev-keys/jwt-private.pem");
    const PUBLIC: &[u8] = include_bytes!("../../../dev-keys/jwt-public.pem");

    fn minter() -> TokenMinter {
        TokenMinter::from_pem(PRIVATE, "dev-1", "shop-dev", "shop-api", 3).unwrap()
    }

    fn rs256_only() -> Validation {
        let mut v = Validation::new(Algorithm::RS256);
        v.algorithms = vec![Algorithm::RS256];
        v.set_issuer(&["shop-dev"]);
        v.set_audience(&["shop-api"]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v
    }

    #[test]
    fn tokens_verify_with_the_dev_public_key_and_carry_the_claims() {
        let m = minter();
        let bearer = m.bearer(2).unwrap();
        let token = bearer.strip_prefix("Bearer ").unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some("dev-1"));
        let key = DecodingKey::from_rsa_pem(PUBLIC).unwrap();
        let data = jsonwebtoken::decode::<Claims>(token, &key, &rs256_only()).unwrap();
        let c = data.claims;
        assert_eq!(c.sub, "user-3");
        assert_eq!(c.iss, "shop-dev");
        assert_eq!(c.aud, "shop-api");
        assert_eq!(c.scope, "orders:write catalog:read");
        assert_eq!(c.exp - c.iat, 3600);
        let now = now_secs();
        assert!(c.iat <= now && c.iat + 60 >= now);
    }

    #[test]
    fn tokens_are_cached_per_principal() {
        let m = minter();
        assert_eq!(m.bearer(0).unwrap(), m.bearer(0).unwrap());
        assert_ne!(m.bearer(0).unwrap(), m.bearer(1).unwrap());
    }

    #[test]
    fn a_token_fails_verification_under_another_audience_or_algorithm() {
        let m = minter();
        let bearer = m.bearer(0).unwrap();
        let token = bearer.strip_prefix("Bearer ").unwrap();
        let key = DecodingKey::from_rsa_pem(PUBLIC).unwrap();
        let mut wrong_aud = rs256_only();
        wrong_aud.set_audience(&["other"]);
        assert!(jsonwebtoken::decode::<Claims>(token, &key, &wrong_aud).is_err());
        let mut other_alg = rs256_only();
        other_alg.algorithms = vec![Algorithm::RS512];
        assert!(jsonwebtoken::decode::<Claims>(token, &key, &other_alg).is_err());
    }

    #[test]
    fn a_non_key_is_refused_clearly() {
        let err = TokenMinter::from_pem(b"hello", "dev-1", "i", "a", 1)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("not an RSA private key"));
        // The public key cannot sign.
        assert!(TokenMinter::from_pem(PUBLIC, "dev-1", "i", "a", 1).is_err());
    }
}

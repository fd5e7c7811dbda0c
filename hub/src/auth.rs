//! Tokens: JWT with HS256.
//!
//! HS256 is HMAC-SHA256 over `base64url(header).base64url(claims)`; it is small enough
//! to implement on `hmac` + `sha2` (both RustCrypto) instead of pulling a JWT crate
//! with RSA and elliptic-curve stacks that flowhub never uses. Only `alg: HS256` is
//! accepted (no `none`, no algorithm confusion), the signature is compared in constant
//! time, and `exp` is mandatory.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use flowhub_actors::identity::Identity;
use flowhub_protocol::Role;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The claims flowhub reads from a token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Display name (presence shows it); defaults to `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Role per flow id; `*` applies to every flow.
    #[serde(default)]
    pub flows: HashMap<String, Role>,
    /// A service token (run ingest by an execution engine).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub svc: bool,
}

impl Claims {
    pub fn identity(&self) -> Identity {
        Identity {
            user_id: self.sub.clone(),
            name: self.name.clone().unwrap_or_else(|| self.sub.clone()),
            flows: self.flows.clone(),
            expires_at: Some(self.exp),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("unsupported token algorithm (only HS256)")]
    Algorithm,
    #[error("bad token signature")]
    Signature,
    #[error("token expired")]
    Expired,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

/// Signs and verifies tokens with one HS256 secret.
#[derive(Clone)]
pub struct JwtKeys {
    secret: Vec<u8>,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(<redacted>)")
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JwtKeys {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        JwtKeys {
            secret: secret.into(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; this cannot fail.
        HmacSha256::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_at(token, now_secs())
    }

    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header: Header = decode_part(h)?;
        if header.alg != "HS256" {
            return Err(AuthError::Algorithm);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| AuthError::Malformed)?;
        let mut mac = self.mac();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(p.as_bytes());
        // verify_slice compares in constant time.
        mac.verify_slice(&sig).map_err(|_| AuthError::Signature)?;
        let claims: Claims = decode_part(p)?;
        if claims.exp <= now {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }
}

impl flowhub_actors::identity::TokenVerifier for JwtKeys {
    fn verify(&self, token: &str) -> Result<Identity, String> {
        JwtKeys::verify(self, token)
            .map(|c| c.identity())
            .map_err(|e| e.to_string())
    }
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

/// Parses `30s`, `15m`, `1h`, `7d` or plain seconds.
pub fn parse_ttl(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            name: Some("Alice".into()),
            exp,
            flows: [("demo".to_string(), Role::Editor)].into(),
            svc: false,
        }
    }

    #[test]
    fn sign_verify_roundtrip() {
        let keys = JwtKeys::new("s3cret");
        let t = keys.sign(&claims(2_000));
        assert_eq!(keys.verify_at(&t, 1_000).unwrap(), claims(2_000));
    }

    #[test]
    fn rejects_expired_forged_and_malformed() {
        let keys = JwtKeys::new("s3cret");
        let t = keys.sign(&claims(2_000));
        assert_eq!(keys.verify_at(&t, 2_000), Err(AuthError::Expired));
        assert_eq!(
            JwtKeys::new("other").verify_at(&t, 1_000),
            Err(AuthError::Signature)
        );
        assert_eq!(keys.verify_at("a.b", 1_000), Err(AuthError::Malformed));
        assert_eq!(keys.verify_at("", 1_000), Err(AuthError::Malformed));
        // Tampered claims keep the old signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let evil =
            URL_SAFE_NO_PAD.encode(br#"{"sub":"alice","exp":9999999999,"flows":{"*":"owner"}}"#);
        parts[1] = &evil;
        assert_eq!(
            keys.verify_at(&parts.join("."), 1_000),
            Err(AuthError::Signature)
        );
        // alg "none" is refused before anything else.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            parts[1]
        );
        assert_eq!(keys.verify_at(&none, 1_000), Err(AuthError::Algorithm));
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("1h"), Some(3600));
        assert_eq!(parse_ttl("90"), Some(90));
        assert_eq!(parse_ttl("15m"), Some(900));
        assert_eq!(parse_ttl("2d"), Some(172800));
        assert_eq!(parse_ttl("1y"), None);
        assert_eq!(parse_ttl("h"), None);
    }
}

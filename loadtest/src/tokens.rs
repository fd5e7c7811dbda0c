//! Tokens for the harness's clients: minted locally with the hubs' HS256 secret
//! (the claims are `flowhub_protocol::Claims`, signed with `jsonwebtoken` as the hub
//! does), or pre-minted and given on the command line.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use flowhub_protocol::{Claims, Role};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::cli::Common;
use crate::error::{Error, Result};

/// Minted tokens stay valid this long (longer than any run).
const TTL_SECS: u64 = 12 * 3600;

/// The hubs' HS256 secret, for minting tokens.
#[derive(Clone)]
pub struct JwtKeys {
    secret: Vec<u8>,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(<redacted>)")
    }
}

impl JwtKeys {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        // jsonwebtoken 10 needs a crypto provider; Err means one is installed already.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        JwtKeys {
            secret: secret.into(),
        }
    }

    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(&self.secret),
        )
        .unwrap_or_else(|e| unreachable!("HS256 over serializable claims cannot fail: {e}"))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where client tokens come from.
#[derive(Debug, Clone)]
pub enum Tokens {
    /// Mint one per client with the hubs' secret.
    Secret(JwtKeys),
    /// Use the same pre-minted tokens for every client.
    Fixed {
        user: String,
        service: Option<String>,
    },
}

impl Tokens {
    pub fn from_common(common: &Common) -> Result<Self> {
        if let Some(secret) = common.token_secret.as_deref().filter(|s| !s.is_empty()) {
            return Ok(Tokens::Secret(JwtKeys::new(secret)));
        }
        match &common.token {
            Some(user) => Ok(Tokens::Fixed {
                user: user.clone(),
                service: common.service_token.clone(),
            }),
            None => Err(Error::usage(
                "no way to authenticate: give --token-secret (or FLOWHUB_JWT_SECRET) with the hubs' HS256 secret",
            )),
        }
    }

    /// A user token granting `flows`.
    pub fn user(&self, sub: &str, flows: &[(&str, Role)]) -> String {
        match self {
            Tokens::Secret(keys) => keys.sign(&Claims {
                sub: sub.to_owned(),
                name: Some(sub.to_owned()),
                exp: now_secs() + TTL_SECS,
                flows: flows
                    .iter()
                    .map(|(f, r)| ((*f).to_owned(), *r))
                    .collect::<HashMap<_, _>>(),
                svc: false,
            }),
            Tokens::Fixed { user, .. } => user.clone(),
        }
    }

    /// A service token (`svc: true`) for run ingest.
    pub fn service(&self, sub: &str) -> Result<String> {
        match self {
            Tokens::Secret(keys) => Ok(keys.sign(&Claims {
                sub: sub.to_owned(),
                name: Some(sub.to_owned()),
                exp: now_secs() + TTL_SECS,
                flows: HashMap::new(),
                svc: true,
            })),
            Tokens::Fixed {
                service: Some(s), ..
            } => Ok(s.clone()),
            Tokens::Fixed { service: None, .. } => Err(Error::usage(
                "run ingest needs a service token: give --token-secret (or --service-token)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(secret: &str, token: &str) -> Claims {
        let validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        jsonwebtoken::decode::<Claims>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
            &validation,
        )
        .expect("a valid HS256 token")
        .claims
    }

    #[test]
    fn minted_tokens_verify_with_the_same_secret() {
        let tokens = Tokens::Secret(JwtKeys::new("s"));
        let t = tokens.user("ed-1", &[("f1", Role::Editor)]);
        let claims = verify("s", &t);
        assert_eq!(claims.sub, "ed-1");
        assert_eq!(claims.flows.get("f1"), Some(&Role::Editor));
        assert!(!claims.svc);
        assert_eq!(
            jsonwebtoken::decode_header(&t).unwrap().alg,
            Algorithm::HS256
        );
        let svc = verify("s", &tokens.service("engine").unwrap());
        assert!(svc.svc);
        let fixed = Tokens::Fixed {
            user: "u".into(),
            service: None,
        };
        assert_eq!(fixed.user("x", &[]), "u");
        assert!(fixed.service("e").is_err());
    }
}

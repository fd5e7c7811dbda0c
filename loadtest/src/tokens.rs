//! Tokens for the harness's clients: minted locally with the hubs' HS256 secret
//! (the same claims as `flowhub::auth::Claims`), or pre-minted and given on the
//! command line.

use std::collections::HashMap;

use flowhub::auth::{now_secs, Claims, JwtKeys};
use flowhub_protocol::Role;

use crate::cli::Common;
use crate::error::{Error, Result};

/// Minted tokens stay valid this long (longer than any run).
const TTL_SECS: u64 = 12 * 3600;

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

    #[test]
    fn minted_tokens_verify_with_the_same_secret() {
        let tokens = Tokens::Secret(JwtKeys::new("s"));
        let t = tokens.user("ed-1", &[("f1", Role::Editor)]);
        let claims = JwtKeys::new("s").verify(&t).unwrap();
        assert_eq!(claims.sub, "ed-1");
        assert_eq!(claims.flows.get("f1"), Some(&Role::Editor));
        assert!(!claims.svc);
        let svc = JwtKeys::new("s")
            .verify(&tokens.service("engine").unwrap())
            .unwrap();
        assert!(svc.svc);
        let fixed = Tokens::Fixed {
            user: "u".into(),
            service: None,
        };
        assert_eq!(fixed.user("x", &[]), "u");
        assert!(fixed.service("e").is_err());
    }
}

//! The claims of a token flowhub mints (`flowhub token`, the demo, the load-test
//! harness): pure data, so that a tool minting tokens needs serde and a JWT library,
//! not the hub. Signing and verification live elsewhere (the hub's `auth` module);
//! tokens from an identity provider may carry the flow roles under another claim
//! name, which only the hub's verifier knows about.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::Role;

/// The claims flowhub reads from a token it minted itself.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_omits_defaults_and_reads_them_back() {
        let claims = Claims {
            sub: "alice".into(),
            name: None,
            exp: 10,
            flows: [("demo".to_string(), Role::Editor)].into(),
            svc: false,
        };
        let json = serde_json::to_value(&claims).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"sub": "alice", "exp": 10, "flows": {"demo": "editor"}})
        );
        let back: Claims =
            serde_json::from_value(serde_json::json!({"sub": "s", "exp": 1})).unwrap();
        assert!(back.flows.is_empty() && !back.svc && back.name.is_none());
    }
}

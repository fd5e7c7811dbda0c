//! Who a session is, as established from a verified token. Presence and permissions
//! use this, never what a client claims about itself.

use std::collections::HashMap;

use flowhub_protocol::Role;

use crate::store::{MemberAccess, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub name: String,
    /// Role per flow id; the key `*` applies to every flow not named.
    pub flows: HashMap<String, Role>,
    /// Expiry in seconds since the Unix epoch.
    pub expires_at: Option<u64>,
    /// A service token (an execution engine, a dashboard's back end): reads every
    /// run, whatever its flow. It grants no role on flows.
    pub service: bool,
}

impl Identity {
    /// The role this identity has on `flow_id`, if any.
    pub fn role_for(&self, flow_id: &str) -> Option<Role> {
        self.flows
            .get(flow_id)
            .or_else(|| self.flows.get("*"))
            .copied()
    }
}

impl From<&flowhub_protocol::Claims> for Identity {
    /// The identity a verified token proves; the display name defaults to the user id.
    fn from(claims: &flowhub_protocol::Claims) -> Self {
        Identity {
            user_id: claims.sub.clone(),
            name: claims.name.clone().unwrap_or_else(|| claims.sub.clone()),
            flows: claims.flows.clone(),
            expires_at: Some(claims.exp),
            service: claims.svc,
        }
    }
}

/// A user's access to one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowAccess {
    /// What the token alone grants.
    pub token_role: Option<Role>,
    /// What the user may do: the token's role overridden by the `flow_members` row.
    pub role: Option<Role>,
}

impl Identity {
    /// The one place the access rule is applied: the token's role on `flow_id`,
    /// overridden by the user's `flow_members` row when there is one. Every transport
    /// (WebSocket, automerge-repo, SSE, HTTP) asks here.
    pub async fn flow_access(
        &self,
        store: &dyn Store,
        flow_id: &str,
    ) -> Result<FlowAccess, StoreError> {
        let token_role = self.role_for(flow_id);
        let member = store.member_access(flow_id, &self.user_id).await?;
        Ok(FlowAccess {
            token_role,
            role: MemberAccess::effective(member, token_role),
        })
    }
}

/// Verifies a token presented on an open session (`reauth`). The hub implements it
/// with its JWT verifier; tests can implement it with anything. Async because
/// verifying may first fetch the identity provider's signing keys.
#[async_trait::async_trait]
pub trait TokenVerifier: Send + Sync + 'static {
    /// The identity the token proves, or why it does not.
    async fn verify(&self, token: &str) -> Result<Identity, String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_flow_wins_over_wildcard() {
        let id = Identity {
            user_id: "u".into(),
            name: "U".into(),
            flows: [
                ("*".to_string(), Role::Viewer),
                ("demo".to_string(), Role::Editor),
            ]
            .into(),
            expires_at: None,
            service: false,
        };
        assert_eq!(id.role_for("demo"), Some(Role::Editor));
        assert_eq!(id.role_for("other"), Some(Role::Viewer));
        let none = Identity {
            flows: HashMap::new(),
            ..id
        };
        assert_eq!(none.role_for("demo"), None);
    }
}

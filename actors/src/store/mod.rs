//! The durable store, as the actors see it.
//!
//! # Guarantees an implementation must give
//! - [`Store::append_changes`] returns only once the changes are durable (committed).
//!   The hub acknowledges an edit only after this returns, so an acknowledged edit is
//!   never lost.
//! - Appending a change twice is harmless: changes are keyed by `(flow_id, hash)`.
//! - [`Store::load_flow`] returns the latest snapshot and every change not covered by
//!   it, so `snapshot + changes` rebuilds everything acknowledged so far.
//! - [`Store::compact`] writes a snapshot and deletes exactly the changes it covers;
//!   changes appended concurrently (by another node) survive. The deletes may follow
//!   the snapshot in transactions of their own, so a load in between may see covered
//!   changes beside the snapshot (harmless: applying a change twice is a no-op), never
//!   a covered change missing from both. It is conditional: it succeeds only if the stored snapshot is still the one the new
//!   snapshot was built on ([`Snapshot::base_heads`]), else [`StoreError::Conflict`].
//!   Without that check, two nodes compacting at once could each replace the other's
//!   snapshot with one lacking the other's changes, whose rows were already deleted.

mod memory;

pub use memory::MemoryStore;

use async_trait::async_trait;
use flowhub_protocol::Role;

/// One Automerge change as stored: its hex hash and its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    pub hash: String,
    pub bytes: Vec<u8>,
}

/// What the store holds for one flow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredFlow {
    /// `true` when the flow has ever been written (a row in `flows`).
    pub exists: bool,
    /// The latest `doc.save()` snapshot, if the flow was ever compacted.
    pub snapshot: Option<Vec<u8>>,
    /// Sorted hex heads of that snapshot.
    pub snapshot_heads: Option<Vec<String>>,
    /// Every change stored after the snapshot, in append order.
    pub changes: Vec<ChangeRecord>,
    /// The flow's versions, read before anything else: a write that lands after this
    /// load shows as a newer version (see [`Store::flow_versions`]).
    pub versions: FlowVersions,
}

/// Counters the store keeps per flow, so a node can notice from the store alone that
/// it missed something the bus (at most once) did not bring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowVersions {
    /// Goes up by exactly one with every committed `append_changes` of the flow.
    pub changes: u64,
    /// Goes up with every change to the flow's `flow_members` rows.
    pub members: u64,
}

/// A snapshot to write during compaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Sorted hex heads of the saved document.
    pub heads: Vec<String>,
    pub bytes: Vec<u8>,
    /// Heads of the stored snapshot this one includes (`None`: there was none).
    pub base_heads: Option<Vec<String>>,
}

/// A `flow_members` row: it overrides what a token grants on that flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberAccess {
    Role(Role),
    Revoked,
}

impl MemberAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberAccess::Role(Role::Owner) => "owner",
            MemberAccess::Role(Role::Editor) => "editor",
            MemberAccess::Role(Role::Viewer) => "viewer",
            MemberAccess::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "owner" => MemberAccess::Role(Role::Owner),
            "editor" => MemberAccess::Role(Role::Editor),
            "viewer" => MemberAccess::Role(Role::Viewer),
            "revoked" => MemberAccess::Revoked,
            _ => return None,
        })
    }

    /// The effective role given what the token grants.
    pub fn effective(access: Option<MemberAccess>, token_role: Option<Role>) -> Option<Role> {
        match access {
            Some(MemberAccess::Role(role)) => Some(role),
            Some(MemberAccess::Revoked) => None,
            None => token_role,
        }
    }
}

/// An Automerge actor of a flow and the verified user it belongs to (history
/// attribution; see [`Store::bind_actors`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ActorBinding {
    /// Hex actor id.
    pub actor: String,
    pub user_id: String,
    pub user_name: String,
    /// When the hub first saw a change by this actor (ms since the Unix epoch).
    pub first_seen_ms: i64,
}

/// Heads pinned under a name (`POST /v1/flows/{id}/versions`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NamedVersion {
    pub name: String,
    /// Sorted hex heads.
    pub heads: Vec<String>,
    pub user_id: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store query failed: {0}")]
    Query(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("concurrent compaction: {0}")]
    Conflict(String),
}

/// Durable storage of flows (see the module doc for the guarantees).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn load_flow(&self, flow_id: &str) -> Result<StoredFlow, StoreError>;

    /// Durably appends changes (creating the flow row if needed). Idempotent by hash.
    async fn append_changes(
        &self,
        flow_id: &str,
        changes: &[ChangeRecord],
    ) -> Result<(), StoreError>;

    /// Writes `snapshot` and deletes the changes whose hashes are in `covered`.
    async fn compact(
        &self,
        flow_id: &str,
        snapshot: Snapshot,
        covered: &[String],
    ) -> Result<(), StoreError>;

    /// The `flow_members` override for a user on a flow, if any.
    async fn member_access(
        &self,
        flow_id: &str,
        user_id: &str,
    ) -> Result<Option<MemberAccess>, StoreError>;

    /// Sets (`Some`) or removes (`None`) a user's `flow_members` override, and bumps
    /// the flow's members version in the same transaction.
    async fn set_member_access(
        &self,
        flow_id: &str,
        user_id: &str,
        access: Option<MemberAccess>,
    ) -> Result<(), StoreError>;

    /// The versions of these flows, in one round trip. A flow with no row (never
    /// written, no members) is left out: its versions are zero.
    async fn flow_versions(
        &self,
        flow_ids: &[String],
    ) -> Result<Vec<(String, FlowVersions)>, StoreError>;

    /// Cheap liveness probe for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Every actor of the flow bound to a user. Stores without history support
    /// (test doubles) keep the default: none, so history shows no authors.
    async fn flow_actors(&self, _flow_id: &str) -> Result<Vec<ActorBinding>, StoreError> {
        Ok(Vec::new())
    }

    /// Binds actors to users; an actor already bound keeps its first binding (the
    /// flow actor refuses changes by an actor bound to another user before this).
    async fn bind_actors(
        &self,
        _flow_id: &str,
        _bindings: &[ActorBinding],
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// The flow's named versions, oldest first.
    async fn named_versions(&self, _flow_id: &str) -> Result<Vec<NamedVersion>, StoreError> {
        Ok(Vec::new())
    }

    /// Pins a version; `false` (nothing written) when the name is taken.
    async fn put_named_version(
        &self,
        _flow_id: &str,
        _version: &NamedVersion,
    ) -> Result<bool, StoreError> {
        Err(StoreError::Query(
            "named versions are not supported by this store".into(),
        ))
    }

    /// Deletes a named version; `false` when there was none.
    async fn delete_named_version(&self, _flow_id: &str, _name: &str) -> Result<bool, StoreError> {
        Ok(false)
    }
}

//! A failpoint for fault tests: `FLOWHUB_FAILPOINT_ABORT_AFTER_APPENDS=N` makes the
//! process abort right after its N-th append has committed, before the flow actor
//! acknowledges it. That is the window a `kill -9` only hits by luck (stored, never
//! acknowledged), made deterministic so a test can show that such an edit is still
//! acknowledged after the client reconnects elsewhere. Never set in production: the
//! variable is read once at start and logged loudly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use flowhub_actors::store::{
    ChangeRecord, FlowVersions, MemberAccess, Snapshot, Store, StoreError, StoredFlow,
};

/// The environment variable that arms the failpoint.
pub const ABORT_AFTER_APPENDS: &str = "FLOWHUB_FAILPOINT_ABORT_AFTER_APPENDS";

/// Wraps `store` when the failpoint is armed; returns it unchanged otherwise.
pub fn wrap(store: Arc<dyn Store>) -> Arc<dyn Store> {
    let Some(after) = std::env::var(ABORT_AFTER_APPENDS)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|n| *n > 0)
    else {
        return store;
    };
    tracing::warn!(
        after,
        "FAILPOINT ARMED: this process aborts after {after} committed appends (tests only)"
    );
    Arc::new(AbortAfterAppends {
        inner: store,
        left: AtomicU64::new(after),
    })
}

struct AbortAfterAppends {
    inner: Arc<dyn Store>,
    left: AtomicU64,
}

#[async_trait]
impl Store for AbortAfterAppends {
    async fn load_flow(&self, flow_id: &str) -> Result<StoredFlow, StoreError> {
        self.inner.load_flow(flow_id).await
    }

    async fn append_changes(
        &self,
        flow_id: &str,
        changes: &[ChangeRecord],
    ) -> Result<(), StoreError> {
        self.inner.append_changes(flow_id, changes).await?;
        if self.left.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Committed, not acknowledged: die the way a kill -9 would.
            std::process::abort();
        }
        Ok(())
    }

    async fn compact(
        &self,
        flow_id: &str,
        snapshot: Snapshot,
        covered: &[String],
    ) -> Result<(), StoreError> {
        self.inner.compact(flow_id, snapshot, covered).await
    }

    async fn member_access(
        &self,
        flow_id: &str,
        user_id: &str,
    ) -> Result<Option<MemberAccess>, StoreError> {
        self.inner.member_access(flow_id, user_id).await
    }

    async fn set_member_access(
        &self,
        flow_id: &str,
        user_id: &str,
        access: Option<MemberAccess>,
    ) -> Result<(), StoreError> {
        self.inner.set_member_access(flow_id, user_id, access).await
    }

    async fn flow_versions(
        &self,
        flow_ids: &[String],
    ) -> Result<Vec<(String, FlowVersions)>, StoreError> {
        self.inner.flow_versions(flow_ids).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

//! An in-process [`Store`] for tests and benches. Durable only for the life of the
//! process; otherwise it keeps every guarantee of the trait.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{ChangeRecord, MemberAccess, Snapshot, Store, StoreError, StoredFlow};

#[derive(Default)]
struct FlowRecord {
    snapshot: Option<Vec<u8>>,
    snapshot_heads: Option<Vec<String>>,
    changes: Vec<ChangeRecord>,
    hashes: HashSet<String>,
}

/// A std `Mutex`, not a tokio one: nothing async happens while it is held.
#[derive(Default)]
pub struct MemoryStore {
    flows: Mutex<HashMap<String, FlowRecord>>,
    members: Mutex<HashMap<(String, String), MemberAccess>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FlowRecord>> {
        // A panic while holding the lock cannot leave a record half-written (every
        // mutation below is a single push/insert), so a poisoned lock is still usable.
        self.flows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn load_flow(&self, flow_id: &str) -> Result<StoredFlow, StoreError> {
        Ok(match self.lock().get(flow_id) {
            None => StoredFlow::default(),
            Some(r) => StoredFlow {
                exists: true,
                snapshot: r.snapshot.clone(),
                snapshot_heads: r.snapshot_heads.clone(),
                changes: r.changes.clone(),
            },
        })
    }

    async fn append_changes(
        &self,
        flow_id: &str,
        changes: &[ChangeRecord],
    ) -> Result<(), StoreError> {
        let mut flows = self.lock();
        let record = flows.entry(flow_id.to_owned()).or_default();
        for c in changes {
            if record.hashes.insert(c.hash.clone()) {
                record.changes.push(c.clone());
            }
        }
        Ok(())
    }

    async fn compact(
        &self,
        flow_id: &str,
        snapshot: Snapshot,
        covered: &[String],
    ) -> Result<(), StoreError> {
        let mut flows = self.lock();
        let record = flows.entry(flow_id.to_owned()).or_default();
        if record.snapshot_heads != snapshot.base_heads {
            return Err(StoreError::Conflict(
                "the snapshot changed since it was read".into(),
            ));
        }
        let covered: HashSet<&String> = covered.iter().collect();
        record.changes.retain(|c| !covered.contains(&c.hash));
        record.snapshot = Some(snapshot.bytes);
        record.snapshot_heads = Some(snapshot.heads);
        Ok(())
    }

    async fn member_access(
        &self,
        flow_id: &str,
        user_id: &str,
    ) -> Result<Option<MemberAccess>, StoreError> {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        Ok(members
            .get(&(flow_id.to_owned(), user_id.to_owned()))
            .copied())
    }

    async fn set_member_access(
        &self,
        flow_id: &str,
        user_id: &str,
        access: Option<MemberAccess>,
    ) -> Result<(), StoreError> {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let key = (flow_id.to_owned(), user_id.to_owned());
        match access {
            Some(a) => members.insert(key, a),
            None => members.remove(&key),
        };
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

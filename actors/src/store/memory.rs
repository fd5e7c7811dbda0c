//! An in-process [`Store`] for tests and benches. Durable only for the life of the
//! process; otherwise it keeps every guarantee of the trait.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    ActorBinding, ChangeRecord, FlowVersions, MemberAccess, NamedVersion, Snapshot, Store,
    StoreError, StoredFlow,
};

#[derive(Default)]
struct FlowRecord {
    snapshot: Option<Vec<u8>>,
    snapshot_heads: Option<Vec<String>>,
    changes: Vec<ChangeRecord>,
    hashes: HashSet<String>,
    version: u64,
}

/// A std `Mutex`, not a tokio one: nothing async happens while it is held.
#[derive(Default)]
pub struct MemoryStore {
    flows: Mutex<HashMap<String, FlowRecord>>,
    members: Mutex<HashMap<(String, String), MemberAccess>>,
    member_versions: Mutex<HashMap<String, u64>>,
    /// flow id -> actor -> binding.
    actors: Mutex<HashMap<String, HashMap<String, ActorBinding>>>,
    /// flow id -> named versions, oldest first.
    versions: Mutex<HashMap<String, Vec<NamedVersion>>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn member_version(&self, flow_id: &str) -> u64 {
        let versions = self
            .member_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        versions.get(flow_id).copied().unwrap_or(0)
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
        let members = self.member_version(flow_id);
        Ok(match self.lock().get(flow_id) {
            None => StoredFlow {
                versions: FlowVersions {
                    changes: 0,
                    members,
                },
                ..StoredFlow::default()
            },
            Some(r) => StoredFlow {
                exists: true,
                snapshot: r.snapshot.clone(),
                snapshot_heads: r.snapshot_heads.clone(),
                changes: r.changes.clone(),
                versions: FlowVersions {
                    changes: r.version,
                    members,
                },
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
        record.version += 1;
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
        let mut versions = self
            .member_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *versions.entry(flow_id.to_owned()).or_default() += 1;
        Ok(())
    }

    async fn flow_versions(
        &self,
        flow_ids: &[String],
    ) -> Result<Vec<(String, FlowVersions)>, StoreError> {
        let flows = self.lock();
        Ok(flow_ids
            .iter()
            .filter_map(|id| {
                let versions = FlowVersions {
                    changes: flows.get(id).map_or(0, |r| r.version),
                    members: self.member_version(id),
                };
                (versions != FlowVersions::default()).then(|| (id.clone(), versions))
            })
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn flow_actors(&self, flow_id: &str) -> Result<Vec<ActorBinding>, StoreError> {
        let actors = locked(&self.actors);
        let mut out: Vec<ActorBinding> = actors
            .get(flow_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        out.sort_by(|a, b| a.actor.cmp(&b.actor));
        Ok(out)
    }

    async fn bind_actors(
        &self,
        flow_id: &str,
        bindings: &[ActorBinding],
    ) -> Result<(), StoreError> {
        let mut actors = locked(&self.actors);
        let flow = actors.entry(flow_id.to_owned()).or_default();
        for b in bindings {
            flow.entry(b.actor.clone()).or_insert_with(|| b.clone());
        }
        Ok(())
    }

    async fn named_versions(&self, flow_id: &str) -> Result<Vec<NamedVersion>, StoreError> {
        Ok(locked(&self.versions)
            .get(flow_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn put_named_version(
        &self,
        flow_id: &str,
        version: &NamedVersion,
    ) -> Result<bool, StoreError> {
        let mut versions = locked(&self.versions);
        let list = versions.entry(flow_id.to_owned()).or_default();
        if list.iter().any(|v| v.name == version.name) {
            return Ok(false);
        }
        list.push(version.clone());
        Ok(true)
    }

    async fn delete_named_version(&self, flow_id: &str, name: &str) -> Result<bool, StoreError> {
        let mut versions = locked(&self.versions);
        let Some(list) = versions.get_mut(flow_id) else {
            return Ok(false);
        };
        let before = list.len();
        list.retain(|v| v.name != name);
        Ok(list.len() != before)
    }
}

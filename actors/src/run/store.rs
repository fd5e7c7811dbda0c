//! Durable storage of runs, as the run actors see it.
//!
//! # Guarantees an implementation must give
//! - [`RunStore::append_run_events`] is atomic and returns only once durable: the run's
//!   new state and its new events are committed together or not at all. The actor
//!   broadcasts an event only after this returns, so a watcher never sees an event the
//!   store lacks, and a reload continues exactly where the store is.
//! - `(run_id, seq)` and `(run_id, event_id)` are unique: an append that would repeat
//!   either fails as a whole, as does an append whose first `seq` does not follow the
//!   stored `last_seq` (another writer got there first). The actor removes duplicates
//!   before sequencing, so a conflict means a second writer, not a re-post.
//! - [`RunStore::load_run`] returns the state as of the last append and the newest
//!   events; [`RunStore::run_events`] returns events in `seq` order with no gap.
//! - [`RunStore::flow_runs`] lists runs most recently created first.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use flowhub_protocol::{RunEvent, RunSnapshot, RunSummary};

use crate::store::StoreError;

/// What the store holds for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRun {
    /// The state after the last stored event (`last_seq` included).
    pub snapshot: RunSnapshot,
    /// The newest stored events (at most as many as asked for), in `seq` order.
    pub recent: Vec<RunEvent>,
}

/// Durable storage of runs (see the module doc for the guarantees).
#[async_trait]
pub trait RunStore: Send + Sync + 'static {
    /// The run and its `recent` newest events, or `None` for an unknown run.
    async fn load_run(&self, run_id: &str, recent: usize) -> Result<Option<StoredRun>, StoreError>;

    /// Which of `event_ids` the run already has.
    async fn existing_event_ids(
        &self,
        run_id: &str,
        event_ids: &[String],
    ) -> Result<HashSet<String>, StoreError>;

    /// Atomically stores `events` (sequenced right after the stored `last_seq`) and
    /// the run's state after them (`run`, whose `last_seq` is the last event's).
    async fn append_run_events(
        &self,
        run: &RunSnapshot,
        events: &[RunEvent],
    ) -> Result<(), StoreError>;

    /// Events with `seq > after_seq`, in order, at most `limit`.
    async fn run_events(
        &self,
        run_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RunEvent>, StoreError>;

    /// The flow's runs, most recently created first, at most `limit`.
    async fn flow_runs(&self, flow_id: &str, limit: usize) -> Result<Vec<RunSummary>, StoreError>;
}

struct MemRun {
    snapshot: RunSnapshot,
    events: Vec<RunEvent>,
    event_ids: HashSet<String>,
    /// Creation order, for `flow_runs`.
    created: u64,
}

#[derive(Default)]
struct MemState {
    runs: HashMap<String, MemRun>,
    created: u64,
}

/// An in-process [`RunStore`] for tests and hubs without a database. Durable only for
/// the life of the process; otherwise it keeps every guarantee of the trait.
///
/// A std `Mutex`, not a tokio one: nothing async happens while it is held.
#[derive(Default)]
pub struct MemoryRunStore {
    state: Mutex<MemState>,
}

impl MemoryRunStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        // Every mutation below checks first and then writes, so a panic cannot leave a
        // run half-written and a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl RunStore for MemoryRunStore {
    async fn load_run(&self, run_id: &str, recent: usize) -> Result<Option<StoredRun>, StoreError> {
        Ok(self.lock().runs.get(run_id).map(|r| StoredRun {
            snapshot: r.snapshot.clone(),
            recent: r.events[r.events.len().saturating_sub(recent)..].to_vec(),
        }))
    }

    async fn existing_event_ids(
        &self,
        run_id: &str,
        event_ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let state = self.lock();
        let Some(run) = state.runs.get(run_id) else {
            return Ok(HashSet::new());
        };
        Ok(event_ids
            .iter()
            .filter(|id| run.event_ids.contains(*id))
            .cloned()
            .collect())
    }

    async fn append_run_events(
        &self,
        run: &RunSnapshot,
        events: &[RunEvent],
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        let stored_last = state.runs.get(&run.id).map_or(0, |r| r.snapshot.last_seq);
        let stored_flow = state.runs.get(&run.id).map(|r| r.snapshot.flow_id.clone());
        // Check everything before writing anything: all or nothing.
        if stored_flow.is_some_and(|f| f != run.flow_id) {
            return Err(StoreError::Query(format!(
                "run {} belongs to another flow",
                run.id
            )));
        }
        let mut batch_ids = HashSet::new();
        for (i, e) in events.iter().enumerate() {
            if e.seq != stored_last + 1 + i as u64 {
                return Err(StoreError::Query(format!(
                    "run {}: event seq {} does not follow {}",
                    run.id,
                    e.seq,
                    stored_last + i as u64
                )));
            }
            let known = state
                .runs
                .get(&run.id)
                .is_some_and(|r| r.event_ids.contains(&e.event.event_id));
            if known || !batch_ids.insert(e.event.event_id.as_str()) {
                return Err(StoreError::Query(format!(
                    "run {}: duplicate event id {}",
                    run.id, e.event.event_id
                )));
            }
        }
        if run.last_seq != stored_last + events.len() as u64 {
            return Err(StoreError::Query(format!(
                "run {}: last_seq does not match the events",
                run.id
            )));
        }
        state.created += 1;
        let created = state.created;
        let entry = state.runs.entry(run.id.clone()).or_insert_with(|| MemRun {
            snapshot: run.clone(),
            events: Vec::new(),
            event_ids: HashSet::new(),
            created,
        });
        entry.snapshot = run.clone();
        for e in events {
            entry.event_ids.insert(e.event.event_id.clone());
            entry.events.push(e.clone());
        }
        Ok(())
    }

    async fn run_events(
        &self,
        run_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RunEvent>, StoreError> {
        let state = self.lock();
        let Some(run) = state.runs.get(run_id) else {
            return Ok(Vec::new());
        };
        // seq n is at index n - 1.
        let start = usize::try_from(after_seq)
            .unwrap_or(usize::MAX)
            .min(run.events.len());
        Ok(run.events[start..].iter().take(limit).cloned().collect())
    }

    async fn flow_runs(&self, flow_id: &str, limit: usize) -> Result<Vec<RunSummary>, StoreError> {
        let state = self.lock();
        let mut runs: Vec<&MemRun> = state
            .runs
            .values()
            .filter(|r| r.snapshot.flow_id == flow_id)
            .collect();
        runs.sort_by_key(|r| std::cmp::Reverse(r.created));
        Ok(runs
            .into_iter()
            .take(limit)
            .map(|r| super::summary(&r.snapshot))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use flowhub_protocol::{RunEventInput, RunEventKind};

    use super::*;
    use crate::run::{apply, new_snapshot};

    fn events(from: u64, to: u64) -> Vec<RunEvent> {
        (from..=to)
            .map(|seq| RunEvent {
                seq,
                event: RunEventInput {
                    event_id: format!("e{seq}"),
                    kind: RunEventKind::StepStarted,
                    flow_id: "f".into(),
                    node_id: Some(format!("n{seq}")),
                    ts: seq,
                    duration_ms: None,
                    error: None,
                    level: None,
                    message: None,
                    attempt: None,
                    status: None,
                    flow_heads: None,
                },
            })
            .collect()
    }

    fn state_after(run: &mut RunSnapshot, events: &[RunEvent]) -> RunSnapshot {
        for e in events {
            apply(run, e, 100);
        }
        run.clone()
    }

    #[tokio::test]
    async fn appends_are_atomic_and_checked() {
        let store = MemoryRunStore::new();
        let mut run = new_snapshot("r", "f");
        let first = events(1, 3);
        store
            .append_run_events(&state_after(&mut run, &first), &first)
            .await
            .unwrap();

        // A repeated event id or a seq that does not follow fails and writes nothing.
        let mut dup = events(4, 5);
        dup[1].event.event_id = "e1".into();
        let mut bad = run.clone();
        assert!(store
            .append_run_events(&state_after(&mut bad, &dup), &dup)
            .await
            .is_err());
        let gap = events(6, 6);
        let mut bad = run.clone();
        assert!(store
            .append_run_events(&state_after(&mut bad, &gap), &gap)
            .await
            .is_err());

        let loaded = store.load_run("r", 2).await.unwrap().unwrap();
        assert_eq!(loaded.snapshot, run);
        assert_eq!(loaded.recent, events(2, 3));
        assert_eq!(store.run_events("r", 1, 10).await.unwrap(), events(2, 3));
        let known = store
            .existing_event_ids("r", &["e2".into(), "e9".into()])
            .await
            .unwrap();
        assert_eq!(known, HashSet::from(["e2".to_string()]));
        assert!(store.load_run("nope", 2).await.unwrap().is_none());
        assert_eq!(store.flow_runs("f", 10).await.unwrap()[0].last_seq, 3);
    }
}

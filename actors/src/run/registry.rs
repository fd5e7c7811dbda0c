//! Finds the one run actor of a run on this node, spawning it on first use.
//!
//! Exactly one actor per run, as for flows (see [`ActorDirectory`]): the first caller
//! loads the run from the store and spawns its actor. Unlike flows, a run must exist
//! before it can be watched: opening an unknown run gives `None` and spawns nothing;
//! only ingest creates runs. An idle actor leaves the directory before stopping; a
//! caller that obtained it just before gets an error from its next call and retries,
//! which spawns a fresh actor that reloads from the store.

use std::sync::Arc;
use std::time::Duration;

use flowhub_protocol::{RequestId, RunEvent, RunEventInput, RunSnapshot, RunSummary};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorId, ActorRef};

use super::actor::{
    IngestOutcome, RunActor, RunArgs, RunCounters, RunDeps, RunInfo, RunMsg, RunNode, RunStart,
};
use super::feed::FlowRunsFeed;
use super::{validate_batch, RunError};
use crate::directory::ActorDirectory;
use crate::outbound::Outbound;

/// Most events one `events` query returns.
pub const MAX_EVENTS_PAGE: usize = 10_000;

#[derive(Clone)]
pub struct RunRegistry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    deps: Arc<RunDeps>,
    node: RunNode,
}

/// A reading of the run counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Run actors alive now.
    pub runs_open: u64,
    /// Run actors spawned since start.
    pub spawned: u64,
    /// Events stored and broadcast.
    pub events_accepted: u64,
    /// Re-posted events ignored.
    pub events_duplicate: u64,
    /// `resume_from` sent to watchers that fell behind (or whose run actor stopped).
    pub resumes: u64,
}

/// The outcome of [`RunRegistry::watch`].
#[derive(Debug)]
pub enum WatchOutcome {
    /// Watching; the actor queued `run_state`.
    Watching(ActorRef<RunMsg>),
    NotFound,
    /// The caller may not read the run's flow.
    Forbidden,
}

/// A watcher to add to a run.
pub struct WatchRequest {
    /// Unique per watcher on this node (a session id).
    pub watcher_id: String,
    pub out: Outbound,
    pub since_seq: u64,
    /// Echoed in `run_state`.
    pub request_id: Option<RequestId>,
}

impl RunRegistry {
    pub fn new(deps: Arc<RunDeps>) -> Self {
        RunRegistry {
            inner: Arc::new(RegistryInner {
                deps,
                node: RunNode {
                    directory: Arc::new(ActorDirectory::new()),
                    feed: FlowRunsFeed::new(),
                    counters: Arc::new(RunCounters::default()),
                },
            }),
        }
    }

    pub fn deps(&self) -> &Arc<RunDeps> {
        &self.inner.deps
    }

    /// The per-flow runs feed the actors publish to.
    pub fn feed(&self) -> &FlowRunsFeed {
        &self.inner.node.feed
    }

    /// The running actor of `run_id`, loading it from the store if needed; `None` for
    /// a run the store does not have. With `create = Some(flow_id)`, an unknown run is
    /// created (empty, stored by its first ingest).
    pub async fn open(
        &self,
        run_id: &str,
        create: Option<&str>,
    ) -> Result<Option<ActorRef<RunMsg>>, RunError> {
        let spawn = || async {
            let deps = &self.inner.deps;
            let stored = deps
                .store
                .load_run(run_id, deps.config.recent_events)
                .await?;
            let start = match (stored, create) {
                (Some(stored), _) => RunStart::Stored(stored),
                (None, Some(flow_id)) => RunStart::New {
                    flow_id: flow_id.to_owned(),
                },
                // Unknown, and the caller does not create runs: nothing to spawn.
                (None, None) => return Ok(None),
            };
            let args = RunArgs {
                run_id: run_id.to_owned(),
                start,
                deps: deps.clone(),
                node: self.inner.node.clone(),
            };
            let (actor, _join) = Actor::spawn(None, RunActor, args)
                .await
                .map_err(|e| RunError::Spawn(e.to_string()))?;
            Ok(Some(actor))
        };
        self.inner
            .node
            .directory
            .get_or_spawn(run_id, spawn, || RunError::ActorGone)
            .await
    }

    /// The running actor of `run_id`, without loading or spawning.
    pub fn get(&self, run_id: &str) -> Option<ActorRef<RunMsg>> {
        self.inner.node.directory.get(run_id)
    }

    /// Removes `run_id` if it still maps to the actor `id` (a newer actor is kept).
    pub fn forget(&self, run_id: &str, id: ActorId) {
        self.inner.node.directory.forget(run_id, id)
    }

    /// Sequences, stores and broadcasts a batch (creating the run on its first
    /// batch). Idempotent by event id.
    pub async fn ingest(
        &self,
        run_id: &str,
        events: Vec<RunEventInput>,
    ) -> Result<IngestOutcome, RunError> {
        super::validate_run_id(run_id)?;
        validate_batch(&events)?;
        let flow_id = events[0].flow_id.clone();
        // An actor may retire between lookup and call; the retry spawns a fresh one.
        // Re-sending is safe: the actor drops events it already has.
        for _ in 0..3 {
            let Some(actor) = self.open(run_id, Some(&flow_id)).await? else {
                return Err(RunError::ActorGone);
            };
            let events = events.clone();
            match actor
                .call(|reply| RunMsg::Ingest { events, reply }, None)
                .await
            {
                Ok(CallResult::Success(result)) => return result,
                _ => continue,
            }
        }
        Err(RunError::ActorGone)
    }

    /// Adds a watcher to a run if `can_read(flow_id)` allows it: the actor queues
    /// `run_state`, then every event after `since_seq`, then live events.
    pub async fn watch(
        &self,
        run_id: &str,
        request: WatchRequest,
        can_read: impl Fn(&str) -> bool,
    ) -> Result<WatchOutcome, RunError> {
        super::validate_run_id(run_id)?;
        for _ in 0..3 {
            let Some(actor) = self.open(run_id, None).await? else {
                return Ok(WatchOutcome::NotFound);
            };
            let info = match actor.call(RunMsg::Info, None).await {
                Ok(CallResult::Success(info)) => info,
                _ => continue,
            };
            if !info.exists {
                return Ok(WatchOutcome::NotFound);
            }
            if !can_read(&info.flow_id) {
                return Ok(WatchOutcome::Forbidden);
            }
            let joined = actor
                .call(
                    |reply| RunMsg::Watch {
                        watcher_id: request.watcher_id.clone(),
                        out: request.out.clone(),
                        since_seq: request.since_seq,
                        request_id: request.request_id.clone(),
                        reply,
                    },
                    None,
                )
                .await;
            if matches!(joined, Ok(CallResult::Success(()))) {
                return Ok(WatchOutcome::Watching(actor));
            }
        }
        Err(RunError::ActorGone)
    }

    /// Removes a watcher (no effect if it is not watching).
    pub fn unwatch(&self, run_id: &str, watcher_id: &str) {
        if let Some(actor) = self.get(run_id) {
            let _ = actor.cast(RunMsg::Unwatch {
                watcher_id: watcher_id.to_owned(),
            });
        }
    }

    /// Who a run belongs to, from its actor or the store; `None` if unknown.
    pub async fn info(&self, run_id: &str) -> Result<Option<RunInfo>, RunError> {
        Ok(self.snapshot(run_id).await?.map(|s| RunInfo {
            flow_id: s.flow_id,
            exists: true,
        }))
    }

    /// The run's state, from its actor when one is open, else from the store (the
    /// store is never behind the actor: the actor applies a batch after storing it).
    pub async fn snapshot(&self, run_id: &str) -> Result<Option<RunSnapshot>, RunError> {
        if let Some(actor) = self.get(run_id) {
            if let Ok(CallResult::Success(snapshot)) = actor.call(RunMsg::Snapshot, None).await {
                if snapshot.is_some() {
                    return Ok(snapshot);
                }
            }
        }
        Ok(self
            .inner
            .deps
            .store
            .load_run(run_id, 0)
            .await?
            .map(|s| s.snapshot))
    }

    /// Stored events with `seq > since_seq`, in order, at most `limit`
    /// (capped at [`MAX_EVENTS_PAGE`]).
    pub async fn events(
        &self,
        run_id: &str,
        since_seq: u64,
        limit: usize,
    ) -> Result<Vec<RunEvent>, RunError> {
        let limit = limit.min(MAX_EVENTS_PAGE);
        Ok(self
            .inner
            .deps
            .store
            .run_events(run_id, since_seq, limit)
            .await?)
    }

    /// The flow's runs, most recent first.
    pub async fn flow_runs(
        &self,
        flow_id: &str,
        limit: usize,
    ) -> Result<Vec<RunSummary>, RunError> {
        Ok(self.inner.deps.store.flow_runs(flow_id, limit).await?)
    }

    /// Run ids with a live actor.
    pub fn open_runs(&self) -> Vec<String> {
        self.inner.node.directory.live_keys()
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> RunStats {
        let c = &self.inner.node.counters;
        RunStats {
            runs_open: self.open_runs().len() as u64,
            spawned: self.spawned(),
            events_accepted: c.events_accepted.get(),
            events_duplicate: c.events_duplicate.get(),
            resumes: c.resumes.get(),
        }
    }

    /// How many run actors this registry ever spawned (for tests and metrics).
    pub fn spawned(&self) -> u64 {
        self.inner.node.directory.spawned()
    }

    /// Stops every run actor and waits for them (shutdown). Their events are already
    /// in the store: nothing is broadcast before it is stored.
    pub async fn stop_all(&self) {
        self.inner
            .node
            .directory
            .stop_all(Duration::from_secs(5))
            .await
    }
}

//! Finds the one flow actor of a flow on this node, spawning it on first use.
//!
//! Many sessions may subscribe to the same flow at the same instant. Each flow id maps
//! to a `OnceCell`: the first caller spawns (and loads the flow), concurrent callers
//! await the same cell, so exactly one actor is spawned. The map lock is never held
//! across an await: only the cell is shared.
//!
//! An idle actor removes itself ([`FlowRegistry::forget`]) before stopping. A caller
//! that obtained it just before gets an error from its next call and retries, which
//! spawns a fresh actor that loads everything from the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorCell, ActorId, ActorRef, ActorStatus};
use tokio::sync::OnceCell;

use super::actor::{FlowActor, FlowArgs, FlowDeps, FlowMsg};
use crate::error::{ActorsError, Result};
use tracing::debug;

type Slot = Arc<OnceCell<ActorRef<FlowMsg>>>;

#[derive(Clone)]
pub struct FlowRegistry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    flows: DashMap<String, Slot>,
    deps: Arc<FlowDeps>,
    spawned: AtomicU64,
}

impl FlowRegistry {
    pub fn new(deps: Arc<FlowDeps>) -> Self {
        FlowRegistry {
            inner: Arc::new(RegistryInner {
                flows: DashMap::new(),
                deps,
                spawned: AtomicU64::new(0),
            }),
        }
    }

    pub fn deps(&self) -> &Arc<FlowDeps> {
        &self.inner.deps
    }

    /// The running actor of `flow_id`, spawning and loading it if needed.
    pub async fn get_or_spawn(&self, flow_id: &str) -> Result<ActorRef<FlowMsg>> {
        // Two rounds: the second covers an actor that died between lookup and use.
        for _ in 0..2 {
            let slot = self
                .inner
                .flows
                .entry(flow_id.to_owned())
                .or_default()
                .clone();
            let spawned = slot
                .get_or_try_init(|| async {
                    let args = FlowArgs {
                        flow_id: flow_id.to_owned(),
                        deps: self.inner.deps.clone(),
                        registry: self.clone(),
                    };
                    let (actor, _join) = Actor::spawn(None, FlowActor, args).await?;
                    self.inner.spawned.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, ActorsError>(actor)
                })
                .await;
            match spawned {
                Ok(actor) if is_alive(actor.get_cell()) => return Ok(actor.clone()),
                Ok(actor) => self.forget(flow_id, actor.get_id()),
                Err(e) => {
                    // Drop the empty slot so the next caller tries again from scratch.
                    self.inner
                        .flows
                        .remove_if(flow_id, |_, s| Arc::ptr_eq(s, &slot) && s.get().is_none());
                    return Err(e);
                }
            }
        }
        Err(ActorsError::ActorGone)
    }

    /// The running actor of `flow_id`, without spawning.
    pub fn get(&self, flow_id: &str) -> Option<ActorRef<FlowMsg>> {
        let slot = self.inner.flows.get(flow_id)?.clone();
        slot.get().filter(|a| is_alive(a.get_cell())).cloned()
    }

    /// Removes `flow_id` if it still maps to the actor `id` (a newer actor is kept).
    pub fn forget(&self, flow_id: &str, id: ActorId) {
        self.inner.flows.remove_if(flow_id, |_, slot| {
            slot.get().is_some_and(|a| a.get_id() == id)
        });
    }

    /// Flow ids with a live actor.
    pub fn open_flows(&self) -> Vec<String> {
        self.inner
            .flows
            .iter()
            .filter(|e| e.value().get().is_some_and(|a| is_alive(a.get_cell())))
            .map(|e| e.key().clone())
            .collect()
    }

    /// Starts the store watch: every `interval`, one batched query reads the
    /// [`FlowVersions`](crate::store::FlowVersions) of every open flow, and each actor catches up on changes and
    /// memberships that the bus (at most once) did not bring. This bounds how long a
    /// split bus, a lost message or a Redis outage keeps a replica behind the store —
    /// or a revoked user connected — to one interval plus a query, independently of
    /// Redis. The task ends when the registry is dropped.
    pub fn spawn_store_watch(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let registry = FlowRegistry { inner };
                let open = registry.open_flows();
                if open.is_empty() {
                    continue;
                }
                // Bounded: a hung store must not pile up polls (the next tick retries).
                let store = registry.inner.deps.store.clone();
                match tokio::time::timeout(
                    interval.max(Duration::from_secs(1)),
                    store.flow_versions(&open),
                )
                .await
                {
                    Ok(Ok(rows)) => {
                        for (flow_id, versions) in rows {
                            if let Some(actor) = registry.get(&flow_id) {
                                let _ = actor.cast(FlowMsg::StoreVersions(versions));
                            }
                        }
                    }
                    Ok(Err(e)) => debug!(error = %e, "store watch: query failed"),
                    Err(_) => debug!("store watch: query timed out"),
                }
            }
        })
    }

    /// How many flow actors this registry ever spawned (for tests and metrics).
    pub fn spawned(&self) -> u64 {
        self.inner.spawned.load(Ordering::Relaxed)
    }

    /// Stops every flow actor and waits for them to finish (shutdown). Their changes
    /// are already in the store: nothing is acknowledged before it is stored.
    pub async fn stop_all(&self) {
        let actors: Vec<ActorRef<FlowMsg>> = self
            .inner
            .flows
            .iter()
            .filter_map(|e| e.value().get().cloned())
            .collect();
        for actor in actors {
            let _ = actor
                .stop_and_wait(
                    Some("shutdown".into()),
                    Some(std::time::Duration::from_secs(5)),
                )
                .await;
        }
        self.inner.flows.clear();
    }
}

fn is_alive(cell: ActorCell) -> bool {
    matches!(
        cell.get_status(),
        ActorStatus::Starting | ActorStatus::Running | ActorStatus::Upgrading
    )
}

//! Finds the one flow actor of a flow on this node, spawning it on first use.
//!
//! Exactly one actor per flow, however many sessions subscribe at the same instant
//! (see [`ActorDirectory`]); an idle actor leaves the directory before stopping, and
//! the next caller spawns a fresh one that loads everything from the store. The
//! registry adds what is specific to flows: how an actor is spawned, and the store
//! watch.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorRef};
use tracing::debug;

use super::actor::{FlowActor, FlowArgs, FlowDeps, FlowMsg};
use crate::directory::ActorDirectory;
use crate::error::{ActorsError, Result};

#[derive(Clone)]
pub struct FlowRegistry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    flows: Arc<ActorDirectory<FlowMsg>>,
    deps: Arc<FlowDeps>,
}

impl FlowRegistry {
    pub fn new(deps: Arc<FlowDeps>) -> Self {
        FlowRegistry {
            inner: Arc::new(RegistryInner {
                flows: Arc::new(ActorDirectory::new()),
                deps,
            }),
        }
    }

    pub fn deps(&self) -> &Arc<FlowDeps> {
        &self.inner.deps
    }

    /// The running actor of `flow_id`, spawning and loading it if needed.
    pub async fn get_or_spawn(&self, flow_id: &str) -> Result<ActorRef<FlowMsg>> {
        let spawn = || async {
            let args = FlowArgs {
                flow_id: flow_id.to_owned(),
                deps: self.inner.deps.clone(),
                directory: self.inner.flows.clone(),
            };
            let (actor, _join) = Actor::spawn(None, FlowActor, args).await?;
            Ok::<_, ActorsError>(Some(actor))
        };
        self.inner
            .flows
            .get_or_spawn(flow_id, spawn, || ActorsError::ActorGone)
            .await?
            .ok_or(ActorsError::ActorGone)
    }

    /// The running actor of `flow_id`, without spawning.
    pub fn get(&self, flow_id: &str) -> Option<ActorRef<FlowMsg>> {
        self.inner.flows.get(flow_id)
    }

    /// Removes `flow_id` if it still maps to the actor `id` (a newer actor is kept).
    pub fn forget(&self, flow_id: &str, id: ActorId) {
        self.inner.flows.forget(flow_id, id)
    }

    /// Flow ids with a live actor.
    pub fn open_flows(&self) -> Vec<String> {
        self.inner.flows.live_keys()
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
        self.inner.flows.spawned()
    }

    /// Stops every flow actor and waits for them to finish (shutdown). Their changes
    /// are already in the store: nothing is acknowledged before it is stored.
    pub async fn stop_all(&self) {
        self.inner.flows.stop_all(Duration::from_secs(5)).await
    }
}

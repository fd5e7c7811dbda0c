//! One live actor per key on this node, spawned on first use: the get-or-spawn that
//! both the [`FlowRegistry`](crate::flow::FlowRegistry) and the
//! [`RunRegistry`](crate::run::RunRegistry) are built on.
//!
//! Many callers may ask for the same key at the same instant. Each key maps to a
//! `OnceCell`: the first caller spawns (and loads), concurrent callers await the same
//! cell, so exactly one actor is spawned. The map lock is never held across an await:
//! only the cell is shared.
//!
//! An actor that retires removes itself ([`ActorDirectory::forget`]) before stopping,
//! so it depends on this directory, not on the registry that spawns it. A caller that
//! obtained it just before gets an error from its next call and retries, which spawns
//! a fresh actor.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::{ActorCell, ActorId, ActorRef, ActorStatus, Message};
use tokio::sync::OnceCell;

type Slot<M> = Arc<OnceCell<ActorRef<M>>>;

/// Why a slot stayed empty.
enum Empty<E> {
    /// The spawner declined: there is nothing to spawn for this key.
    Declined,
    Failed(E),
}

/// Live actors by key; share it behind an `Arc`.
pub struct ActorDirectory<M: Message> {
    slots: DashMap<String, Slot<M>>,
    spawned: AtomicU64,
}

impl<M: Message> Default for ActorDirectory<M> {
    fn default() -> Self {
        ActorDirectory {
            slots: DashMap::new(),
            spawned: AtomicU64::new(0),
        }
    }
}

impl<M: Message> ActorDirectory<M> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The live actor of `key`, spawning it with `spawn` when there is none.
    /// `Ok(None)`: `spawn` declined (returned `Ok(None)`; nothing is kept, the next
    /// caller asks again). `gone()` is the error when actors keep dying between the
    /// spawn and the check.
    pub async fn get_or_spawn<E, F, Fut>(
        &self,
        key: &str,
        spawn: F,
        gone: impl Fn() -> E,
    ) -> Result<Option<ActorRef<M>>, E>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<ActorRef<M>>, E>>,
    {
        // Two rounds: the second covers an actor that died between lookup and use.
        for _ in 0..2 {
            let slot = self.slots.entry(key.to_owned()).or_default().clone();
            let opened = slot
                .get_or_try_init(|| async {
                    match spawn().await {
                        Ok(Some(actor)) => {
                            self.spawned.fetch_add(1, Ordering::Relaxed);
                            Ok(actor)
                        }
                        Ok(None) => Err(Empty::Declined),
                        Err(e) => Err(Empty::Failed(e)),
                    }
                })
                .await;
            match opened {
                Ok(actor) if is_alive(actor.get_cell()) => return Ok(Some(actor.clone())),
                Ok(actor) => self.forget(key, actor.get_id()),
                Err(empty) => {
                    // Drop the empty slot so the next caller tries again from scratch.
                    self.slots
                        .remove_if(key, |_, s| Arc::ptr_eq(s, &slot) && s.get().is_none());
                    return match empty {
                        Empty::Declined => Ok(None),
                        Empty::Failed(e) => Err(e),
                    };
                }
            }
        }
        Err(gone())
    }

    /// The live actor of `key`, without spawning.
    pub fn get(&self, key: &str) -> Option<ActorRef<M>> {
        let slot = self.slots.get(key)?.clone();
        slot.get().filter(|a| is_alive(a.get_cell())).cloned()
    }

    /// Removes `key` if it still maps to the actor `id` (a newer actor is kept).
    pub fn forget(&self, key: &str, id: ActorId) {
        self.slots
            .remove_if(key, |_, slot| slot.get().is_some_and(|a| a.get_id() == id));
    }

    /// Keys with a live actor.
    pub fn live_keys(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|e| e.value().get().is_some_and(|a| is_alive(a.get_cell())))
            .map(|e| e.key().clone())
            .collect()
    }

    /// How many actors this directory ever spawned.
    pub fn spawned(&self) -> u64 {
        self.spawned.load(Ordering::Relaxed)
    }

    /// Stops every actor, waiting up to `each` for each, and forgets them all.
    pub async fn stop_all(&self, each: Duration) {
        let actors: Vec<ActorRef<M>> = self
            .slots
            .iter()
            .filter_map(|e| e.value().get().cloned())
            .collect();
        for actor in actors {
            let _ = actor
                .stop_and_wait(Some("shutdown".into()), Some(each))
                .await;
        }
        self.slots.clear();
    }
}

fn is_alive(cell: ActorCell) -> bool {
    matches!(
        cell.get_status(),
        ActorStatus::Starting | ActorStatus::Running | ActorStatus::Upgrading
    )
}

//! The pub/sub bus between hub nodes.
//!
//! # Guarantee: at most once
//! A published message reaches each current subscriber of its channel at most once, and
//! may not reach it at all (a node or the broker blips, a slow subscriber overflows).
//! Nothing in flowhub relies on the bus for correctness: every acknowledged change is
//! in the [`Store`](crate::store::Store), and flow actors repair gaps by comparing heads
//! and reading the store. The bus only makes the common case fast.

mod envelope;
mod memory;

pub use envelope::{BusFormat, FlowBusMessage, MemberUpdate, PresenceUpdate, BUS_FORMAT_VERSION};

pub use memory::MemoryBus;

use async_trait::async_trait;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// A live subscription; messages arrive on `rx`. Dropping it unsubscribes.
pub struct BusSubscription {
    pub rx: mpsc::Receiver<Vec<u8>>,
    // Held only for its Drop, which removes the subscription from the bus.
    _guard: Box<dyn Send + Sync>,
}

impl BusSubscription {
    pub fn new(rx: mpsc::Receiver<Vec<u8>>, guard: Box<dyn Send + Sync>) -> Self {
        BusSubscription { rx, _guard: guard }
    }
}

/// Pub/sub between nodes, at most once (see the module doc).
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Hands a message to the bus and returns without waiting for the network, the
    /// broker or any subscriber.
    ///
    /// Flow and run actors call this on the edit and ingest paths, right after the
    /// store acknowledged a change; whatever an implementation does here delays every
    /// edit of the flow. So an implementation must not block on I/O: it queues (a
    /// bounded queue drained by a background task) or delivers in memory, and when it
    /// cannot do either at once it drops the message. Delivery is at most once: `Ok`
    /// only means "accepted", the message may still be lost later; an error means it
    /// was dropped (queue full, bus closed). Callers log and go on, never retry.
    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), BusError>;
    /// Subscribes to one channel. Called when a flow or run actor starts; an
    /// implementation bounds any network wait (the actor's first message waits for
    /// it) and may keep subscribing in the background after returning.
    async fn subscribe(&self, channel: &str) -> Result<BusSubscription, BusError>;
}

/// Channel names, in one place so every implementation agrees.
pub mod channel {
    /// Changes and heads of one flow.
    pub fn flow(flow_id: &str) -> String {
        format!("flow:{flow_id}")
    }
}

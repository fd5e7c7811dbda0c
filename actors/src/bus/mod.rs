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

pub use envelope::{FlowBusMessage, MemberUpdate, PresenceUpdate};

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
    /// Publishes without waiting for subscribers; an error means the bus is down.
    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), BusError>;
    /// Subscribes to one channel.
    async fn subscribe(&self, channel: &str) -> Result<BusSubscription, BusError>;
}

/// Channel names, in one place so every implementation agrees.
pub mod channel {
    /// Changes and heads of one flow.
    pub fn flow(flow_id: &str) -> String {
        format!("flow:{flow_id}")
    }
}

//! The in-process bus: one node, or several hubs inside one test process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::sync::mpsc;

use super::{Bus, BusError, BusSubscription};

/// How many messages may wait for a subscriber before newer ones are dropped
/// (at most once: a subscriber that lags loses messages, it never stalls publishers).
const SUBSCRIBER_BUFFER: usize = 1024;

type Subscribers = DashMap<String, Vec<(u64, mpsc::Sender<Vec<u8>>)>>;

#[derive(Default, Clone)]
pub struct MemoryBus {
    subscribers: Arc<Subscribers>,
    next_id: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages dropped because a subscriber's buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

struct Unsubscribe {
    subscribers: Arc<Subscribers>,
    channel: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if let Some(mut subs) = self.subscribers.get_mut(&self.channel) {
            subs.retain(|(id, _)| *id != self.id);
        }
        self.subscribers
            .remove_if(&self.channel, |_, subs| subs.is_empty());
    }
}

#[async_trait]
impl Bus for MemoryBus {
    /// Delivers in memory with `try_send`: never waits (a subscriber whose buffer is
    /// full loses the message), as the trait requires.
    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), BusError> {
        if let Some(subs) = self.subscribers.get(channel) {
            for (_, tx) in subs.iter() {
                if tx.try_send(payload.clone()).is_err() {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<BusSubscription, BusError> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.subscribers
            .entry(channel.to_owned())
            .or_default()
            .push((id, tx));
        let guard = Unsubscribe {
            subscribers: self.subscribers.clone(),
            channel: channel.to_owned(),
            id,
        };
        Ok(BusSubscription::new(rx, Box::new(guard)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_to_subscribers_and_unsubscribes_on_drop() {
        let bus = MemoryBus::new();
        let mut a = bus.subscribe("flow:x").await.unwrap();
        let b = bus.subscribe("flow:x").await.unwrap();
        bus.publish("flow:x", b"hi".to_vec()).await.unwrap();
        bus.publish("flow:y", b"other".to_vec()).await.unwrap();
        assert_eq!(a.rx.recv().await.unwrap(), b"hi");
        assert!(a.rx.try_recv().is_err());
        drop(b);
        drop(a);
        assert!(bus.subscribers.is_empty());
    }

    #[tokio::test]
    async fn a_full_subscriber_loses_messages_instead_of_blocking() {
        let bus = MemoryBus::new();
        let _sub = bus.subscribe("c").await.unwrap();
        for _ in 0..SUBSCRIBER_BUFFER + 10 {
            bus.publish("c", vec![1]).await.unwrap();
        }
        assert_eq!(bus.dropped(), 10);
    }
}

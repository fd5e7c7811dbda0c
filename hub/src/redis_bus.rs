//! The [`Bus`] on Redis pub/sub, for several hub nodes.
//!
//! # Guarantee: at most once
//! Redis pub/sub drops messages whenever a connection blips and never replays them.
//! flowhub does not rely on it: flow actors publish their heads periodically and read
//! what they lack from the store (see `flowhub_actors::bus`). This bus only has to be
//! fast, and to come back by itself.
//!
//! # Shape
//! - One RESP3 connection per node carries both publishes and subscriptions (pushes),
//!   not one connection per actor. Local subscribers of a channel share one Redis
//!   subscription: the first subscribes, the last one to leave unsubscribes.
//! - On a single Redis, a `ConnectionManager` reconnects with exponential backoff and
//!   resubscribes every channel by itself.
//! - Every payload travels behind an 8-byte send time (microseconds since the epoch),
//!   so receivers can report the bus lag (`/metrics`); across machines it includes
//!   their clock skew.
//! - On a Redis Cluster (`FLOWHUB_REDIS_URL` lists several `redis://` seeds separated
//!   by commas, or uses the `redis+cluster://` scheme), the bus uses sharded pub/sub
//!   (`SSUBSCRIBE`/`SPUBLISH`, Redis 7): each message stays inside the shard that owns
//!   its channel's slot, so adding shards adds pub/sub capacity.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use flowhub_actors::bus::{Bus, BusError, BusSubscription};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Messages that may wait for one local subscriber before newer ones are dropped.
const SUBSCRIBER_BUFFER: usize = 1024;

type Subscribers = DashMap<String, Vec<(u64, mpsc::Sender<Vec<u8>>)>>;

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct RedisBusStats {
    pub published: AtomicU64,
    pub publish_errors: AtomicU64,
    pub received: AtomicU64,
    pub dropped: AtomicU64,
    pub disconnects: AtomicU64,
    /// Sum and count of publish → receive delays, in microseconds.
    pub lag_micros_total: AtomicU64,
    pub lag_samples: AtomicU64,
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Prefixes the send time (µs since the epoch) to a payload.
fn stamp(payload: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&now_micros().to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Splits a stamped payload into its send time and the payload.
fn unstamp(mut bytes: Vec<u8>) -> Option<(u64, Vec<u8>)> {
    if bytes.len() < 8 {
        return None;
    }
    let sent = u64::from_be_bytes(bytes[..8].try_into().ok()?);
    bytes.drain(..8);
    Some((sent, bytes))
}

#[derive(Clone)]
pub struct RedisBus {
    conn: Conn,
    subscribers: Arc<Subscribers>,
    next_id: Arc<AtomicU64>,
    stats: Arc<RedisBusStats>,
}

fn unavailable(e: redis::RedisError) -> BusError {
    BusError::Unavailable(e.to_string())
}

/// Seeds of a cluster URL, or `None` for a single Redis.
fn cluster_seeds(url: &str) -> Option<Vec<String>> {
    if let Some(rest) = url.strip_prefix("redis+cluster://") {
        return Some(
            rest.split(',')
                .map(|s| format!("redis://{}", s.trim()))
                .collect(),
        );
    }
    url.contains(',')
        .then(|| url.split(',').map(|s| s.trim().to_owned()).collect())
}

fn with_resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{}/?protocol=resp3", url.trim_end_matches('/'))
    }
}

impl RedisBus {
    pub async fn connect(url: &str) -> Result<RedisBus, BusError> {
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let conn = match cluster_seeds(url) {
            Some(seeds) => {
                let client = ClusterClient::builder(seeds)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(push_tx)
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(2))
                    .retries(3)
                    .build()
                    .map_err(unavailable)?;
                Conn::Cluster(client.get_async_connection().await.map_err(unavailable)?)
            }
            None => {
                let client = redis::Client::open(with_resp3(url)).map_err(unavailable)?;
                let config = ConnectionManagerConfig::new()
                    .set_push_sender(push_tx)
                    .set_automatic_resubscription()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1));
                Conn::Single(
                    ConnectionManager::new_with_config(client, config)
                        .await
                        .map_err(unavailable)?,
                )
            }
        };
        let bus = RedisBus {
            conn,
            subscribers: Arc::new(DashMap::new()),
            next_id: Arc::new(AtomicU64::new(0)),
            stats: Arc::new(RedisBusStats::default()),
        };
        tokio::spawn(dispatch(push_rx, bus.clone()));
        info!(
            cluster = matches!(bus.conn, Conn::Cluster(_)),
            "redis bus connected"
        );
        Ok(bus)
    }

    pub fn stats(&self) -> &RedisBusStats {
        &self.stats
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// A cheap round trip, for `/readyz`.
    pub async fn ping(&self) -> Result<(), BusError> {
        let cmd = redis::cmd("PING");
        match self.conn.clone() {
            Conn::Single(mut c) => cmd
                .query_async::<String>(&mut c)
                .await
                .map(drop)
                .map_err(unavailable),
            Conn::Cluster(mut c) => cmd
                .query_async::<String>(&mut c)
                .await
                .map(drop)
                .map_err(unavailable),
        }
    }

    /// Runs a command on the bus's connection (node heartbeats, counters).
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BusError> {
        match self.conn.clone() {
            Conn::Single(mut c) => cmd.query_async(&mut c).await.map_err(unavailable),
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await.map_err(unavailable),
        }
    }

    /// Runs a pipeline on the bus's connection.
    pub async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, BusError> {
        match self.conn.clone() {
            Conn::Single(mut c) => pipe.query_async(&mut c).await.map_err(unavailable),
            Conn::Cluster(mut c) => pipe.query_async(&mut c).await.map_err(unavailable),
        }
    }

    async fn redis_subscribe(&self, channel: &str) -> Result<(), BusError> {
        match self.conn.clone() {
            Conn::Single(mut c) => c.subscribe(channel).await.map_err(unavailable),
            Conn::Cluster(mut c) => c.ssubscribe(channel).await.map_err(unavailable),
        }
    }
}

/// Routes pushes from Redis to local subscribers, and heals the connection when it
/// drops.
async fn dispatch(mut rx: mpsc::UnboundedReceiver<PushInfo>, bus: RedisBus) {
    let subscribers = bus.subscribers.clone();
    let stats = bus.stats.clone();
    let healing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    while let Some(push) = rx.recv().await {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let mut data = push.data.into_iter();
                let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
                    continue;
                };
                let (Some(channel), Some(payload)) = (bytes_of(channel), bytes_of(payload)) else {
                    continue;
                };
                let Ok(channel) = String::from_utf8(channel) else {
                    continue;
                };
                let Some((sent, payload)) = unstamp(payload) else {
                    continue;
                };
                stats.received.fetch_add(1, Ordering::Relaxed);
                stats
                    .lag_micros_total
                    .fetch_add(now_micros().saturating_sub(sent), Ordering::Relaxed);
                stats.lag_samples.fetch_add(1, Ordering::Relaxed);
                if let Some(subs) = subscribers.get(&channel) {
                    for (_, tx) in subs.iter() {
                        if tx.try_send(payload.clone()).is_err() {
                            stats.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            PushKind::Disconnection => {
                stats.disconnects.fetch_add(1, Ordering::Relaxed);
                warn!("redis connection lost; reconnecting (messages in between are lost, the store repairs them)");
                if !healing.swap(true, Ordering::SeqCst) {
                    tokio::spawn(heal(bus.clone(), healing.clone()));
                }
            }
            other => debug!(kind = ?other, "redis push"),
        }
    }
}

/// Reconnects without waiting for the next publish (a node that only listens would
/// otherwise stay deaf), then subscribes every local channel again. SUBSCRIBE is
/// idempotent, so this is safe even when the library already resubscribed.
async fn heal(bus: RedisBus, healing: Arc<std::sync::atomic::AtomicBool>) {
    let mut delay = Duration::from_millis(50);
    loop {
        tokio::time::sleep(delay).await;
        if bus.ping().await.is_ok() {
            let channels: Vec<String> = bus.subscribers.iter().map(|e| e.key().clone()).collect();
            let mut ok = true;
            for channel in &channels {
                ok &= bus.redis_subscribe(channel).await.is_ok();
            }
            if ok {
                info!(
                    channels = channels.len(),
                    "redis connection restored; subscriptions renewed"
                );
                break;
            }
        }
        delay = (delay * 2).min(Duration::from_secs(1));
    }
    healing.store(false, Ordering::SeqCst);
}

fn bytes_of(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

struct Unsubscribe {
    bus: RedisBus,
    channel: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if let Some(mut subs) = self.bus.subscribers.get_mut(&self.channel) {
            subs.retain(|(id, _)| *id != self.id);
        }
        let removed = self
            .bus
            .subscribers
            .remove_if(&self.channel, |_, subs| subs.is_empty())
            .is_some();
        if removed {
            let bus = self.bus.clone();
            let channel = std::mem::take(&mut self.channel);
            // Drop cannot await; the unsubscribe is best effort (a stale Redis
            // subscription only costs messages that the dispatcher then discards).
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if bus.subscribers.contains_key(&channel) {
                        return; // resubscribed meanwhile
                    }
                    let result = match bus.conn.clone() {
                        Conn::Single(mut c) => c.unsubscribe(&channel).await,
                        Conn::Cluster(mut c) => c.sunsubscribe(&channel).await,
                    };
                    if let Err(e) = result {
                        debug!(channel, error = %e, "unsubscribe failed");
                    }
                });
            }
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), BusError> {
        let cmd_name = if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let mut cmd = redis::cmd(cmd_name);
        cmd.arg(channel).arg(stamp(payload));
        let result = self.query::<i64>(&cmd).await;
        match &result {
            Ok(_) => self.stats.published.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stats.publish_errors.fetch_add(1, Ordering::Relaxed),
        };
        result.map(drop)
    }

    async fn subscribe(&self, channel: &str) -> Result<BusSubscription, BusError> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut entry = self.subscribers.entry(channel.to_owned()).or_default();
            entry.push((id, tx));
            entry.len() == 1
        };
        let guard = Unsubscribe {
            bus: self.clone(),
            channel: channel.to_owned(),
            id,
        };
        if first {
            // If Redis is down right now the subscription is still registered locally;
            // the flow keeps serving local peers and catches up through the store.
            if let Err(e) = self.redis_subscribe(channel).await {
                warn!(channel, error = %e, "redis subscribe failed; retrying in the background");
                let bus = self.clone();
                let channel = channel.to_owned();
                tokio::spawn(async move {
                    for attempt in 0..60u32 {
                        tokio::time::sleep(Duration::from_millis(
                            200 * u64::from(attempt.min(5) + 1),
                        ))
                        .await;
                        if !bus.subscribers.contains_key(&channel)
                            || bus.redis_subscribe(&channel).await.is_ok()
                        {
                            return;
                        }
                    }
                });
            }
        }
        Ok(BusSubscription::new(rx, Box::new(guard)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_roundtrip() {
        let (sent, payload) = unstamp(stamp(b"abc".to_vec())).unwrap();
        assert_eq!(payload, b"abc");
        assert!(now_micros() >= sent);
        assert_eq!(unstamp(vec![1, 2, 3]), None);
    }

    #[test]
    fn urls() {
        assert_eq!(cluster_seeds("redis://a:1"), None);
        assert_eq!(
            cluster_seeds("redis://a:1,redis://b:2"),
            Some(vec!["redis://a:1".to_string(), "redis://b:2".to_string()])
        );
        assert_eq!(
            cluster_seeds("redis+cluster://a:1,b:2"),
            Some(vec!["redis://a:1".to_string(), "redis://b:2".to_string()])
        );
        assert_eq!(
            with_resp3("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379/?protocol=resp3"
        );
        assert_eq!(
            with_resp3("redis://h/0?x=1"),
            "redis://h/0?x=1&protocol=resp3"
        );
    }
}

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
//!
//! # Publishing never waits for Redis
//! [`Bus::publish`] only puts the message into a bounded per-node queue
//! ([`PUBLISH_QUEUE`] messages) and returns; one publisher task drains it, several
//! PUBLISHes per round trip. A slow, hung or dead Redis therefore never holds back the
//! edit path (flow actors publish after every acknowledged edit): edits keep being
//! stored and acknowledged, and other nodes catch up from the store through heads.
//! While Redis is unreachable the publisher pauses and probes it; what does not fit the
//! queue meanwhile is dropped and counted (`flowhub_bus_publish_dropped_total`). One
//! WARN marks the start of an outage and one INFO its end.
//!
//! Every other Redis call (ping, subscribe, membership heartbeats) is bounded by
//! [`REDIS_CALL_TIMEOUT`], so no caller hangs on a frozen Redis either.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use flowhub_actors::bus::{Bus, BusError, BusSubscription, FlowBusMessage};
use flowhub_actors::metrics::latency_histogram;
use prometheus_client::metrics::histogram::Histogram;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

/// Messages that may wait for one local subscriber before newer ones are dropped.
const SUBSCRIBER_BUFFER: usize = 1024;

/// The longest any single Redis call (a publish round trip, ping, subscribe, a
/// membership heartbeat) may take before it counts as failed. A healthy Redis answers
/// in well under a millisecond; one second separates "slow" from "not answering"
/// without letting a frozen Redis hold anyone for long.
pub const REDIS_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Messages waiting for the publisher task. At the ~60 edits/s of a busy node this is
/// minutes of traffic: enough to ride out a Redis hiccup without dropping anything,
/// bounded so an outage costs at most a few MB of memory.
pub const PUBLISH_QUEUE: usize = 10_000;

/// Most PUBLISH commands the publisher sends in one pipeline (one round trip).
pub const PUBLISH_BATCH: usize = 256;

/// Probing an unreachable Redis: first after this, doubling up to
/// [`PROBE_MAX_DELAY`].
const PROBE_MIN_DELAY: Duration = Duration::from_millis(50);
const PROBE_MAX_DELAY: Duration = Duration::from_millis(500);

type Subscribers = DashMap<String, Vec<(u64, mpsc::Sender<Vec<u8>>)>>;

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Counters and histograms for `/metrics` (`hub/src/metrics.rs` exports them).
#[derive(Debug)]
pub struct RedisBusStats {
    pub published: AtomicU64,
    /// Messages lost in a failed publish round trip (Redis unreachable or too slow).
    pub publish_errors: AtomicU64,
    /// Messages never sent because the publish queue was full.
    pub publish_dropped: AtomicU64,
    pub received: AtomicU64,
    pub dropped: AtomicU64,
    pub disconnects: AtomicU64,
    /// `Bus::publish` → Redis answered the PUBLISH, per message (seconds): the time in
    /// the node's publish queue plus the pipelined round trip.
    pub publish: Histogram,
    /// Publish → receive delay of received messages (seconds; the sender's stamp, so
    /// across machines it includes their clock offset).
    pub lag: Histogram,
}

impl Default for RedisBusStats {
    fn default() -> Self {
        RedisBusStats {
            published: AtomicU64::default(),
            publish_errors: AtomicU64::default(),
            publish_dropped: AtomicU64::default(),
            received: AtomicU64::default(),
            dropped: AtomicU64::default(),
            disconnects: AtomicU64::default(),
            publish: latency_histogram(),
            lag: latency_histogram(),
        }
    }
}

/// Seconds from a stamp (µs since the epoch, [`stamp`]) to `now` (µs).
fn since_stamp(now: u64, sent: u64) -> f64 {
    now.saturating_sub(sent) as f64 / 1e6
}

/// The send stamp of a stamped payload.
fn stamp_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
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

/// A message waiting for the publisher task.
struct Outgoing {
    channel: String,
    /// Already stamped: the bus lag then includes the time spent in the queue.
    payload: Vec<u8>,
    /// A flow's changes: after an outage other nodes read them from the store anyway
    /// (see [`publish_queued`]), so a backlog of them is not worth replaying.
    store_backed: bool,
}

#[derive(Clone)]
pub struct RedisBus {
    conn: Conn,
    subscribers: Arc<Subscribers>,
    next_id: Arc<AtomicU64>,
    stats: Arc<RedisBusStats>,
    outgoing: mpsc::Sender<Outgoing>,
    /// Set by the publisher while Redis does not answer (between its WARN and INFO).
    unreachable: Arc<AtomicBool>,
}

fn unavailable(e: redis::RedisError) -> BusError {
    BusError::Unavailable(e.to_string())
}

/// Runs one Redis call under [`REDIS_CALL_TIMEOUT`].
async fn bounded<T>(
    call: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(REDIS_CALL_TIMEOUT, call).await {
        Ok(result) => result.map_err(unavailable),
        Err(_) => Err(BusError::Unavailable(format!(
            "redis did not answer within {REDIS_CALL_TIMEOUT:?}"
        ))),
    }
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
        let stats = Arc::new(RedisBusStats::default());
        let (outgoing, outgoing_rx) = mpsc::channel(PUBLISH_QUEUE);
        // The publisher gets the connection and the stats, not a bus handle: holding no
        // sender of its own queue, it ends once the bus's handles are gone.
        let unreachable = Arc::new(AtomicBool::new(false));
        tokio::spawn(publish_queued(
            conn.clone(),
            outgoing_rx,
            stats.clone(),
            unreachable.clone(),
        ));
        let bus = RedisBus {
            conn,
            subscribers: Arc::new(DashMap::new()),
            next_id: Arc::new(AtomicU64::new(0)),
            stats,
            outgoing,
            unreachable,
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

    /// [`RedisBus::stats`], shared (for `/metrics`).
    pub fn stats_arc(&self) -> Arc<RedisBusStats> {
        self.stats.clone()
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// A cheap round trip, for `/readyz`; fails after at most [`REDIS_CALL_TIMEOUT`].
    pub async fn ping(&self) -> Result<(), BusError> {
        ping(&self.conn).await
    }

    /// Runs a command on the bus's connection (node heartbeats, counters), failing
    /// after at most [`REDIS_CALL_TIMEOUT`].
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BusError> {
        match self.conn.clone() {
            Conn::Single(mut c) => bounded(cmd.query_async(&mut c)).await,
            Conn::Cluster(mut c) => bounded(cmd.query_async(&mut c)).await,
        }
    }

    /// Runs a pipeline on the bus's connection, failing after at most
    /// [`REDIS_CALL_TIMEOUT`].
    pub async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, BusError> {
        match self.conn.clone() {
            Conn::Single(mut c) => bounded(pipe.query_async(&mut c)).await,
            Conn::Cluster(mut c) => bounded(pipe.query_async(&mut c)).await,
        }
    }

    async fn redis_subscribe(&self, channel: &str) -> Result<(), BusError> {
        match self.conn.clone() {
            Conn::Single(mut c) => bounded(c.subscribe(channel)).await,
            Conn::Cluster(mut c) => bounded(c.ssubscribe(channel)).await,
        }
    }
}

async fn ping(conn: &Conn) -> Result<(), BusError> {
    let cmd = redis::cmd("PING");
    match conn.clone() {
        Conn::Single(mut c) => bounded(cmd.query_async::<String>(&mut c)).await.map(drop),
        Conn::Cluster(mut c) => bounded(cmd.query_async::<String>(&mut c)).await.map(drop),
    }
}

/// Sends one batch of queued messages: a single pipelined round trip on one Redis. On
/// a cluster the messages go to different shards, which one pipeline cannot do, so they
/// are sent concurrently instead. Either way the whole batch is bounded by
/// [`REDIS_CALL_TIMEOUT`]. Returns how many were lost and the first error.
async fn publish_batch(conn: &Conn, batch: &[Outgoing]) -> Result<(), (u64, BusError)> {
    match conn.clone() {
        Conn::Single(mut c) => {
            let mut pipe = redis::pipe();
            for m in batch {
                pipe.cmd("PUBLISH").arg(&m.channel).arg(&m.payload).ignore();
            }
            bounded(pipe.query_async::<()>(&mut c))
                .await
                .map_err(|e| (batch.len() as u64, e))
        }
        Conn::Cluster(c) => {
            let sends = batch.iter().map(|m| {
                let mut c = c.clone();
                let mut cmd = redis::cmd("SPUBLISH");
                cmd.arg(&m.channel).arg(&m.payload);
                async move { cmd.query_async::<i64>(&mut c).await }
            });
            let results = bounded(async {
                Ok::<_, redis::RedisError>(futures_util::future::join_all(sends).await)
            })
            .await
            .map_err(|e| (batch.len() as u64, e))?;
            let mut lost = 0;
            let mut first_error = None;
            for r in results {
                if let Err(e) = r {
                    lost += 1;
                    first_error.get_or_insert(unavailable(e));
                }
            }
            match first_error {
                None => Ok(()),
                Some(e) => Err((lost, e)),
            }
        }
    }
}

/// The publisher task: drains the queue in batches. When a batch fails (Redis down or
/// not answering within [`REDIS_CALL_TIMEOUT`]) its messages are lost (at most once)
/// and publishing pauses: the task probes Redis with PING until it answers, while new
/// messages wait in the queue (or are dropped once it is full), then resumes with what
/// is queued, except the flows' changes queued during the outage: other nodes do not
/// depend on them (every change is in the store, and the heads that follow make them
/// read what they miss in one go), and replaying minutes of edits one message at a time
/// would keep their flow actors busy long after Redis is back.
async fn publish_queued(
    conn: Conn,
    mut rx: mpsc::Receiver<Outgoing>,
    stats: Arc<RedisBusStats>,
    unreachable: Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while rx.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let span = tracing::trace_span!(
            target: flowhub_actors::EDIT_PATH_TARGET,
            "bus.publish",
            messages = batch.len(),
        );
        match publish_batch(&conn, &batch).instrument(span).await {
            Ok(()) => {
                stats
                    .published
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                let now = now_micros();
                for m in &batch {
                    if let Some(sent) = stamp_of(&m.payload) {
                        stats.publish.observe(since_stamp(now, sent));
                    }
                }
            }
            Err((lost, error)) => {
                stats
                    .published
                    .fetch_add(batch.len() as u64 - lost, Ordering::Relaxed);
                stats.publish_errors.fetch_add(lost, Ordering::Relaxed);
                let since = Instant::now();
                let dropped_before = stats.publish_dropped.load(Ordering::Relaxed);
                warn!(
                    %error,
                    lost,
                    "bus unreachable; publishing paused, other nodes catch up from the store"
                );
                unreachable.store(true, Ordering::Relaxed);
                let mut delay = PROBE_MIN_DELAY;
                loop {
                    tokio::time::sleep(delay).await;
                    if ping(&conn).await.is_ok() {
                        break;
                    }
                    delay = (delay * 2).min(PROBE_MAX_DELAY);
                }
                unreachable.store(false, Ordering::Relaxed);
                // Only what was queued during the outage is filtered; newer messages
                // are published as usual.
                let backlog = rx.len();
                let mut kept = Vec::with_capacity(backlog);
                while kept.len() < backlog {
                    let want = backlog - kept.len();
                    if rx.recv_many(&mut kept, want).await == 0 {
                        break;
                    }
                }
                let stale_changes = kept.iter().filter(|m| m.store_backed).count();
                kept.retain(|m| !m.store_backed);
                stats
                    .publish_errors
                    .fetch_add(stale_changes as u64, Ordering::Relaxed);
                info!(
                    outage_ms = since.elapsed().as_millis() as u64,
                    stale_changes,
                    queued = kept.len(),
                    dropped = stats.publish_dropped.load(Ordering::Relaxed) - dropped_before,
                    "bus reachable again; publishing resumed (changes made meanwhile reach other nodes through the store)"
                );
                for chunk in kept.chunks(PUBLISH_BATCH) {
                    match publish_batch(&conn, chunk).await {
                        Ok(()) => stats
                            .published
                            .fetch_add(chunk.len() as u64, Ordering::Relaxed),
                        Err((lost, _)) => stats.publish_errors.fetch_add(lost, Ordering::Relaxed),
                    };
                }
            }
        }
        batch.clear();
    }
    debug!("bus publisher stopped");
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
                stats.lag.observe(since_stamp(now_micros(), sent));
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
                        Conn::Single(mut c) => bounded(c.unsubscribe(&channel)).await,
                        Conn::Cluster(mut c) => bounded(c.sunsubscribe(&channel)).await,
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
    /// Queues the message for the publisher task and returns at once (see the module
    /// doc); an error means it was dropped because the queue is full.
    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), BusError> {
        let message = Outgoing {
            // `flow:` channels carry `FlowBusMessage`s (see `channel::flow`).
            store_backed: channel.starts_with("flow:") && FlowBusMessage::is_changes(&payload),
            channel: channel.to_owned(),
            payload: stamp(payload),
        };
        self.outgoing.try_send(message).map_err(|_| {
            self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
            BusError::Unavailable(format!(
                "bus publish queue full ({PUBLISH_QUEUE} messages); message dropped"
            ))
        })
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
            // When the publisher already knows Redis is unreachable, opening the flow
            // does not wait for a subscribe to time out.
            let result = if self.unreachable.load(Ordering::Relaxed) {
                Err(BusError::Unavailable(
                    "publisher found redis unreachable".into(),
                ))
            } else {
                self.redis_subscribe(channel).await
            };
            if let Err(e) = result {
                warn!(channel, error = %e, "redis subscribe failed; retrying in the background");
                let bus = self.clone();
                let channel = channel.to_owned();
                // Until it works or nobody here listens any more, however long Redis is
                // gone: a flow opened during an outage must hear other nodes after it.
                tokio::spawn(async move {
                    let mut attempt = 0u64;
                    loop {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(200 * attempt.min(5))).await;
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

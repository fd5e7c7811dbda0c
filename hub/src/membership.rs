//! Node membership on Redis: who is alive, and with what load.
//!
//! Every node refreshes a heartbeat each `interval`: its score in the sorted set
//! `{flowhub}:nodes` (the time of the beat) and a key `{flowhub}:node:<id>` holding its
//! load, which expires after `ttl`. A node is alive while its last beat is younger
//! than `ttl`. (The `{flowhub}` hash tag keeps every key in one cluster slot, so the
//! same commands work on a Redis Cluster.) After each beat the node tells its flow
//! actors which nodes are alive; presence of sessions on any other node is dropped,
//! so a node that died disappears from everyone's presence within `ttl` + `interval`.

use std::collections::HashSet;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flowhub_actors::flow::{FlowMsg, FlowRegistry};
use flowhub_actors::metrics::Metrics;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::redis_bus::RedisBus;

const NODES_KEY: &str = "{flowhub}:nodes";

fn node_key(node_id: &str) -> String {
    format!("{{flowhub}}:node:{node_id}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One live node, as `GET /v1/nodes` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    /// The address clients connect to.
    pub addr: String,
    pub connections: i64,
    pub open_flows: i64,
    /// Milliseconds since the Unix epoch of the last heartbeat.
    pub heartbeat_at: u64,
}

#[derive(Clone)]
pub struct Membership {
    pub bus: RedisBus,
    pub node_id: String,
    pub addr: String,
    pub interval: Duration,
    pub ttl: Duration,
}

impl Membership {
    async fn beat(&self, metrics: &Metrics) -> Result<(), flowhub_actors::bus::BusError> {
        let info = NodeInfo {
            node_id: self.node_id.clone(),
            addr: self.addr.clone(),
            connections: metrics.sessions_open.get(),
            open_flows: metrics.flows_open.get(),
            heartbeat_at: now_ms(),
        };
        let json = serde_json::to_string(&info).unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(NODES_KEY)
            .arg(info.heartbeat_at)
            .arg(&self.node_id)
            .ignore();
        pipe.cmd("SET")
            .arg(node_key(&self.node_id))
            .arg(json)
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .ignore();
        let stale_before = info
            .heartbeat_at
            .saturating_sub(self.ttl.as_millis() as u64);
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(NODES_KEY)
            .arg("-inf")
            .arg(format!("({stale_before}"))
            .ignore();
        self.bus.query_pipe::<()>(&pipe).await
    }

    /// Live nodes, this one included.
    pub async fn live_nodes(&self) -> Result<Vec<NodeInfo>, flowhub_actors::bus::BusError> {
        let since = now_ms().saturating_sub(self.ttl.as_millis() as u64);
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(NODES_KEY).arg(since).arg("+inf");
        let ids: Vec<String> = self.bus.query(&cmd).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut mget = redis::cmd("MGET");
        for id in &ids {
            mget.arg(node_key(id));
        }
        let infos: Vec<Option<String>> = self.bus.query(&mget).await?;
        Ok(infos
            .into_iter()
            .flatten()
            .filter_map(|s| serde_json::from_str(&s).ok())
            .collect())
    }

    /// Leaves the membership at once (graceful drain) instead of waiting for the TTL.
    pub async fn leave(&self) {
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM").arg(NODES_KEY).arg(&self.node_id).ignore();
        pipe.cmd("DEL").arg(node_key(&self.node_id)).ignore();
        if let Err(e) = self.bus.query_pipe::<()>(&pipe).await {
            warn!(error = %e, "could not leave the membership");
        }
    }

    /// Beats until `stop` is cancelled; after each beat tells flow actors who is alive.
    pub async fn run(self, registry: FlowRegistry, metrics: Arc<Metrics>, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut known: HashSet<String> = HashSet::new();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.cancelled() => break,
            }
            if let Err(e) = self.beat(&metrics).await {
                // Without Redis we cannot tell who is alive; keep presence as it is
                // rather than dropping everybody.
                debug!(error = %e, "heartbeat failed");
                continue;
            }
            let live: HashSet<String> = match self.live_nodes().await {
                Ok(nodes) => nodes.into_iter().map(|n| n.node_id).collect(),
                Err(_) => continue,
            };
            for gone in known.difference(&live) {
                info!(node_id = %gone, "node left the cluster");
            }
            for joined in live.difference(&known) {
                if joined != &self.node_id {
                    info!(node_id = %joined, "node joined the cluster");
                }
            }
            let live = Arc::new(live);
            for flow_id in registry.open_flows() {
                if let Some(actor) = registry.get(&flow_id) {
                    let _ = actor.cast(FlowMsg::LiveNodes(live.clone()));
                }
            }
            known = (*live).clone();
        }
    }
}

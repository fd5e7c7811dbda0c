//! `GET /metrics`: the actors' metrics ([`flowhub_actors::metrics::Metrics`]) plus
//! what only the hub knows: the Redis bus, the SQL store's group commit, run actors
//! and the process's memory, all through `prometheus-client` in the Prometheus text
//! format (0.0.4).
//!
//! Those counters live in their own structs as plain atomics (the Redis bus and the
//! store exist before the node's `Metrics`, and tests read them directly), so they are
//! read at scrape time by a [`Collector`]; the bus histograms are registered as they
//! are.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flowhub_actors::metrics::Metrics;
use flowhub_actors::run::RunRegistry;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::redis_bus::{RedisBus, RedisBusStats};
use crate::sql_store::SqlStore;

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The hub's registry (see the module doc).
#[derive(Debug)]
pub struct HubMetrics {
    registry: Registry,
}

impl HubMetrics {
    pub fn new(runs: RunRegistry, redis: Option<&RedisBus>, sql: Option<Arc<SqlStore>>) -> Self {
        let mut registry = Registry::with_prefix("flowhub");
        let redis = redis.map(RedisBus::stats_arc);
        if let Some(stats) = &redis {
            registry.register(
                "bus_publish_seconds",
                "Bus publish to Redis acknowledging it, per message: time in the node's publish queue plus the pipelined round trip",
                stats.publish.clone(),
            );
            registry.register(
                "bus_lag_seconds",
                "Publish to receive delay of bus messages (the sender's clock against the receiver's)",
                stats.lag.clone(),
            );
        }
        registry.register_collector(Box::new(NodeCollector { runs, redis, sql }));
        HubMetrics { registry }
    }

    /// The whole `/metrics` body: `metrics` (the actors') then the hub's own.
    pub fn render(&self, metrics: &Metrics) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = metrics.encode(&mut out);
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// Reads the hub's counters at scrape time.
struct NodeCollector {
    runs: RunRegistry,
    redis: Option<Arc<RedisBusStats>>,
    sql: Option<Arc<SqlStore>>,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCollector").finish_non_exhaustive()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut e;
        gauge(
            e,
            "process_resident_bytes",
            "Resident set size of the hub process.",
            resident_bytes() as i64,
        )?;
        let cpu = ConstCounter::new(cpu_seconds());
        cpu.encode(e.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time of the hub process, in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let r = self.runs.stats();
        gauge(
            e,
            "runs_open",
            "Run actors alive on this node.",
            r.runs_open as i64,
        )?;
        counter(
            e,
            "run_events_accepted",
            "Run events stored and broadcast.",
            r.events_accepted,
        )?;
        counter(
            e,
            "run_events_duplicate",
            "Re-posted run events ignored.",
            r.events_duplicate,
        )?;
        counter(
            e,
            "run_resumes",
            "resume_from sent to run watchers that fell behind.",
            r.resumes,
        )?;
        if let Some(s) = &self.redis {
            let c = |v: &AtomicU64| v.load(Ordering::Relaxed);
            counter(
                e,
                "bus_publish_dropped",
                "Bus messages dropped unsent: the publish queue was full (bus unreachable).",
                c(&s.publish_dropped),
            )?;
            counter(
                e,
                "redis_published",
                "Messages published to Redis.",
                c(&s.published),
            )?;
            counter(
                e,
                "redis_publish_errors",
                "Failed publishes (Redis unreachable).",
                c(&s.publish_errors),
            )?;
            counter(
                e,
                "redis_received",
                "Messages received from Redis.",
                c(&s.received),
            )?;
            counter(
                e,
                "redis_dropped",
                "Received messages dropped: a local subscriber lagged.",
                c(&s.dropped),
            )?;
            counter(
                e,
                "redis_disconnects",
                "Redis connection losses.",
                c(&s.disconnects),
            )?;
        }
        if let Some(sql) = &self.sql {
            let s = sql.stats();
            counter(e, "store_batches", "Group-commit transactions.", s.batches)?;
            counter(
                e,
                "store_wal_checkpoints",
                "Background SQLite WAL checkpoints run (0 on PostgreSQL).",
                s.wal_checkpoints,
            )?;
            counter(
                e,
                "store_changes_committed",
                "Change records committed by the group-commit writer (rows inserted into the change log, re-appended duplicates included).",
                s.changes,
            )?;
        }
        Ok(())
    }
}

/// User + system CPU seconds from /proc/self/stat (Linux; 0 elsewhere). Ticks are
/// USER_HZ, 100 on every Linux ABI flowhub runs on.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // After the parenthesised command name the fields start at 3 (state); utime and
    // stime are fields 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// RSS from /proc (Linux); 0 elsewhere.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

//! Counters the hub exposes on `/metrics`. Plain atomics: they are bumped on hot paths
//! (every frame), where a lock or a registry lookup would cost more than the work.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Metrics {
    pub sessions_open: AtomicI64,
    pub flows_open: AtomicI64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    /// Outbound frames that did not fit a session's queue.
    pub queue_drops: AtomicU64,
    /// Peers synced again once their overflowed queue drained.
    pub resyncs: AtomicU64,
    /// Change frames queued to streaming peers (one per peer and batch of changes).
    pub frames_streamed: AtomicU64,
    /// Change frames from peers that depended on changes the hub lacked: the peer was
    /// put back on the sync protocol.
    pub stream_fallbacks: AtomicU64,
    pub sessions_closed_slow: AtomicU64,
    pub edits_applied: AtomicU64,
    pub edits_refused: AtomicU64,
    /// Schema-breaking changes accepted together with a hub-authored repair (peers
    /// that cannot roll back: stock automerge-repo).
    pub edits_repaired: AtomicU64,
    pub store_appends: AtomicU64,
    pub store_append_micros: AtomicU64,
    pub store_errors: AtomicU64,
    pub bus_published: AtomicU64,
    pub bus_received: AtomicU64,
    /// Bus messages dropped before sending because the node's publish queue was full
    /// (the bus was unreachable for long). Shared with the bus, which counts them.
    pub bus_publish_dropped: Arc<AtomicU64>,
    pub compactions: AtomicU64,
    /// Changes a flow actor had to read from the store because the bus lost them.
    pub antientropy_repairs: AtomicU64,
    /// Flow actors closed by a failure (store down while rolling back, …); their
    /// subscribers were told to subscribe again.
    pub flow_failures: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text exposition of every counter, names prefixed `flowhub_`.
    pub fn render(&self) -> String {
        let g = |v: &AtomicI64| v.load(Ordering::Relaxed);
        let c = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!("# HELP flowhub_{name} {help}\n# TYPE flowhub_{name} {kind}\nflowhub_{name} {value}\n"));
        };
        line(
            "sessions_open",
            "gauge",
            "Open WebSocket sessions.",
            g(&self.sessions_open).to_string(),
        );
        line(
            "flows_open",
            "gauge",
            "Flow actors alive on this node.",
            g(&self.flows_open).to_string(),
        );
        line(
            "frames_in_total",
            "counter",
            "Frames received from clients.",
            c(&self.frames_in).to_string(),
        );
        line(
            "frames_out_total",
            "counter",
            "Frames queued to clients.",
            c(&self.frames_out).to_string(),
        );
        line(
            "queue_drops_total",
            "counter",
            "Outbound frames dropped because a session queue was full.",
            c(&self.queue_drops).to_string(),
        );
        line(
            "resyncs_total",
            "counter",
            "Peers resynced from the flow actor's state.",
            c(&self.resyncs).to_string(),
        );
        line(
            "frames_streamed_total",
            "counter",
            "Change frames queued to streaming peers instead of a per-peer sync round.",
            c(&self.frames_streamed).to_string(),
        );
        line(
            "stream_fallbacks_total",
            "counter",
            "Change frames that lacked dependencies; the peer was synced instead.",
            c(&self.stream_fallbacks).to_string(),
        );
        line(
            "sessions_closed_slow_total",
            "counter",
            "Sessions closed because they stopped reading.",
            c(&self.sessions_closed_slow).to_string(),
        );
        line(
            "edits_applied_total",
            "counter",
            "Changes applied and persisted.",
            c(&self.edits_applied).to_string(),
        );
        line(
            "edits_refused_total",
            "counter",
            "Sync messages refused (forbidden, schema, malformed).",
            c(&self.edits_refused).to_string(),
        );
        line(
            "edits_repaired_total",
            "counter",
            "Schema-breaking changes accepted with a repair change (automerge-repo peers).",
            c(&self.edits_repaired).to_string(),
        );
        line(
            "store_appends_total",
            "counter",
            "Store append calls.",
            c(&self.store_appends).to_string(),
        );
        line(
            "store_append_seconds_total",
            "counter",
            "Time spent in store appends.",
            format!("{:.6}", c(&self.store_append_micros) as f64 / 1e6),
        );
        line(
            "store_errors_total",
            "counter",
            "Failed store operations.",
            c(&self.store_errors).to_string(),
        );
        line(
            "bus_published_total",
            "counter",
            "Messages published on the bus.",
            c(&self.bus_published).to_string(),
        );
        line(
            "bus_received_total",
            "counter",
            "Messages received from the bus.",
            c(&self.bus_received).to_string(),
        );
        line(
            "bus_publish_dropped_total",
            "counter",
            "Bus messages dropped unsent: the publish queue was full (bus unreachable).",
            c(&self.bus_publish_dropped).to_string(),
        );
        line(
            "compactions_total",
            "counter",
            "Flow change logs compacted into snapshots.",
            c(&self.compactions).to_string(),
        );
        line(
            "antientropy_repairs_total",
            "counter",
            "Changes read from the store because the bus lost them.",
            c(&self.antientropy_repairs).to_string(),
        );
        line(
            "flow_failures_total",
            "counter",
            "Flow actors closed by a failure; their subscribers were told to subscribe again.",
            c(&self.flow_failures).to_string(),
        );
        out
    }
}

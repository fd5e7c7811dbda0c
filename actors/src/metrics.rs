//! The node's metrics on `/metrics`, through `prometheus-client` (Prometheus text
//! format 0.0.4, names prefixed `flowhub_`).
//!
//! Counters and gauges are `prometheus-client`'s, which are one atomic each: they are
//! bumped on hot paths (every frame), where a lock or a registry lookup would cost
//! more than the work. Histograms take an uncontended mutex per observation (the
//! library's implementation); they are observed once per edit, append or bus message,
//! next to work that costs microseconds to milliseconds.
//!
//! The hub adds what lives outside the actors (Redis bus, SQL store, run actors,
//! process memory) from its own registry (`hub/src/metrics.rs`).

use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Bucket bounds (seconds) of every latency histogram: from a quarter millisecond (an
/// in-memory append, a local bus) to 10 s (beyond the store's 5 s timeout), so one
/// dashboard query shape fits all of them.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds of the fan-out histogram (peers per event): 0 (nobody else here) and
/// powers of two up to 1,024.
pub const FAN_OUT_BUCKETS: [f64; 12] = [
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// A latency histogram with [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// How a client is connected: the `transport` label of `flowhub_sessions_by_transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// flowhub's own WebSocket protocol (`/v1/ws`).
    Ws,
    /// The automerge-repo WebSocket bridge (`/v1/automerge-repo`).
    AutomergeRepo,
    /// Server-Sent Events streams (a flow's JSON stream, a run's stream).
    Sse,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Ws, Transport::AutomergeRepo, Transport::Sse];

    pub fn label(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::AutomergeRepo => "automerge-repo",
            Transport::Sse => "sse",
        }
    }
}

type TransportLabel = [(&'static str, &'static str); 1];

#[derive(Debug)]
pub struct Metrics {
    /// Open WebSocket sessions (flowhub's protocol and automerge-repo; the load-test
    /// harness and `GET /v1/nodes` read it). By transport, SSE included:
    /// [`Metrics::session_opened`].
    pub sessions_open: Gauge,
    pub flows_open: Gauge,
    pub frames_in: Counter,
    pub frames_out: Counter,
    /// Outbound frames that did not fit a session's queue.
    pub queue_drops: Counter,
    /// Peers synced again once their overflowed queue drained.
    pub resyncs: Counter,
    /// Change frames queued to streaming peers (one per peer and batch of changes).
    pub frames_streamed: Counter,
    /// Change frames from peers that depended on changes the hub lacked: the peer was
    /// put back on the sync protocol.
    pub stream_fallbacks: Counter,
    pub sessions_closed_slow: Counter,
    pub edits_applied: Counter,
    pub edits_refused: Counter,
    /// Schema-breaking changes accepted together with a hub-authored repair (peers
    /// that cannot roll back: stock automerge-repo).
    pub edits_repaired: Counter,
    pub store_appends: Counter,
    pub store_errors: Counter,
    pub bus_published: Counter,
    pub bus_received: Counter,
    pub compactions: Counter,
    /// Changes a flow actor had to read from the store because the bus lost them.
    pub antientropy_repairs: Counter,
    /// Flow actors closed by a failure (store down while rolling back, …); their
    /// subscribers were told to subscribe again.
    pub flow_failures: Counter,
    /// A peer's message taken by the flow actor → its ack queued to the peer.
    pub edit_ack: Histogram,
    /// One `Store::append_changes` call, failed ones included.
    pub store_append: Histogram,
    /// Local peers a change (or batch of changes) was queued to.
    pub fan_out: Histogram,
    /// Indexed by `Transport as usize`.
    sessions_by_transport: [Gauge; 3],
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flowhub");
        // The registry ends every help text with a period itself.
        let mut gauge = |name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help.trim_end_matches('.'), g.clone());
            g
        };
        let sessions_open = gauge(
            "sessions_open",
            "Open WebSocket sessions (flowhub protocol and automerge-repo).",
        );
        let flows_open = gauge("flows_open", "Flow actors alive on this node.");
        // Counters: the encoder appends `_total` to each name.
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help.trim_end_matches('.'), c.clone());
            c
        };
        let frames_in = counter("frames_in", "Frames received from clients.");
        let frames_out = counter("frames_out", "Frames queued to clients.");
        let queue_drops = counter(
            "queue_drops",
            "Outbound frames dropped because a session queue was full.",
        );
        let resyncs = counter("resyncs", "Peers resynced from the flow actor's state.");
        let frames_streamed = counter(
            "frames_streamed",
            "Change frames queued to streaming peers instead of a per-peer sync round.",
        );
        let stream_fallbacks = counter(
            "stream_fallbacks",
            "Change frames that lacked dependencies; the peer was synced instead.",
        );
        let sessions_closed_slow = counter(
            "sessions_closed_slow",
            "Sessions closed because they stopped reading.",
        );
        let edits_applied = counter("edits_applied", "Changes applied and persisted.");
        let edits_refused = counter(
            "edits_refused",
            "Sync messages refused (forbidden, schema, malformed).",
        );
        let edits_repaired = counter(
            "edits_repaired",
            "Schema-breaking changes accepted with a repair change (automerge-repo peers).",
        );
        let store_appends = counter("store_appends", "Store append calls.");
        let store_errors = counter("store_errors", "Failed store operations.");
        let bus_published = counter("bus_published", "Messages published on the bus.");
        let bus_received = counter("bus_received", "Messages received from the bus.");
        let compactions = counter("compactions", "Flow change logs compacted into snapshots.");
        let antientropy_repairs = counter(
            "antientropy_repairs",
            "Changes read from the store because the bus lost them.",
        );
        let flow_failures = counter(
            "flow_failures",
            "Flow actors closed by a failure; their subscribers were told to subscribe again.",
        );
        let edit_ack = latency_histogram();
        registry.register(
            "edit_ack_seconds",
            "From the flow actor taking a peer's message with new changes to its ack being queued (apply, attribution, store append)",
            edit_ack.clone(),
        );
        let store_append = latency_histogram();
        registry.register(
            "store_append_seconds",
            "Duration of one store append (a flow's changes, group-committed), failed ones included",
            store_append.clone(),
        );
        let fan_out = Histogram::new(FAN_OUT_BUCKETS);
        registry.register(
            "fan_out_peers",
            "Local peers a stored change (or batch of changes) was queued to, as a change frame or a sync round",
            fan_out.clone(),
        );
        let family = Family::<TransportLabel, Gauge>::default();
        registry.register(
            "sessions_by_transport",
            "Open client connections by transport: ws (flowhub protocol), automerge-repo, sse (flow and run streams)",
            family.clone(),
        );
        // Created up front: every transport is exported (as 0) from the first scrape,
        // and opening a session touches an atomic, not the family's lock.
        let sessions_by_transport =
            Transport::ALL.map(|t| family.get_or_create_owned(&[("transport", t.label())]));
        Metrics {
            sessions_open,
            flows_open,
            frames_in,
            frames_out,
            queue_drops,
            resyncs,
            frames_streamed,
            stream_fallbacks,
            sessions_closed_slow,
            edits_applied,
            edits_refused,
            edits_repaired,
            store_appends,
            store_errors,
            bus_published,
            bus_received,
            compactions,
            antientropy_repairs,
            flow_failures,
            edit_ack,
            store_append,
            fan_out,
            sessions_by_transport,
            registry,
        }
    }

    pub fn inc(counter: &Counter) {
        counter.inc();
    }

    pub fn add(counter: &Counter, n: u64) {
        counter.inc_by(n);
    }

    /// A peer's edit was acknowledged, `taken` after the flow actor took its message
    /// (`None`: the changes were not a peer's message, e.g. a JSON edit; not observed).
    pub fn observe_edit_ack(&self, taken: Option<std::time::Instant>) {
        if let Some(taken) = taken {
            self.edit_ack.observe(taken.elapsed().as_secs_f64());
        }
    }

    /// One store append took `took` (`failed`: it returned an error).
    pub fn observe_store_append(&self, took: Duration, failed: bool) {
        self.store_appends.inc();
        self.store_append.observe(took.as_secs_f64());
        if failed {
            self.store_errors.inc();
        }
    }

    /// A stored change was queued to `peers` local peers.
    pub fn observe_fan_out(&self, peers: usize) {
        self.fan_out.observe(peers as f64);
    }

    /// A client connected over `transport`; pair with [`Metrics::session_closed`].
    pub fn session_opened(&self, transport: Transport) {
        self.sessions_by_transport[transport as usize].inc();
        if transport != Transport::Sse {
            self.sessions_open.inc();
        }
    }

    pub fn session_closed(&self, transport: Transport) {
        self.sessions_by_transport[transport as usize].dec();
        if transport != Transport::Sse {
            self.sessions_open.dec();
        }
    }

    /// Open connections over `transport`.
    pub fn sessions(&self, transport: Transport) -> i64 {
        self.sessions_by_transport[transport as usize].get()
    }

    /// Appends every metric in the Prometheus text format (0.0.4).
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        prometheus_text::encode(out, &self.registry)
    }

    /// Every metric in the Prometheus text format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = self.encode(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_histograms_and_transports() {
        let m = Metrics::new();
        Metrics::inc(&m.frames_in);
        m.observe_store_append(Duration::from_millis(3), true);
        m.observe_fan_out(5);
        m.session_opened(Transport::Ws);
        m.session_opened(Transport::Sse);
        let text = m.render();
        for line in [
            "flowhub_frames_in_total 1",
            "flowhub_sessions_open 1",
            "flowhub_store_appends_total 1",
            "flowhub_store_errors_total 1",
            "flowhub_store_append_seconds_count 1",
            "flowhub_store_append_seconds_bucket{le=\"0.005\"} 1",
            "flowhub_fan_out_peers_bucket{le=\"4\"} 0",
            "flowhub_fan_out_peers_bucket{le=\"8\"} 1",
            "flowhub_sessions_by_transport{transport=\"ws\"} 1",
            "flowhub_sessions_by_transport{transport=\"sse\"} 1",
            "flowhub_sessions_by_transport{transport=\"automerge-repo\"} 0",
            "flowhub_edit_ack_seconds_count 0",
            "# TYPE flowhub_edit_ack_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        m.session_closed(Transport::Sse);
        assert_eq!(m.sessions(Transport::Sse), 0);
        assert_eq!(m.sessions_open.get(), 1);
    }
}

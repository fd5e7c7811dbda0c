//! Idle flows cost no bus traffic, and a lost bus message is still repaired.
//!
//! Two nodes (two registries sharing one in-memory bus and store) hold the same open
//! flows. A flow actor announces its heads only after they change (then a bounded
//! number of repeats), so the bus traffic of idle flows does not grow with their
//! number: 200 and 2,000 idle flows publish the same (nothing). When node a's changes
//! message is dropped, node b still converges, through the heads announcements or
//! the store watch, within the bound `docs/ARCHITECTURE.md` states.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowhub_actors::bus::{Bus, BusError, BusSubscription, FlowBusMessage, MemoryBus};
use flowhub_actors::flow::{FlowConfig, FlowDeps, FlowMsg, FlowRegistry, OnInvalid};
use flowhub_actors::metrics::Metrics;
use flowhub_actors::store::{MemoryStore, Store};
use flowhub_crdt::{NewNode, Position};
use flowhub_protocol::Role;
use support::SyncPeer;

/// The shared bus, counting publishes and able to drop the next changes message.
#[derive(Clone, Default)]
struct CountingBus {
    inner: MemoryBus,
    published: Arc<AtomicU64>,
    drop_next_changes: Arc<AtomicBool>,
}

#[async_trait]
impl Bus for CountingBus {
    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), BusError> {
        self.published.fetch_add(1, Ordering::Relaxed);
        if FlowBusMessage::is_changes(&payload)
            && self.drop_next_changes.swap(false, Ordering::SeqCst)
        {
            return Ok(()); // lost on the way, as Redis pub/sub may
        }
        self.inner.publish(channel, payload).await
    }

    async fn subscribe(&self, channel: &str) -> Result<BusSubscription, BusError> {
        self.inner.subscribe(channel).await
    }
}

const HEADS_INTERVAL: Duration = Duration::from_millis(200);
const STORE_WATCH: Duration = Duration::from_millis(500);

fn node(name: &str, bus: &CountingBus, store: &Arc<MemoryStore>) -> FlowRegistry {
    let registry = FlowRegistry::new(Arc::new(FlowDeps {
        store: store.clone(),
        bus: Arc::new(bus.clone()),
        node_id: name.into(),
        metrics: Arc::new(Metrics::default()),
        config: FlowConfig {
            // Idle flows stay open for the whole test.
            idle_eviction: Duration::from_secs(600),
            heads_interval: HEADS_INTERVAL,
            store_watch_interval: STORE_WATCH,
            ..FlowConfig::default()
        },
    }));
    // The test ends with the runtime, which ends the watch.
    drop(registry.spawn_store_watch(STORE_WATCH));
    registry
}

/// Bus publishes per second of `flows` open, idle flows on two nodes, measured after
/// they settled.
async fn idle_publishes_per_second(flows: usize) -> f64 {
    let bus = CountingBus::default();
    let store = Arc::new(MemoryStore::default());
    let (a, b) = (node("a", &bus, &store), node("b", &bus, &store));
    for i in 0..flows {
        let id = format!("idle-{i}");
        a.get_or_spawn(&id).await.unwrap();
        b.get_or_spawn(&id).await.unwrap();
    }
    // Past the announcement window of anything that happened while opening.
    tokio::time::sleep(HEADS_INTERVAL * 4).await;
    let before = bus.published.load(Ordering::Relaxed);
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let published = bus.published.load(Ordering::Relaxed) - before;
    a.stop_all().await;
    b.stop_all().await;
    published as f64 / window.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_bus_traffic_does_not_grow_with_the_number_of_open_flows() {
    let small = idle_publishes_per_second(200).await;
    let large = idle_publishes_per_second(2_000).await;
    eprintln!("idle bus publishes/s on 2 nodes: 200 flows {small:.1}, 2,000 flows {large:.1}");
    // Before, every open flow announced its heads each second: 400 and 4,000/s.
    assert!(small <= 2.0, "200 idle flows: {small} publishes/s");
    assert!(large <= 2.0, "2,000 idle flows: {large} publishes/s");
    assert!(
        (large + 1.0) / (small + 1.0) < 2.0,
        "ratio {small} -> {large}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_changes_message_is_repaired_within_the_bound() {
    let bus = CountingBus::default();
    let store = Arc::new(MemoryStore::default());
    let (a, b) = (node("a", &bus, &store), node("b", &bus, &store));
    let flow_a = a.get_or_spawn("lossy").await.unwrap();
    let flow_b = b.get_or_spawn("lossy").await.unwrap();

    // An editor on node a; its first edit's changes message is lost on the bus.
    let mut editor = SyncPeer::join(&flow_a, "ed", Role::Editor, OnInvalid::Refuse).await;
    editor
        .doc
        .add_node(NewNode::new("http", "Fetch", Position::new(1.0, 2.0)))
        .unwrap();
    bus.drop_next_changes.store(true, Ordering::SeqCst);
    editor.exchange().await;
    assert!(
        !bus.drop_next_changes.load(Ordering::SeqCst),
        "the changes message was dropped"
    );
    let stored = store.load_flow("lossy").await.unwrap();
    assert!(!stored.changes.is_empty(), "node a stored the edit");

    // Node b never got the changes message; it must still converge, within the
    // stated bound (the heads announcements, or at worst the store watch).
    let heads_a = ractor::call!(flow_a, FlowMsg::Heads).unwrap();
    let bound = STORE_WATCH * 2 + HEADS_INTERVAL * 3;
    let deadline = tokio::time::Instant::now() + bound + Duration::from_secs(5);
    loop {
        let heads_b = ractor::call!(flow_b, FlowMsg::Heads).unwrap();
        if heads_b == heads_a {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node b never caught up: {heads_b:?} vs {heads_a:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let json_a = ractor::call!(flow_a, FlowMsg::ToJson).unwrap();
    let json_b = ractor::call!(flow_b, FlowMsg::ToJson).unwrap();
    assert_eq!(json_a, json_b);
}

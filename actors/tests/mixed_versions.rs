//! A rolling upgrade: a node writing the previous bus format (version 1) beside one
//! writing the current one (version 2), on one bus and one store. Editors on both
//! co-edit and converge through bus messages alone (no store watch runs here, so a
//! message one node could not read would leave the replicas apart).

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flowhub_actors::bus::{Bus, BusError, BusFormat, BusSubscription, FlowBusMessage, MemoryBus};
use flowhub_actors::flow::{FlowConfig, FlowDeps, FlowMsg, FlowRegistry, OnInvalid};
use flowhub_actors::metrics::Metrics;
use flowhub_actors::store::MemoryStore;
use flowhub_crdt::{NewNode, Position};
use flowhub_protocol::Role;
use support::SyncPeer;

/// The shared bus, recording the format version of every message published.
#[derive(Clone, Default)]
struct RecordingBus {
    inner: MemoryBus,
    versions: Arc<Mutex<BTreeSet<u8>>>,
}

#[async_trait]
impl Bus for RecordingBus {
    async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<(), BusError> {
        if let Some(v) = FlowBusMessage::version_of(&payload) {
            self.versions.lock().unwrap().insert(v);
        }
        self.inner.publish(channel, payload).await
    }

    async fn subscribe(&self, channel: &str) -> Result<BusSubscription, BusError> {
        self.inner.subscribe(channel).await
    }
}

fn node(
    name: &str,
    format: BusFormat,
    bus: &RecordingBus,
    store: &Arc<MemoryStore>,
) -> FlowRegistry {
    FlowRegistry::new(Arc::new(FlowDeps {
        store: store.clone(),
        bus: Arc::new(bus.clone()),
        node_id: name.into(),
        metrics: Arc::new(Metrics::default()),
        config: FlowConfig {
            bus_format: format,
            ..FlowConfig::default()
        },
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_the_previous_and_the_current_bus_format_co_edit() {
    let bus = RecordingBus::default();
    let store = Arc::new(MemoryStore::default());
    let old = node("old", BusFormat::V1, &bus, &store);
    let new = node("new", BusFormat::V2, &bus, &store);
    let mut on_old = SyncPeer::join(
        &old.get_or_spawn("mixed").await.unwrap(),
        "ann",
        Role::Editor,
        OnInvalid::Refuse,
    )
    .await;
    let mut on_new = SyncPeer::join(
        &new.get_or_spawn("mixed").await.unwrap(),
        "bob",
        Role::Editor,
        OnInvalid::Refuse,
    )
    .await;

    for i in 0..10 {
        on_old
            .doc
            .add_node(NewNode::new(
                "action",
                format!("old {i}"),
                Position::new(i as f64, 0.0),
            ))
            .unwrap();
        on_old.exchange().await;
        on_new
            .doc
            .add_node(NewNode::new(
                "action",
                format!("new {i}"),
                Position::new(i as f64, 1.0),
            ))
            .unwrap();
        on_new.exchange().await;
    }
    // Each editor ends with everything, through its own node.
    for _ in 0..50 {
        on_old.exchange().await;
        on_new.exchange().await;
        if on_old.doc.snapshot().nodes.len() == 20 && on_new.doc.snapshot().nodes.len() == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        on_old.doc.snapshot().nodes.len(),
        20,
        "the old node's editor has everything"
    );
    assert_eq!(
        on_old.doc.to_json(),
        on_new.doc.to_json(),
        "both replicas converge"
    );
    let hub_old = ractor::call!(on_old.actor, FlowMsg::ToJson).unwrap();
    let hub_new = ractor::call!(on_new.actor, FlowMsg::ToJson).unwrap();
    assert_eq!(hub_old, hub_new);
    let versions: Vec<u8> = bus.versions.lock().unwrap().iter().copied().collect();
    assert_eq!(versions, [1, 2], "both formats were on the bus");
}

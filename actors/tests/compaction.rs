//! Compaction in the flow actor: every `compact_after` stored changes it merges what
//! the store holds (another node may have written changes this replica lacks), then
//! writes a snapshot covering the change log.
//!
//! The merge must decode only what the replica lacks. Re-applying the replica's own
//! changes (nearly all of them, on one node) stalled a large flow's actor, and with it
//! the runtime thread it ran on, every `compact_after` changes. The store keeps each
//! change's hash beside its bytes, so a change the replica has is skipped unread: here
//! the store hands back every stored change's bytes garbled, with their true hashes,
//! and compaction must still succeed; the snapshot must hold every edit.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowhub_actors::bus::MemoryBus;
use flowhub_actors::flow::{FlowConfig, FlowDeps, FlowRegistry, OnInvalid};
use flowhub_actors::metrics::Metrics;
use flowhub_actors::store::{Store, StoredFlow};
use flowhub_crdt::{FlowDoc, NewNode, Position};
use flowhub_protocol::Role;
use support::{HookedStore, StoreHooks, SyncPeer};

const FLOW: &str = "compacted";
const COMPACT_AFTER: usize = 5;

/// Once armed, every change the store returns has its bytes replaced by garbage
/// (its hash kept): decoding any of them fails.
#[derive(Default)]
struct Garble {
    armed: AtomicBool,
}

impl StoreHooks for Garble {
    fn after_load(&self, flow: &mut StoredFlow) {
        if self.armed.load(Ordering::SeqCst) {
            for change in &mut flow.changes {
                change.bytes = b"not an automerge change".to_vec();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_reads_no_stored_change_the_replica_has() {
    let store = Arc::new(HookedStore::new(Garble::default()));
    let metrics = Arc::new(Metrics::default());
    let registry = FlowRegistry::new(Arc::new(FlowDeps {
        store: store.clone(),
        bus: Arc::new(MemoryBus::new()),
        node_id: "compact-node".into(),
        metrics: metrics.clone(),
        config: FlowConfig {
            compact_after: COMPACT_AFTER,
            tick: Duration::from_millis(20),
            ..FlowConfig::default()
        },
    }));
    let actor = registry.get_or_spawn(FLOW).await.expect("flow actor");
    let mut peer = SyncPeer::join(&actor, "editor", Role::Editor, OnInvalid::Refuse).await;
    store.armed.store(true, Ordering::SeqCst);

    for i in 0..COMPACT_AFTER + 1 {
        peer.doc
            .add_node(
                NewNode::new("action", format!("step {i}"), Position::new(i as f64, 0.0))
                    .with_id(format!("n{i}")),
            )
            .unwrap();
        peer.exchange().await;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while metrics.compactions.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no compaction: the merge decoded a stored change the replica has"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The snapshot covers the first `COMPACT_AFTER` edits; with the changes stored
    // after it, it is the editor's document.
    let stored = store.inner.load_flow(FLOW).await.unwrap();
    let mut restored = FlowDoc::load(stored.snapshot.as_deref().expect("a snapshot")).unwrap();
    assert!(restored.to_json()["nodes"].as_object().unwrap().len() >= COMPACT_AFTER);
    let after: Vec<Vec<u8>> = stored.changes.into_iter().map(|c| c.bytes).collect();
    restored.apply_changes(&after).unwrap();
    assert_eq!(restored.to_json()["nodes"], peer.doc.to_json()["nodes"]);
    assert_eq!(restored.heads_hex(), peer.doc.heads_hex());
    registry.stop_all().await;
}

//! Compaction in the flow actor: every `compact_after` stored changes it merges what
//! the store holds (another node may have written changes this replica lacks), then
//! writes a snapshot covering the change log.
//!
//! The merge must cost nothing it does not need. When the store's version shows that
//! no other node wrote since the replica last read it, there is nothing to merge and
//! the change log is not read at all (reading it every `compact_after` changes held a
//! flow's actor for tens of milliseconds on a busy SQLite). When another node did
//! write, the merge decodes only what the replica lacks: re-applying the replica's own
//! changes stalled a large flow's actor, and the runtime thread it ran on. The store
//! keeps each change's hash beside its bytes, so a change the replica has is skipped
//! unread: here the store hands back those changes' bytes garbled, with their true
//! hashes, and compaction must still succeed; the snapshot must hold every edit.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowhub_actors::bus::MemoryBus;
use flowhub_actors::flow::{FlowConfig, FlowDeps, FlowRegistry, OnInvalid};
use flowhub_actors::metrics::Metrics;
use flowhub_actors::store::{ChangeRecord, Store, StoredFlow};
use flowhub_crdt::{FlowDoc, NewNode, Position};
use flowhub_protocol::Role;
use support::{HookedStore, StoreHooks, SyncPeer};

const FLOW: &str = "compacted";
const COMPACT_AFTER: usize = 5;

/// Compactions wait at this gate while it is closed.
struct CompactGate {
    open: tokio::sync::watch::Sender<bool>,
    started: AtomicUsize,
}

#[async_trait::async_trait]
impl StoreHooks for CompactGate {
    async fn before_compact(&self) -> Result<(), flowhub_actors::store::StoreError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let _ = self.open.subscribe().wait_for(|open| *open).await;
        Ok(())
    }
}

/// The store's compaction write runs beside the actor: while it is stalled, edits are
/// still applied, stored and acknowledged, and once it completes the snapshot plus the
/// changes stored meanwhile are the editor's flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_are_acknowledged_while_a_compaction_is_written() {
    let store = Arc::new(HookedStore::new(CompactGate {
        open: tokio::sync::watch::channel(false).0,
        started: AtomicUsize::new(0),
    }));
    let metrics = Arc::new(Metrics::default());
    let registry = registry(store.clone(), metrics.clone());
    let actor = registry.get_or_spawn(FLOW).await.expect("flow actor");
    let mut peer = SyncPeer::join(&actor, "editor", Role::Editor, OnInvalid::Refuse).await;
    let add = |peer: &mut SyncPeer, i: usize| {
        peer.doc
            .add_node(
                NewNode::new("action", format!("step {i}"), Position::new(i as f64, 0.0))
                    .with_id(format!("n{i}")),
            )
            .unwrap();
    };
    for i in 0..COMPACT_AFTER + 1 {
        add(&mut peer, i);
        peer.exchange().await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.started.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no compaction started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The compaction's write waits at the gate; three more edits go through.
    tokio::time::timeout(Duration::from_secs(5), async {
        for i in COMPACT_AFTER + 1..COMPACT_AFTER + 4 {
            add(&mut peer, i);
            peer.exchange().await;
        }
    })
    .await
    .expect("edits stalled behind the compaction's write");
    let json = ractor::call_t!(actor, flowhub_actors::flow::FlowMsg::ToJson, 2000)
        .expect("the actor answers while the compaction is written");
    assert_eq!(json["nodes"], peer.doc.to_json()["nodes"]);
    assert_eq!(
        metrics.compactions.get(),
        0,
        "compacted through a closed gate"
    );
    let stored = store.inner.load_flow(FLOW).await.unwrap();
    assert!(stored.snapshot.is_none());
    assert_eq!(
        stored.changes.len(),
        COMPACT_AFTER + 4,
        "every edit was stored"
    );

    store.open.send_replace(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while metrics.compactions.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the compaction never finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stored = store.inner.load_flow(FLOW).await.unwrap();
    let mut restored = FlowDoc::load(stored.snapshot.as_deref().expect("a snapshot")).unwrap();
    let after: Vec<Vec<u8>> = stored.changes.into_iter().map(|c| c.bytes).collect();
    assert!(
        after.len() >= 3,
        "the edits stored during the compaction are not covered"
    );
    restored.apply_changes(&after).unwrap();
    assert_eq!(restored.to_json()["nodes"], peer.doc.to_json()["nodes"]);
    registry.stop_all().await;
}

/// Once armed, every change the store returns has its bytes replaced by garbage
/// (its hash kept), except the change with the hash `spared`: decoding any other
/// fails. Counts the loads made while armed.
#[derive(Default)]
struct Garble {
    armed: AtomicBool,
    spared: std::sync::Mutex<Option<String>>,
    loads: AtomicUsize,
}

impl StoreHooks for Garble {
    fn after_load(&self, flow: &mut StoredFlow) {
        if self.armed.load(Ordering::SeqCst) {
            self.loads.fetch_add(1, Ordering::SeqCst);
            let spared = self.spared.lock().unwrap().clone();
            for change in &mut flow.changes {
                if spared.as_deref() != Some(change.hash.as_str()) {
                    change.bytes = b"not an automerge change".to_vec();
                }
            }
        }
    }
}

fn registry<H: StoreHooks>(store: Arc<HookedStore<H>>, metrics: Arc<Metrics>) -> FlowRegistry {
    FlowRegistry::new(Arc::new(FlowDeps {
        store,
        bus: Arc::new(MemoryBus::new()),
        node_id: "compact-node".into(),
        metrics,
        config: FlowConfig {
            compact_after: COMPACT_AFTER,
            tick: Duration::from_millis(20),
            ..FlowConfig::default()
        },
    }))
}

/// Makes `COMPACT_AFTER + 1` edits through the hub, then waits for a compaction.
async fn edit_until_compacted(peer: &mut SyncPeer, metrics: &Metrics) {
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
}

/// The snapshot plus the changes stored after it, as one document.
async fn stored_doc(store: &HookedStore<Garble>) -> FlowDoc {
    let stored = store.inner.load_flow(FLOW).await.unwrap();
    let mut restored = FlowDoc::load(stored.snapshot.as_deref().expect("a snapshot")).unwrap();
    let after: Vec<Vec<u8>> = stored.changes.into_iter().map(|c| c.bytes).collect();
    restored.apply_changes(&after).unwrap();
    restored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_on_one_node_reads_no_change_log() {
    let store = Arc::new(HookedStore::new(Garble::default()));
    let metrics = Arc::new(Metrics::default());
    let registry = registry(store.clone(), metrics.clone());
    let actor = registry.get_or_spawn(FLOW).await.expect("flow actor");
    let mut peer = SyncPeer::join(&actor, "editor", Role::Editor, OnInvalid::Refuse).await;
    store.armed.store(true, Ordering::SeqCst);
    edit_until_compacted(&mut peer, &metrics).await;
    assert_eq!(
        store.loads.load(Ordering::SeqCst),
        0,
        "compaction read the change log although no other node wrote"
    );
    let mut restored = stored_doc(&store).await;
    assert_eq!(restored.to_json()["nodes"], peer.doc.to_json()["nodes"]);
    assert_eq!(restored.heads_hex(), peer.doc.heads_hex());
    registry.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_reads_no_stored_change_the_replica_has() {
    let store = Arc::new(HookedStore::new(Garble::default()));
    let metrics = Arc::new(Metrics::default());
    let registry = registry(store.clone(), metrics.clone());
    let actor = registry.get_or_spawn(FLOW).await.expect("flow actor");
    let mut peer = SyncPeer::join(&actor, "editor", Role::Editor, OnInvalid::Refuse).await;

    // Another node stores a change this replica never hears of (no bus between them):
    // the store's version moves past this replica's, so compaction must merge.
    let mut other = peer.doc.fork();
    let before = other.heads();
    other
        .add_node(NewNode::new("action", "elsewhere", Position::new(9.0, 9.0)).with_id("other"))
        .unwrap();
    let theirs = other.changes_since(&before);
    *store.spared.lock().unwrap() = Some(theirs[0].hash.to_string());
    let records: Vec<ChangeRecord> = theirs
        .iter()
        .map(|c| ChangeRecord {
            hash: c.hash.to_string(),
            bytes: c.bytes.clone(),
        })
        .collect();
    store.inner.append_changes(FLOW, &records).await.unwrap();
    store.armed.store(true, Ordering::SeqCst);

    edit_until_compacted(&mut peer, &metrics).await;
    assert!(
        store.loads.load(Ordering::SeqCst) > 0,
        "compaction did not merge"
    );
    // The snapshot plus what followed it is the editor's flow and the other node's node.
    let restored = stored_doc(&store).await.to_json();
    let mut want = peer.doc.to_json();
    want["nodes"]["other"] = other.to_json()["nodes"]["other"].clone();
    assert_eq!(restored["nodes"], want["nodes"]);
    registry.stop_all().await;
}

//! The `OnInvalid` policies through a real `FlowActor` (memory store and bus).
//!
//! A peer joined with `OnInvalid::Repair` (how the automerge-repo bridge joins: a
//! stock `Repo` cannot roll back) that sends a schema-breaking change is not locked
//! out: its change is stored together with a hub-authored repair, every replica and
//! the store converge on a valid flow, and its later edits land. A peer joined with
//! `OnInvalid::Refuse` (flowhub's own clients) is refused as before. A viewer with
//! the repair policy is refused without a resync round (which would make a stock peer
//! send the refused change again, forever).

mod support;

use std::sync::Arc;

use flowhub_actors::bus::MemoryBus;
use flowhub_actors::flow::{FlowConfig, FlowDeps, FlowMsg, FlowRegistry, OnInvalid};
use flowhub_actors::metrics::Metrics;
use flowhub_actors::store::{MemoryStore, Store};
use flowhub_crdt::{FlowDoc, NewNode, Position};
use flowhub_protocol::{ErrorCode, Role};
use ractor::ActorRef;
use support::SyncPeer;

const FLOW: &str = "repaired";

struct World {
    store: Arc<MemoryStore>,
    actor: ActorRef<FlowMsg>,
}

async fn world() -> World {
    let store = Arc::new(MemoryStore::default());
    let registry = FlowRegistry::new(Arc::new(FlowDeps {
        store: store.clone(),
        bus: Arc::new(MemoryBus::new()),
        node_id: "test-node".into(),
        metrics: Arc::new(Metrics::default()),
        config: FlowConfig::default(),
    }));
    let actor = registry.get_or_spawn(FLOW).await.unwrap();
    World { store, actor }
}

impl World {
    async fn hub_json(&self) -> serde_json::Value {
        let mut json = ractor::call!(self.actor, FlowMsg::ToJson).unwrap();
        json.as_object_mut().unwrap().remove("id");
        json
    }

    /// The flow as the store has it (what a restart would load).
    async fn stored(&self) -> FlowDoc {
        let stored = self.store.load_flow(FLOW).await.unwrap();
        let changes: Vec<Vec<u8>> = stored.changes.into_iter().map(|c| c.bytes).collect();
        FlowDoc::load_parts(stored.snapshot.as_deref(), &changes).unwrap()
    }
}

fn strip_heads(mut json: serde_json::Value) -> serde_json::Value {
    if let Some(o) = json.as_object_mut() {
        o.remove("heads");
        o.remove("id");
    }
    json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_breaking_change_from_a_repair_peer_is_stored_with_its_repair() {
    let w = world().await;
    let mut stock = SyncPeer::join(&w.actor, "stock", Role::Editor, OnInvalid::Repair).await;
    let mut native = SyncPeer::join(&w.actor, "native", Role::Editor, OnInvalid::Refuse).await;

    // A valid node first, then the stock way of relabelling it.
    let (node, _) = stock
        .doc
        .add_node(NewNode::new("http", "Fetch", Position::new(1.0, 2.0)))
        .unwrap();
    stock.exchange().await;
    stock.write_text_label(&node, "Typed in JS");
    stock.exchange().await;

    let repairs = stock.repairs();
    assert_eq!(repairs.len(), 1, "the peer is told: {:?}", stock.messages);
    assert_eq!(
        repairs[0].1,
        vec![format!("nodes/{node}/label: expected string")]
    );
    assert!(
        stock.errors().is_empty(),
        "never refused: {:?}",
        stock.errors()
    );

    // The hub, the store, the stock peer and a native peer: one valid flow.
    let mut stored = w.stored().await;
    stored.validate().unwrap();
    let repair = repairs[0].0.parse().unwrap();
    assert!(stored.has_change(&repair), "the repair is durable");
    native.exchange().await;
    let hub = strip_heads(w.hub_json().await);
    assert_eq!(hub["nodes"][&node]["label"], "Typed in JS");
    assert_eq!(strip_heads(stored.to_json()), hub);
    assert_eq!(strip_heads(stock.doc.to_json()), hub);
    assert_eq!(strip_heads(native.doc.to_json()), hub);
    stock.doc.validate().unwrap();

    // Its later valid edits land.
    stock
        .doc
        .move_node(&node, Position::new(50.0, 60.0))
        .unwrap();
    stock.exchange().await;
    native.exchange().await;
    let hub = strip_heads(w.hub_json().await);
    assert_eq!(hub["nodes"][&node]["position"]["x"], 50.0);
    assert_eq!(strip_heads(w.stored().await.to_json()), hub);
    assert_eq!(strip_heads(native.doc.to_json()), hub);
    assert_eq!(stock.repairs().len(), 1, "nothing more to repair");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refuse_peer_is_still_refused_and_nothing_is_stored() {
    let w = world().await;
    let mut native = SyncPeer::join(&w.actor, "native", Role::Editor, OnInvalid::Refuse).await;
    let (node, _) = native
        .doc
        .add_node(NewNode::new("http", "Fetch", Position::new(1.0, 2.0)))
        .unwrap();
    native.exchange().await;
    let before = w.stored().await.heads_hex();
    native.write_text_label(&node, "bad");
    native.exchange().await;
    assert_eq!(native.errors(), vec![ErrorCode::SchemaViolation]);
    assert!(native.repairs().is_empty());
    assert_eq!(w.stored().await.heads_hex(), before, "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_with_the_repair_policy_is_refused_without_a_resync_loop() {
    let w = world().await;
    let mut editor = SyncPeer::join(&w.actor, "editor", Role::Editor, OnInvalid::Refuse).await;
    editor
        .doc
        .add_node(NewNode::new("http", "Fetch", Position::new(1.0, 2.0)))
        .unwrap();
    editor.exchange().await;
    let mut viewer = SyncPeer::join(&w.actor, "viewer", Role::Viewer, OnInvalid::Repair).await;
    let before = w.stored().await.heads_hex();

    viewer.doc.set_name("mine now").unwrap();
    let frames = viewer.exchange().await;
    assert_eq!(viewer.errors(), vec![ErrorCode::Forbidden]);
    assert!(
        frames <= 1,
        "no resync rounds after the refusal: {frames} frames"
    );
    assert_eq!(w.stored().await.heads_hex(), before, "nothing stored");
    assert_ne!(w.hub_json().await["name"], "mine now", "nothing applied");

    // Others' edits still reach it.
    editor.doc.set_name("from the editor").unwrap();
    editor.exchange().await;
    viewer.exchange().await;
    let mut hub = w.stored().await;
    let editor_change = hub.heads();
    for h in &editor_change {
        assert!(viewer.doc.has_change(h), "the viewer got the editor's edit");
    }
}

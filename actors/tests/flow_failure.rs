//! A flow actor that fails (the store is down while it must roll an edit back) never
//! leaves its subscribers silently attached to nothing: every one of them, read-only
//! ones included, is told to subscribe again, and the registry and the open-flows gauge
//! stay true. The store watch also catches a replica up on what another node stored.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use flowhub_actors::bus::MemoryBus;
use flowhub_actors::flow::{FlowConfig, FlowDeps, FlowMsg, FlowRegistry};
use flowhub_actors::metrics::Metrics;
use flowhub_actors::session::{NativeFrame, Outbound, OutboundRx};
use flowhub_actors::store::{ChangeRecord, MemoryStore, Store};
use flowhub_crdt::{FlowDoc, NewNode, Position, SyncState};
use flowhub_protocol::{ErrorCode, Role, ServerMessage};
use support::{HookedStore, Outage};

mod support;

type FlakyStore = HookedStore<Outage>;

fn registry(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> FlowRegistry {
    FlowRegistry::new(Arc::new(FlowDeps {
        store,
        bus: Arc::new(MemoryBus::new()),
        node_id: "test-node".into(),
        metrics,
        config: FlowConfig::default(),
    }))
}

async fn join(reg: &FlowRegistry, id: &str, role: Role) -> OutboundRx {
    let actor = reg.get_or_spawn("f").await.unwrap();
    let (out, rx) = Outbound::new(256, Arc::new(Metrics::default()));
    ractor::call!(actor, |reply| FlowMsg::Join {
        session_id: id.into(),
        user_id: id.into(),
        name: id.into(),
        token_role: Some(role),
        role,
        out,
        request_id: None,
        pending: Vec::new(),
        stream: false,
        on_invalid: flowhub_actors::flow::OnInvalid::Refuse,
        greet: true,
        reply
    })
    .unwrap();
    rx
}

/// The next `error` naming the flow, skipping everything else.
async fn next_error(rx: &mut OutboundRx) -> (ErrorCode, String) {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), rx.frames.recv())
            .await
            .expect("an error arrives")
            .expect("queue open");
        if let NativeFrame::Text(t) = frame.into_native() {
            if let Ok(ServerMessage::Error {
                code,
                message,
                flow_id,
                ..
            }) = serde_json::from_str::<ServerMessage>(&t)
            {
                assert_eq!(flow_id.as_deref(), Some("f"));
                return (code, message);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_closes_the_flow_visibly_and_it_reopens_after() {
    let store = Arc::new(FlakyStore::new(Outage::default()));
    let metrics = Arc::new(Metrics::default());
    let reg = registry(store.clone(), metrics.clone());
    let mut editor = join(&reg, "ed", Role::Editor).await;
    let mut viewer = join(&reg, "vi", Role::Viewer).await;
    let actor = reg.get("f").unwrap();
    assert_eq!(metrics.flows_open.get(), 1);

    // The store goes down; the editor's edit cannot be stored, nor rolled back.
    store.down.store(true, Ordering::SeqCst);
    let mut doc = FlowDoc::new();
    let mut sync = SyncState::new();
    doc.add_node(NewNode::new("action", "lost", Position::new(0.0, 0.0)))
        .unwrap();
    // Run the sync protocol until the hub answers with an error: the editor hears
    // its edit was refused (retryable) ...
    let code = loop {
        while let Some(msg) = doc.generate_sync_message(&mut sync) {
            let _ = ractor::call!(actor, |reply| FlowMsg::Sync {
                session_id: "ed".into(),
                payload: msg.clone(),
                reply
            });
        }
        let frame = tokio::time::timeout(Duration::from_secs(5), editor.frames.recv())
            .await
            .expect("the hub answers")
            .expect("queue open");
        match frame.into_native() {
            NativeFrame::Binary(b) => {
                let f = flowhub_protocol::SyncFrame::decode(&b).unwrap();
                doc.receive_sync_message(&mut sync, &f.payload).unwrap();
            }
            NativeFrame::Text(t) => {
                if let Ok(ServerMessage::Error { code, .. }) = serde_json::from_str(&t) {
                    break code;
                }
            }
            NativeFrame::SharedBinary(_) => unreachable!("joined without stream"),
        }
    };
    assert_eq!(code, ErrorCode::Internal);
    // ... and both, the read-only viewer too, that the flow closed.
    let (code, message) = next_error(&mut viewer).await;
    assert_eq!(code, ErrorCode::Internal);
    assert!(message.contains("subscribe again"), "{message}");
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while reg.get("f").is_some() || metrics.flows_open.get() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the failed flow stays registered or counted open"
    );
    assert_eq!(metrics.flow_failures.get(), 1);

    // The store heals: subscribing again opens a fresh flow actor.
    store.down.store(false, Ordering::SeqCst);
    let _again = join(&reg, "vi", Role::Viewer).await;
    assert_eq!(metrics.flows_open.get(), 1);
    reg.stop_all().await;
}

/// Another node's append (here: written straight into the shared store, with no bus
/// message at all) reaches an open replica through the store watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_watch_brings_changes_no_bus_message_announced() {
    let store = Arc::new(MemoryStore::new());
    let metrics = Arc::new(Metrics::default());
    let reg = registry(store.clone(), metrics.clone());
    let _watch = reg.spawn_store_watch(Duration::from_millis(100));
    let _viewer = join(&reg, "vi", Role::Viewer).await;
    let actor = reg.get("f").unwrap();

    let mut other = FlowDoc::new();
    let (node, _) = other
        .add_node(NewNode::new("action", "elsewhere", Position::new(1.0, 2.0)))
        .unwrap();
    let changes: Vec<ChangeRecord> = other
        .all_changes()
        .into_iter()
        .map(|c| ChangeRecord {
            hash: c.hash.to_string(),
            bytes: c.bytes,
        })
        .collect();
    store.append_changes("f", &changes).await.unwrap();

    let arrived = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let json = ractor::call!(actor, FlowMsg::ToJson).unwrap();
            if json["nodes"].get(&node).is_some() {
                return json;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the replica catches up from the store");
    assert_eq!(arrived["nodes"][&node]["label"], "elsewhere");
    assert!(metrics.antientropy_repairs.get() >= 1);
    reg.stop_all().await;
}

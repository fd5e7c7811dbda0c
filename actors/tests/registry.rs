//! The registry spawns exactly one flow actor per flow, even under a subscribe storm,
//! and an evicted flow comes back with everything it had.

use std::sync::Arc;
use std::time::Duration;

use flowhub_actors::bus::MemoryBus;
use flowhub_actors::flow::{FlowConfig, FlowDeps, FlowMsg, FlowRegistry};
use flowhub_actors::metrics::Metrics;
use flowhub_actors::session::Outbound;
use flowhub_actors::store::{MemoryStore, Store};
use flowhub_crdt::{FlowDoc, NewNode, Position, SyncState};
use flowhub_protocol::{Role, SyncFrame};

fn registry(store: Arc<dyn Store>, idle: Duration) -> FlowRegistry {
    FlowRegistry::new(Arc::new(FlowDeps {
        store,
        bus: Arc::new(MemoryBus::new()),
        node_id: "test-node".into(),
        metrics: Arc::new(Metrics::default()),
        config: FlowConfig {
            idle_eviction: idle,
            ..FlowConfig::default()
        },
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_get_or_spawn_spawns_exactly_one_actor() {
    let reg = registry(Arc::new(MemoryStore::new()), Duration::from_secs(30));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let reg = reg.clone();
        tasks.push(tokio::spawn(async move {
            reg.get_or_spawn("race").await.unwrap().get_id()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "several actors answered for one flow");
    assert_eq!(reg.spawned(), 1);
    assert_eq!(reg.open_flows(), vec!["race".to_string()]);
    reg.stop_all().await;
}

/// Joins as a peer, sends one edit through the sync protocol, and waits for its ack.
async fn edit_through_actor(reg: &FlowRegistry, label: &str) -> String {
    let actor = reg.get_or_spawn("evict").await.unwrap();
    let (out, mut rx) = Outbound::new(64, Arc::new(Metrics::default()));
    ractor::call!(actor, |reply| FlowMsg::Join {
        session_id: label.into(),
        user_id: "u".into(),
        name: "U".into(),
        token_role: Some(Role::Editor),
        role: Role::Editor,
        out: out.clone(),
        request_id: None,
        pending: Vec::new(),
        stream: false,
        on_invalid: flowhub_actors::flow::OnInvalid::Refuse,
        greet: true,
        reply
    })
    .unwrap();
    let mut doc = FlowDoc::new();
    let mut sync = SyncState::new();
    let (id, _) = doc
        .add_node(NewNode::new("action", label, Position { x: 0.0, y: 0.0 }))
        .unwrap();
    // Run the sync protocol until the hub acknowledges our change.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(msg) = doc.generate_sync_message(&mut sync) {
            ractor::call!(actor, |reply| FlowMsg::Sync {
                session_id: label.into(),
                payload: msg.clone(),
                reply
            })
            .unwrap();
        }
        let frame = tokio::time::timeout_at(deadline, rx.frames.recv())
            .await
            .expect("hub answers")
            .unwrap();
        match frame.into_native() {
            flowhub_actors::session::NativeFrame::Binary(b) => {
                let f = SyncFrame::decode(&b).unwrap();
                doc.receive_sync_message(&mut sync, &f.payload).unwrap();
            }
            flowhub_actors::session::NativeFrame::Text(t)
                if t.contains(r#""type":"ack""#) && t.contains("changes") =>
            {
                break
            }
            flowhub_actors::session::NativeFrame::Text(_) => {}
            flowhub_actors::session::NativeFrame::SharedBinary(_) => {
                unreachable!("joined without stream")
            }
        }
    }
    actor
        .cast(FlowMsg::Leave {
            session_id: label.into(),
        })
        .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flows_are_evicted_and_reload_from_the_store() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let reg = registry(store.clone(), Duration::from_millis(100));
    let first = edit_through_actor(&reg, "first").await;
    let first_actor = reg.get("evict").expect("open while recently used").get_id();

    // Step 1: after the idle grace period the actor is gone.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(reg.get("evict").is_none(), "idle flow was not evicted");

    // Step 2: the next subscriber gets a fresh actor holding everything stored.
    let second = edit_through_actor(&reg, "second").await;
    let actor = reg.get_or_spawn("evict").await.unwrap();
    assert_ne!(actor.get_id(), first_actor);
    let json = ractor::call!(actor, FlowMsg::ToJson).unwrap();
    assert!(
        json["nodes"].get(&first).is_some(),
        "edit made before eviction is missing"
    );
    assert!(json["nodes"].get(&second).is_some());
    assert_eq!(reg.spawned(), 2);
    reg.stop_all().await;
}

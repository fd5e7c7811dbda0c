//! Pipelined persistence in the flow actor: while a store append is in flight, the
//! next edits are validated and applied and queue for the next append, and none of
//! them is acknowledged, handed to another peer or shown to a reader before it is
//! stored. A failed append refuses every edit it or the queue behind it held.
//!
//! The store here is a `MemoryStore` behind a gate the test opens and closes, so "the
//! append is in flight" is a state the test holds, not a race it hopes to win.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowhub_actors::bus::MemoryBus;
use flowhub_actors::flow::{FlowConfig, FlowDeps, FlowMsg, FlowRegistry, OnInvalid};
use flowhub_actors::metrics::Metrics;
use flowhub_actors::outbound::{NativeFrame, OutFrame, Outbound, OutboundRx};
use flowhub_actors::store::{Store, StoreError};
use flowhub_crdt::{ChangeHash, FlowDoc, NewNode, Position, SyncState};
use flowhub_protocol::{ErrorCode, Role, ServerMessage, SyncFrame};
use ractor::ActorRef;
use support::{HookedStore, StoreHooks, SyncPeer};
use tokio::sync::watch;

const FLOW: &str = "piped";

/// Appends of a [`HookedStore`] with these hooks wait while the gate is closed, and
/// fail while `fail` is set.
struct Gate {
    open: watch::Sender<bool>,
    fail: AtomicBool,
    appends: AtomicUsize,
}

impl Gate {
    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

#[async_trait]
impl StoreHooks for Gate {
    async fn before_append(&self) -> Result<(), StoreError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("test: append fails".into()));
        }
        Ok(())
    }
}

type GatedStore = HookedStore<Gate>;

impl GatedStore {
    fn gated() -> Self {
        HookedStore::new(Gate {
            open: watch::channel(true).0,
            fail: AtomicBool::new(false),
            appends: AtomicUsize::new(0),
        })
    }
}

async fn flow(store: Arc<GatedStore>) -> (FlowRegistry, ActorRef<FlowMsg>) {
    let registry = FlowRegistry::new(Arc::new(FlowDeps {
        store,
        bus: Arc::new(MemoryBus::new()),
        node_id: "pipe-node".into(),
        metrics: Arc::new(Metrics::default()),
        config: FlowConfig {
            tick: Duration::from_millis(20),
            ..FlowConfig::default()
        },
    }));
    let actor = registry.get_or_spawn(FLOW).await.expect("flow actor");
    (registry, actor)
}

/// An editor that sends its changes as change frames, without waiting for answers.
struct Streamer {
    doc: FlowDoc,
    rx: OutboundRx,
    actor: ActorRef<FlowMsg>,
    sent: Vec<ChangeHash>,
}

impl Streamer {
    async fn join(actor: &ActorRef<FlowMsg>) -> Streamer {
        let (out, rx) = Outbound::new(1024, Arc::new(Metrics::default()));
        ractor::call!(actor, |reply| FlowMsg::Join {
            session_id: "ed".into(),
            user_id: "ed".into(),
            name: "Ed".into(),
            token_role: Some(Role::Editor),
            role: Role::Editor,
            out,
            request_id: None,
            pending: Vec::new(),
            stream: true,
            on_invalid: OnInvalid::Refuse,
            greet: true,
            reply
        })
        .expect("join");
        Streamer {
            doc: FlowDoc::new(),
            rx,
            actor: actor.clone(),
            sent: Vec::new(),
        }
    }

    /// Adds or moves node `n`, sends the change, and returns once the actor answered
    /// the frame (which, pipelined, is before the change is stored).
    async fn edit(&mut self, x: f64) {
        let before = self.doc.heads();
        if self.doc.node("n").is_some() {
            self.doc.move_node("n", Position::new(x, 0.0)).unwrap();
        } else {
            self.doc
                .add_node(NewNode::new("action", "n", Position::new(x, 0.0)).with_id("n"))
                .unwrap();
        }
        let new = self.doc.changes_since(&before);
        self.sent.extend(new.iter().map(|c| c.hash));
        let payload: Vec<u8> = new.into_iter().flat_map(|c| c.bytes).collect();
        let answered = self
            .actor
            .call(
                |reply| FlowMsg::Changes {
                    session_id: "ed".into(),
                    payload,
                    reply,
                },
                Some(Duration::from_secs(2)),
            )
            .await
            .expect("the flow actor is alive");
        let ractor::rpc::CallResult::Success(answered) = answered else {
            panic!("the frame is not answered while the store appends: {answered:?}");
        };
        assert!(answered, "still a peer");
    }

    /// The control messages queued so far.
    fn messages(&mut self) -> Vec<ServerMessage> {
        let mut out = Vec::new();
        while let Ok(frame) = self.rx.frames.try_recv() {
            if let NativeFrame::Text(t) = frame.into_native() {
                out.push(serde_json::from_str(&t).expect("a server message"));
            }
        }
        out
    }
}

fn acked(messages: &[ServerMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Ack {
                changes,
                flow_id: Some(_),
                ..
            } => Some(changes.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Changes any sync frame queued for `peer` so far would bring it.
fn changes_in_sync_frames(peer: &mut SyncPeer) -> usize {
    let mut n = 0;
    while let Ok(frame) = peer.rx.frames.try_recv() {
        let bytes = match frame.into_native() {
            NativeFrame::Binary(b) => b.to_vec(),
            NativeFrame::SharedBinary(b) => b.to_vec(),
            NativeFrame::Text(_) => continue,
        };
        let f = SyncFrame::decode(&bytes).unwrap();
        let applied = peer
            .doc
            .receive_sync_message(&mut peer.sync, &f.payload)
            .unwrap();
        n += applied.changes.len();
    }
    n
}

async fn stored_json(store: &GatedStore) -> serde_json::Value {
    let stored = store.inner.load_flow(FLOW).await.unwrap();
    let changes: Vec<Vec<u8>> = stored.changes.into_iter().map(|c| c.bytes).collect();
    FlowDoc::load_parts(stored.snapshot.as_deref(), &changes)
        .unwrap()
        .to_json()
}

fn nodes(json: &serde_json::Value) -> usize {
    json["nodes"].as_object().map_or(0, |n| n.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_go_on_while_the_store_appends_and_nothing_shows_before_it_is_stored() {
    let store = Arc::new(GatedStore::gated());
    let (registry, actor) = flow(store.clone()).await;
    let mut watcher = SyncPeer::join(&actor, "wa", Role::Viewer, OnInvalid::Refuse).await;
    let mut editor = Streamer::join(&actor).await;
    editor.messages();

    // The store stalls: ten edits are still answered one after the other (each
    // would otherwise wait for its own append).
    store.set_open(false);
    for x in 0..10 {
        editor.edit(f64::from(x)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        store.appends.load(Ordering::SeqCst),
        1,
        "one append in flight, the other nine edits queued behind it"
    );
    // Not stored, so: no ack, nothing for the watcher, and a reader waits.
    assert!(acked(&editor.messages()).is_empty(), "acked before stored");
    assert_eq!(changes_in_sync_frames(&mut watcher), 0, "forwarded early");
    let read = ractor::call_t!(actor, FlowMsg::ToJson, 300);
    assert!(
        read.is_err(),
        "a reader saw the flow while edits were unstored: {read:?}"
    );

    // The store goes on: every edit is acknowledged, in the order it was sent, with
    // the nine queued ones stored by one more append.
    store.set_open(true);
    let expected: Vec<String> = editor.sent.iter().map(ToString::to_string).collect();
    let mut acks = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while acks.len() < expected.len() {
            if let Some(NativeFrame::Text(t)) =
                editor.rx.frames.recv().await.map(OutFrame::into_native)
            {
                let m: ServerMessage = serde_json::from_str(&t).unwrap();
                acks.extend(acked(&[m]));
            }
        }
    })
    .await
    .expect("every edit is acked");
    assert_eq!(acks, expected, "acks in the order of the edits");
    assert_eq!(store.appends.load(Ordering::SeqCst), 2);

    // Every replica and the store converge on the editor's document.
    watcher.exchange().await;
    let mut json = ractor::call_t!(actor, FlowMsg::ToJson, 2000).unwrap();
    json.as_object_mut().unwrap().remove("id");
    let want = editor.doc.to_json();
    assert_eq!(json, want, "hub");
    assert_eq!(watcher.doc.to_json(), want, "watcher");
    assert_eq!(stored_json(&store).await, want, "store");
    assert_eq!(want["nodes"]["n"]["position"]["x"], 9.0);
    registry.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_append_refuses_its_edits_and_those_queued_behind_it() {
    let store = Arc::new(GatedStore::gated());
    let (registry, actor) = flow(store.clone()).await;
    let mut watcher = SyncPeer::join(&actor, "wa", Role::Viewer, OnInvalid::Refuse).await;
    let mut editor = Streamer::join(&actor).await;
    editor.messages();

    store.set_open(false);
    store.fail.store(true, Ordering::SeqCst);
    for x in 0..3 {
        editor.edit(f64::from(x)).await;
    }
    store.set_open(true);
    // One refusal per edit (the first append's and the two queued behind it), no ack.
    let mut refused = 0;
    tokio::time::timeout(Duration::from_secs(5), async {
        while refused < 3 {
            if let Some(NativeFrame::Text(t)) =
                editor.rx.frames.recv().await.map(OutFrame::into_native)
            {
                match serde_json::from_str::<ServerMessage>(&t).unwrap() {
                    ServerMessage::Error { code, .. } => {
                        assert_eq!(code, ErrorCode::Internal);
                        refused += 1;
                    }
                    ServerMessage::Ack {
                        flow_id: Some(_), ..
                    } => panic!("an edit the store refused was acked"),
                    _ => {}
                }
            }
        }
    })
    .await
    .expect("every edit is refused");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(changes_in_sync_frames(&mut watcher), 0, "forwarded");
    let hub = ractor::call_t!(actor, FlowMsg::ToJson, 2000).unwrap();
    assert_eq!(nodes(&hub), 0, "the hub kept refused edits: {hub}");
    assert_eq!(nodes(&stored_json(&store).await), 0);

    // The store is back: the editor resends through the sync protocol (as a client
    // does after a refusal) and its edits land everywhere.
    store.fail.store(false, Ordering::SeqCst);
    let mut sync = SyncState::new();
    let mut ack_seen = false;
    for _ in 0..20 {
        if let Some(msg) = editor.doc.generate_sync_message(&mut sync) {
            ractor::call!(actor, |reply| FlowMsg::Sync {
                session_id: "ed".into(),
                payload: msg,
                reply
            })
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        while let Ok(frame) = editor.rx.frames.try_recv() {
            match frame.into_native() {
                NativeFrame::Binary(b) => {
                    let f = SyncFrame::decode(&b).unwrap();
                    editor
                        .doc
                        .receive_sync_message(&mut sync, &f.payload)
                        .unwrap();
                }
                NativeFrame::Text(t) => {
                    let m: ServerMessage = serde_json::from_str(&t).unwrap();
                    ack_seen |= !acked(&[m]).is_empty();
                }
                NativeFrame::SharedBinary(_) => {}
            }
        }
        if ack_seen {
            break;
        }
    }
    assert!(ack_seen, "the resent edits are acked");
    watcher.exchange().await;
    let want = editor.doc.to_json();
    assert_eq!(watcher.doc.to_json(), want);
    assert_eq!(stored_json(&store).await, want);
    assert_eq!(want["nodes"]["n"]["position"]["x"], 2.0);
    registry.stop_all().await;
}

/// A session's `Flush` returns only once its edits are stored and acked: what a
/// closing connection waits for, so a draining node acknowledges what it stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_waits_for_the_store_and_the_acks() {
    let store = Arc::new(GatedStore::gated());
    let (registry, actor) = flow(store.clone()).await;
    let mut editor = Streamer::join(&actor).await;
    editor.messages();
    store.set_open(false);
    editor.edit(1.0).await;
    editor.edit(2.0).await;
    let opener = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            store.set_open(true);
        })
    };
    let flushed = ractor::call!(actor, FlowMsg::Flush);
    assert!(flushed.is_ok());
    assert!(
        matches!(store.appends.load(Ordering::SeqCst), 2),
        "both edits stored"
    );
    // The acks were queued before Flush answered.
    let acks = acked(&editor.messages());
    let expected: Vec<String> = editor.sent.iter().map(ToString::to_string).collect();
    assert_eq!(acks, expected);
    opener.await.unwrap();
    registry.stop_all().await;
}

/// A sync-protocol peer (a stock automerge-repo `Repo`) whose change is being stored
/// when it says it is current (its heads equal the hub's, which already hold the
/// unstored change): once the change is stored, the hub still tells it its heads, so
/// the peer learns that the hub has its edit. (Automerge alone would stay silent: the
/// peer claimed to be current.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_peer_hears_the_hubs_heads_once_its_change_is_stored() {
    let store = Arc::new(GatedStore::gated());
    let (registry, actor) = flow(store.clone()).await;
    let mut peer = SyncPeer::join(&actor, "repo", Role::Editor, OnInvalid::Repair).await;
    store.set_open(false);
    peer.doc
        .add_node(NewNode::new("action", "late", Position::new(1.0, 1.0)).with_id("late"))
        .unwrap();
    let mine = peer.doc.heads();
    // Sync until the hub has the change (its append then starts and waits at the
    // gate): the first message may carry only heads, if the hub's last one is still
    // unanswered.
    let applied = tokio::time::timeout(Duration::from_secs(5), async {
        while store.appends.load(Ordering::SeqCst) == 0 {
            if let Some(msg) = peer.doc.generate_sync_message(&mut peer.sync) {
                ractor::call!(actor, |reply| FlowMsg::Sync {
                    session_id: "repo".into(),
                    payload: msg,
                    reply
                })
                .unwrap();
            }
            while let Ok(Some(frame)) =
                tokio::time::timeout(Duration::from_millis(20), peer.rx.frames.recv()).await
            {
                if let NativeFrame::Binary(b) = frame.into_native() {
                    let f = SyncFrame::decode(&b).unwrap();
                    peer.doc
                        .receive_sync_message(&mut peer.sync, &f.payload)
                        .unwrap();
                }
            }
        }
    })
    .await;
    assert!(applied.is_ok(), "the hub never applied the change");
    // The peer says where it is, without changes (as a Repo does on its own schedule).
    let mut fresh = SyncState::new();
    let hello = peer.doc.generate_sync_message(&mut fresh).unwrap();
    ractor::call!(actor, |reply| FlowMsg::Sync {
        session_id: "repo".into(),
        payload: hello,
        reply
    })
    .unwrap();
    store.set_open(true);
    let heads_heard = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let frame = peer.rx.frames.recv().await.expect("queue open");
            let bytes = match frame.into_native() {
                NativeFrame::Binary(b) => b.to_vec(),
                NativeFrame::SharedBinary(b) => b.to_vec(),
                NativeFrame::Text(_) => continue,
            };
            let f = SyncFrame::decode(&bytes).unwrap();
            let m = automerge::sync::Message::decode(&f.payload).unwrap();
            if mine.iter().all(|h| m.heads.contains(h)) {
                return;
            }
        }
    })
    .await;
    assert!(
        heads_heard.is_ok(),
        "the peer never heard that the hub has its change"
    );
    registry.stop_all().await;
}

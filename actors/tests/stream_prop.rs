//! Change streaming through a real `FlowActor` (memory store and bus): random
//! interleavings of edits, joins, reconnects and deliveries, with outbound queues
//! small enough that peers lag and drop frames. Every replica and the store must end
//! with the same document, every editor's last write must be in it, and no change
//! frame may bring a peer a change it already had, nor may a sync message resend a
//! change that was streamed to it.
//!
//! Clients are simulated with the same sans-IO [`HubLink`] the Rust client uses; the
//! frames go through the actor's real outbound queues. Some cases use a store whose
//! appends take a millisecond, so edits pile up behind an append in flight (the flow
//! actor's pipelined persistence) while peers join, reconnect and lag.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use flowhub_actors::bus::{channel, Bus, FlowBusMessage, MemoryBus};
use flowhub_actors::flow::{FlowConfig, FlowDeps, FlowMsg, FlowRegistry};
use flowhub_actors::metrics::Metrics;
use flowhub_actors::session::{NativeFrame, OutFrame, Outbound, OutboundRx};
use flowhub_actors::store::{MemoryStore, Store, StoreError};
use flowhub_crdt::{
    change_frame_hashes, parse_heads, sync_message_hashes, ChangeHash, FlowDoc, HubLink, NewNode,
    Outgoing, Position,
};
use flowhub_protocol::{FrameKind, Role, ServerMessage, SyncFrame};
use proptest::prelude::*;
use ractor::ActorRef;
use support::{HookedStore, StoreHooks};

// The crdt tests' hostile-change builders (a change automerge panics on).
#[path = "../../crdt/tests/common/mod.rs"]
mod crdt_common;
mod support;

const FLOW: &str = "streamed";
const MAX_CLIENTS: usize = 4;

struct Sim {
    n: usize,
    generation: u32,
    session: String,
    doc: FlowDoc,
    link: HubLink,
    rx: OutboundRx,
    /// `flow_state` heads, until the document holds them all.
    catching_up: Option<Vec<ChangeHash>>,
    /// Changes streamed to this connection so far.
    streamed: HashSet<ChangeHash>,
    /// Changes a frame brought although this replica had them.
    duplicates: Vec<ChangeHash>,
    errors: Vec<String>,
    last_x: Option<f64>,
    frames: Counts,
    /// The hub no longer knows this session: reconnect before the next operation.
    closed: bool,
    stream: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    sync_in: usize,
    changes_in: usize,
    sync_out: usize,
    changes_out: usize,
    acks: usize,
}

/// Appends of a [`HookedStore`] with these hooks take this long.
struct AppendDelay(Duration);

#[async_trait::async_trait]
impl StoreHooks for AppendDelay {
    async fn before_append(&self) -> Result<(), StoreError> {
        tokio::time::sleep(self.0).await;
        Ok(())
    }
}

struct World {
    actor: ActorRef<FlowMsg>,
    store: Arc<MemoryStore>,
    /// The flow's bus, on which a test may publish as another hub node.
    bus: Arc<MemoryBus>,
    metrics: Arc<Metrics>,
    clients: Vec<Sim>,
    queue: usize,
    /// Clients subscribe with `stream` (otherwise: the sync protocol only).
    stream: bool,
    _registry: FlowRegistry,
}

async fn world(queue: usize, stream: bool) -> World {
    world_with_store_delay(queue, stream, Duration::ZERO).await
}

async fn world_with_store_delay(queue: usize, stream: bool, append_delay: Duration) -> World {
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(MemoryStore::new());
    let bus = Arc::new(MemoryBus::new());
    let registry = FlowRegistry::new(Arc::new(FlowDeps {
        store: Arc::new(HookedStore {
            inner: store.clone(),
            hooks: AppendDelay(append_delay),
        }),
        bus: bus.clone(),
        node_id: "prop-node".into(),
        metrics: metrics.clone(),
        config: FlowConfig {
            idle_eviction: Duration::from_secs(3600),
            // Lagging peers are resynced on the tick: keep the test quick.
            tick: Duration::from_millis(5),
            ..FlowConfig::default()
        },
    }));
    let actor = registry.get_or_spawn(FLOW).await.expect("flow actor");
    World {
        actor,
        store,
        bus,
        metrics,
        clients: Vec::new(),
        queue,
        stream,
        _registry: registry,
    }
}

impl World {
    async fn join(&mut self) {
        let n = self.clients.len();
        let (out, rx) = Outbound::new(self.queue, self.metrics.clone());
        let session = format!("c{n}-0");
        join_actor(&self.actor, &session, n, out, self.stream).await;
        self.clients.push(Sim {
            n,
            generation: 0,
            session,
            doc: FlowDoc::new(),
            link: HubLink::new(),
            rx,
            catching_up: None,
            streamed: HashSet::new(),
            duplicates: Vec::new(),
            errors: Vec::new(),
            last_x: None,
            frames: Counts::default(),
            closed: false,
            stream: self.stream,
        });
    }

    /// The connection drops (queued frames are lost) and the client subscribes again.
    async fn reconnect(&mut self, i: usize) {
        let c = &mut self.clients[i];
        self.actor
            .cast(FlowMsg::Leave {
                session_id: c.session.clone(),
            })
            .expect("leave");
        c.generation += 1;
        c.session = format!("c{}-{}", c.n, c.generation);
        let (out, rx) = Outbound::new(self.queue, self.metrics.clone());
        c.rx = rx;
        c.link.restart();
        c.catching_up = None;
        c.streamed.clear();
        join_actor(&self.actor, &c.session, c.n, out, self.stream).await;
    }

    /// A session the hub closed (its queue overflowed with acks it could not drop)
    /// reconnects, as real clients do.
    async fn reconnect_if_closed(&mut self, i: usize) {
        if self.clients[i].closed || self.clients[i].rx.close.borrow().is_some() {
            self.clients[i].closed = false;
            self.reconnect(i).await;
        }
    }

    async fn edit(&mut self, i: usize, x: u8) {
        self.reconnect_if_closed(i).await;
        let c = &mut self.clients[i];
        let before = c.doc.heads();
        let id = format!("n{}", c.n);
        let x = f64::from(x);
        if c.doc.node(&id).is_some() {
            c.doc.move_node(&id, Position::new(x, 0.0)).expect("move");
        } else {
            c.doc
                .add_node(NewNode::new("action", &id, Position::new(x, 0.0)).with_id(&id))
                .expect("add");
        }
        c.last_x = Some(x);
        let new: Vec<Vec<u8>> = c
            .doc
            .changes_since(&before)
            .into_iter()
            .map(|ch| ch.bytes)
            .collect();
        let outs = c.link.after_local_edit(&mut c.doc, &new);
        send_all(&self.actor, c, outs).await;
    }

    /// Delivers up to `max` queued frames to client `i`; returns how many.
    async fn deliver(&mut self, i: usize, max: usize) -> usize {
        self.reconnect_if_closed(i).await;
        let c = &mut self.clients[i];
        let mut delivered = 0;
        while delivered < max {
            let Ok(frame) = c.rx.frames.try_recv() else {
                break;
            };
            delivered += 1;
            let replies = c.receive(frame);
            send_all(&self.actor, c, replies).await;
            if c.closed {
                break;
            }
        }
        delivered
    }

    /// Delivers everything until the actor has nothing more to say for a while
    /// (lagging peers are resynced on its tick).
    async fn settle(&mut self) {
        let mut quiet = 0;
        for _ in 0..2000 {
            let mut delivered = 0;
            for i in 0..self.clients.len() {
                let was_closed =
                    self.clients[i].closed || self.clients[i].rx.close.borrow().is_some();
                delivered += self.deliver(i, usize::MAX).await + usize::from(was_closed);
            }
            if delivered == 0 {
                quiet += 1;
                if quiet >= 4 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(12)).await;
            } else {
                quiet = 0;
            }
        }
        panic!("the flow never went quiet");
    }
}

async fn join_actor(
    actor: &ActorRef<FlowMsg>,
    session: &str,
    n: usize,
    out: Outbound,
    stream: bool,
) {
    ractor::call!(actor, |reply| FlowMsg::Join {
        session_id: session.into(),
        user_id: format!("u{n}"),
        name: format!("U{n}"),
        token_role: Some(Role::Editor),
        role: Role::Editor,
        out,
        request_id: None,
        pending: Vec::new(),
        stream,
        on_invalid: flowhub_actors::flow::OnInvalid::Refuse,
        greet: true,
        reply
    })
    .expect("join");
}

async fn send_all(actor: &ActorRef<FlowMsg>, c: &mut Sim, outs: Vec<Outgoing>) {
    for out in outs {
        let session_id = c.session.clone();
        match &out {
            Outgoing::Sync(_) => c.frames.sync_out += 1,
            Outgoing::Changes(_) => c.frames.changes_out += 1,
        }
        if c.closed {
            return;
        }
        let answered = ractor::call!(actor, |reply| match out {
            Outgoing::Sync(payload) => FlowMsg::Sync {
                session_id,
                payload,
                reply,
            },
            Outgoing::Changes(payload) => FlowMsg::Changes {
                session_id,
                payload,
                reply,
            },
        })
        .expect("the actor answers");
        // `false`: the hub dropped the session (it closed it as too slow).
        c.closed |= !answered;
    }
}

impl Sim {
    fn receive(&mut self, frame: OutFrame) -> Vec<Outgoing> {
        let bytes: Vec<u8> = match frame.into_native() {
            NativeFrame::Text(text) => {
                match serde_json::from_str::<ServerMessage>(&text).expect("server message") {
                    ServerMessage::FlowState { heads, stream, .. } => {
                        assert_eq!(stream, self.stream, "the hub agrees to stream");
                        self.link.set_streaming(stream);
                        self.catching_up = Some(parse_heads(&heads).expect("heads"));
                    }
                    ServerMessage::Ack { .. } => self.frames.acks += 1,
                    ServerMessage::Error { message, .. } => self.errors.push(message),
                    _ => {}
                }
                self.check_caught_up();
                return Vec::new();
            }
            NativeFrame::Binary(bytes) => bytes,
            NativeFrame::SharedBinary(bytes) => bytes.to_vec(),
        };
        let frame = SyncFrame::decode(&bytes).expect("binary frame");
        let (_, replies) = match frame.kind {
            FrameKind::FlowSync => {
                self.frames.sync_in += 1;
                // The sync protocol never resends what was streamed. (Automerge's own
                // protocol can, rarely, send a change twice when messages cross after a
                // reconnect; that is not the streaming path and is left alone here.)
                for hash in sync_message_hashes(&frame.payload).expect("sync message") {
                    if self.streamed.contains(&hash) {
                        self.duplicates.push(hash);
                    }
                }
                self.link.receive_sync(&mut self.doc, &frame.payload)
            }
            FrameKind::FlowChanges => {
                self.frames.changes_in += 1;
                for hash in change_frame_hashes(&frame.payload).expect("change frame") {
                    if self.doc.has_change(&hash) || !self.streamed.insert(hash) {
                        self.duplicates.push(hash);
                    }
                }
                self.link.receive_changes(&mut self.doc, &frame.payload)
            }
        }
        .expect("the hub's frames apply");
        self.check_caught_up();
        replies
    }

    fn check_caught_up(&mut self) {
        if let Some(heads) = &self.catching_up {
            if heads.iter().all(|h| self.doc.has_change(h)) {
                self.catching_up = None;
                self.link.set_caught_up();
            }
        }
    }
}

async fn hub_heads(actor: &ActorRef<FlowMsg>) -> Vec<String> {
    ractor::call!(actor, FlowMsg::Heads).expect("heads")
}

async fn hub_json(actor: &ActorRef<FlowMsg>) -> serde_json::Value {
    let mut json = ractor::call!(actor, FlowMsg::ToJson).expect("json");
    json.as_object_mut().expect("object").remove("id");
    json
}

async fn stored_heads(store: &MemoryStore) -> Vec<String> {
    let stored = store.load_flow(FLOW).await.expect("stored flow");
    let changes: Vec<Vec<u8>> = stored.changes.into_iter().map(|c| c.bytes).collect();
    FlowDoc::load_parts(stored.snapshot.as_deref(), &changes)
        .expect("stored flow loads")
        .heads_hex()
}

/// Every replica, the actor and the store hold the same document, with every
/// client's last write, and nothing was streamed twice.
async fn assert_converged(w: &mut World) {
    let heads = hub_heads(&w.actor).await;
    let json = hub_json(&w.actor).await;
    assert_eq!(
        stored_heads(&w.store).await,
        heads,
        "the store has everything"
    );
    for c in &mut w.clients {
        assert!(
            c.errors.is_empty(),
            "client {} got errors: {:?}",
            c.n,
            c.errors
        );
        assert!(
            c.duplicates.is_empty(),
            "client {} was streamed changes it had: {:?}",
            c.n,
            c.duplicates
        );
        assert_eq!(c.doc.heads_hex(), heads, "client {} converged", c.n);
        assert_eq!(
            c.doc.to_json(),
            json,
            "client {} has the hub's document",
            c.n
        );
        if let Some(x) = c.last_x {
            let node = c.doc.node(&format!("n{}", c.n)).expect("own node");
            assert_eq!(node.position.x, x, "client {}'s last move survived", c.n);
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Edit { client: usize, x: u8 },
    Deliver { client: usize, frames: usize },
    Reconnect { client: usize },
    Join,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..MAX_CLIENTS, any::<u8>()).prop_map(|(client, x)| Op::Edit { client, x }),
        6 => (0..MAX_CLIENTS, 1usize..8).prop_map(|(client, frames)| Op::Deliver { client, frames }),
        1 => (0..MAX_CLIENTS).prop_map(|client| Op::Reconnect { client }),
        1 => Just(Op::Join),
    ]
}

async fn run(ops: Vec<Op>, queue: usize, stream: bool, append_delay: Duration) {
    let mut w = world_with_store_delay(queue, stream, append_delay).await;
    w.join().await;
    w.join().await;
    for op in ops {
        let count = w.clients.len();
        match op {
            Op::Edit { client, x } => w.edit(client % count, x).await,
            Op::Deliver { client, frames } => {
                w.deliver(client % count, frames).await;
            }
            Op::Reconnect { client } => w.reconnect(client % count).await,
            Op::Join if count < MAX_CLIENTS => w.join().await,
            Op::Join => {}
        }
    }
    w.settle().await;
    assert_converged(&mut w).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn streamed_peers_converge_without_duplicates(
        ops in prop::collection::vec(op(), 1..80),
        queue in prop_oneof![Just(3usize), Just(8), Just(256)],
        slow_store in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let delay = if slow_store { Duration::from_millis(1) } else { Duration::ZERO };
        runtime.block_on(run(ops, queue, true, delay));
    }

    /// The same with clients that never stream: the fallback path on its own.
    #[test]
    fn sync_only_peers_converge(
        ops in prop::collection::vec(op(), 1..60),
        queue in prop_oneof![Just(3usize), Just(256)],
        slow_store in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let delay = if slow_store { Duration::from_millis(1) } else { Duration::ZERO };
        runtime.block_on(run(ops, queue, false, delay));
    }
}

/// The point of streaming: once current, an edit costs one change frame per other
/// peer and one ack to its author, and nobody answers.
#[tokio::test]
async fn a_current_peers_edit_costs_one_frame_per_peer_and_no_replies() {
    let mut w = world(256, true).await;
    for _ in 0..3 {
        w.join().await;
    }
    for i in 0..3 {
        w.edit(i, 1).await;
    }
    w.settle().await;
    assert_converged(&mut w).await;
    let before: Vec<Counts> = w.clients.iter().map(|c| c.frames).collect();
    let streamed_before = w.metrics.frames_streamed.get();

    for round in 0..10u8 {
        w.edit(usize::from(round) % 3, round + 2).await;
        w.settle().await;
    }
    assert_converged(&mut w).await;

    for (i, (c, b)) in w.clients.iter().zip(before).enumerate() {
        let own = (0..10).filter(|r| r % 3 == i).count();
        assert_eq!(
            c.frames.changes_out - b.changes_out,
            own,
            "client {i} streamed its edits"
        );
        assert_eq!(
            c.frames.sync_out, b.sync_out,
            "client {i} sent no sync message"
        );
        assert_eq!(
            c.frames.acks - b.acks,
            own,
            "client {i} got one ack per edit"
        );
        assert_eq!(
            c.frames.changes_in - b.changes_in,
            10 - own,
            "client {i} got one frame per other edit"
        );
        assert_eq!(
            c.frames.sync_in, b.sync_in,
            "client {i} got no sync message"
        );
    }
    assert_eq!(
        w.metrics.frames_streamed.get() - streamed_before,
        20,
        "two peers per edit"
    );
}

/// A change frame whose dependency the hub lacks is not applied; the peer is put
/// back on the sync protocol, which brings both changes over.
#[tokio::test]
async fn a_change_frame_with_missing_dependencies_falls_back_to_sync() {
    let mut w = world(256, true).await;
    w.join().await;
    w.join().await;
    w.edit(0, 1).await;
    w.settle().await;
    // Client 0 edits twice but only the second change reaches the hub as a frame.
    let c = &mut w.clients[0];
    c.doc
        .move_node("n0", Position::new(2.0, 0.0))
        .expect("move");
    let skipped = c.doc.heads();
    c.doc
        .move_node("n0", Position::new(3.0, 0.0))
        .expect("move");
    c.last_x = Some(3.0);
    let second: Vec<u8> = c
        .doc
        .changes_since(&skipped)
        .into_iter()
        .flat_map(|ch| ch.bytes)
        .collect();
    send_all(&w.actor, c, vec![Outgoing::Changes(second)]).await;
    assert_eq!(w.metrics.stream_fallbacks.get(), 1);
    w.settle().await;
    assert_converged(&mut w).await;
    assert_eq!(
        hub_json(&w.actor).await["nodes"]["n0"]["position"]["x"],
        3.0
    );
}

/// Two streaming editors, each having moved its node once, converged.
async fn two_editors_converged() -> World {
    let mut w = world(256, true).await;
    w.join().await;
    w.join().await;
    w.edit(0, 1).await;
    w.edit(1, 2).await;
    w.settle().await;
    assert_converged(&mut w).await;
    w
}

/// After a failure: both editors move their nodes again, everyone converges, and
/// the hub holds both moves (nothing acknowledged was lost).
async fn edits_go_on_and_nothing_is_lost(w: &mut World) {
    w.edit(1, 3).await;
    w.edit(0, 4).await;
    w.settle().await;
    assert_converged(w).await;
    let json = hub_json(&w.actor).await;
    assert_eq!(json["nodes"]["n0"]["position"]["x"], 4.0);
    assert_eq!(json["nodes"]["n1"]["position"]["x"], 3.0);
}

/// A well-formed change that makes Automerge panic part-way through applying it
/// (its op targets an object that does not exist). The hub applies in place, so the
/// document is rebuilt from the store: the edit is refused, nothing is lost, and the
/// flow goes on.
#[tokio::test]
async fn a_change_automerge_panics_on_is_refused_and_the_flow_reloads_from_the_store() {
    let mut w = two_editors_converged().await;

    let heads = w.clients[0].doc.heads();
    let bad = crdt_common::change_on_missing_object(heads);
    let c = &mut w.clients[0];
    send_all(
        &w.actor,
        c,
        vec![Outgoing::Changes(bad.raw_bytes().to_vec())],
    )
    .await;
    w.deliver(0, usize::MAX).await;
    assert_eq!(w.clients[0].errors.len(), 1, "the edit was refused");
    w.clients[0].errors.clear();

    // Everything acknowledged is still there, and the flow takes edits again.
    edits_go_on_and_nothing_is_lost(&mut w).await;
}

/// Changes from another hub node that make Automerge panic part-way (a corrupt bus
/// message, or a bug on that node). The bus path applies in place too, so the flow
/// rebuilds its document from the store, and stays up: its sessions keep editing
/// and nothing acknowledged is lost.
#[tokio::test]
async fn a_bus_change_automerge_panics_on_leaves_the_flow_up() {
    let mut w = two_editors_converged().await;

    let bad = crdt_common::change_on_missing_object(w.clients[0].doc.heads());
    let message = FlowBusMessage::Changes {
        origin: "another-node".into(),
        changes: vec![bad.raw_bytes().to_vec()],
    };
    w.bus
        .publish(&channel::flow(FLOW), message.encode())
        .await
        .expect("publish");
    // The actor handles the bus message before this query.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let json = hub_json(&w.actor).await;
    assert_eq!(json["nodes"]["n0"]["position"]["x"], 1.0);

    edits_go_on_and_nothing_is_lost(&mut w).await;
}

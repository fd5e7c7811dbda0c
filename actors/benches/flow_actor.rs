//! The flow actor's hot path: apply one typed edit, store it, acknowledge it and fan
//! it out to 100 local peers (and, for reference, to one), in both modes: `sync` (the
//! edit arrives in a sync message and every peer gets its own sync round) and
//! `stream` (peers subscribed with `stream`: the edit arrives as a change frame and
//! the peers, all current, get one shared change frame).
//!
//! Setup: a `FlowRegistry` on `MemoryStore` and `MemoryBus`, one flow actor, one
//! editor and 100 peers joined with `Outbound::new` (as in `tests/registry.rs`), all
//! caught up through the sync protocol.
//!
//! Measured (`iter_custom`): from handing the actor the editor's message
//! (`FlowMsg::Sync` or `FlowMsg::Changes`) until every one of the peers' outbound
//! queues holds the frame with the change. Not measured: the peers then apply the frame and
//! answer (as real clients do), so that every iteration starts from the same steady
//! state, in which the actor's sync state for each peer knows what it has.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flowhub_actors::bus::MemoryBus;
use flowhub_actors::flow::{FlowConfig, FlowDeps, FlowMsg, FlowRegistry};
use flowhub_actors::metrics::Metrics;
use flowhub_actors::session::{NativeFrame, OutFrame, Outbound, OutboundRx};
use flowhub_actors::store::MemoryStore;
use flowhub_crdt::{FlowDoc, HubLink, NewNode, Outgoing, Position};
use flowhub_protocol::{FrameKind, Role, SyncFrame};
use ractor::ActorRef;
use tokio::sync::Mutex;

/// The fan-out the issue asks for, and one peer for reference.
const PEER_COUNTS: [usize; 2] = [1, 100];
const FLOW: &str = "bench";

struct Peer {
    id: String,
    rx: OutboundRx,
    doc: FlowDoc,
    link: HubLink,
}

struct Bench {
    actor: ActorRef<FlowMsg>,
    editor: Peer,
    peers: Vec<Peer>,
    seq: u64,
    _registry: FlowRegistry,
}

async fn join(
    actor: &ActorRef<FlowMsg>,
    id: &str,
    role: Role,
    metrics: &Arc<Metrics>,
    stream: bool,
) -> Peer {
    let (out, rx) = Outbound::new(4096, metrics.clone());
    ractor::call!(actor, |reply| FlowMsg::Join {
        session_id: id.into(),
        user_id: id.into(),
        name: id.into(),
        token_role: Some(role),
        role,
        out,
        request_id: None,
        pending: Vec::new(),
        stream,
        on_invalid: flowhub_actors::flow::OnInvalid::Refuse,
        greet: true,
        reply
    })
    .expect("join");
    let mut link = HubLink::new();
    link.set_streaming(stream);
    // An empty replica has nothing of its own the hub could lack.
    link.set_caught_up();
    Peer {
        id: id.into(),
        rx,
        doc: FlowDoc::new(),
        link,
    }
}

/// Applies one frame from the actor; returns the replies.
fn apply(peer: &mut Peer, frame: OutFrame) -> Vec<Outgoing> {
    let bytes: Vec<u8> = match frame.into_native() {
        NativeFrame::Binary(bytes) => bytes,
        NativeFrame::SharedBinary(bytes) => bytes.to_vec(),
        NativeFrame::Text(_) => return Vec::new(),
    };
    let frame = SyncFrame::decode(&bytes).expect("binary frame");
    let (_, replies) = match frame.kind {
        FrameKind::FlowSync => peer.link.receive_sync(&mut peer.doc, &frame.payload),
        FrameKind::FlowChanges => peer.link.receive_changes(&mut peer.doc, &frame.payload),
    }
    .expect("apply");
    replies
}

async fn send(actor: &ActorRef<FlowMsg>, id: &str, out: Outgoing) {
    ractor::call!(actor, |reply| match out {
        Outgoing::Sync(payload) => FlowMsg::Sync {
            session_id: id.into(),
            payload,
            reply,
        },
        Outgoing::Changes(payload) => FlowMsg::Changes {
            session_id: id.into(),
            payload,
            reply,
        },
    })
    .expect("send");
}

/// Applies every queued sync frame and sends the answers; returns whether anything
/// was sent to the actor.
async fn pump(actor: &ActorRef<FlowMsg>, peer: &mut Peer) -> bool {
    let mut replies = Vec::new();
    while let Ok(frame) = peer.rx.frames.try_recv() {
        replies.extend(apply(peer, frame));
    }
    replies.extend(peer.link.sync_messages(&mut peer.doc));
    let sent = !replies.is_empty();
    for out in replies {
        send(actor, &peer.id, out).await;
    }
    sent
}

/// Runs the sync protocol between the actor and everyone until it is quiet.
async fn settle(b: &mut Bench) {
    for _ in 0..50 {
        let mut busy = pump(&b.actor, &mut b.editor).await;
        for p in &mut b.peers {
            busy |= pump(&b.actor, p).await;
        }
        if !busy {
            // Let anything the actor still has in flight arrive, then check again.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let pending =
                b.peers.iter().any(|p| !p.rx.frames.is_empty()) || !b.editor.rx.frames.is_empty();
            if !pending {
                return;
            }
        }
    }
}

async fn setup(peer_count: usize, stream: bool) -> Bench {
    let metrics = Arc::new(Metrics::default());
    let registry = FlowRegistry::new(Arc::new(FlowDeps {
        store: Arc::new(MemoryStore::new()),
        bus: Arc::new(MemoryBus::new()),
        node_id: "bench-node".into(),
        metrics: metrics.clone(),
        config: FlowConfig {
            idle_eviction: Duration::from_secs(3600),
            ..FlowConfig::default()
        },
    }));
    let actor = registry.get_or_spawn(FLOW).await.expect("flow actor");
    let mut editor = join(&actor, "editor", Role::Editor, &metrics, stream).await;
    let mut peers = Vec::with_capacity(peer_count);
    for i in 0..peer_count {
        peers.push(join(&actor, &format!("peer-{i}"), Role::Editor, &metrics, stream).await);
    }
    editor
        .doc
        .add_node(NewNode::new("action", "moved", Position::new(0.0, 0.0)).with_id("n"))
        .expect("add node");
    let mut bench = Bench {
        actor,
        editor,
        peers,
        seq: 0,
        _registry: registry,
    };
    settle(&mut bench).await;
    assert!(
        bench.peers.iter().all(|p| p.doc.node("n").is_some()),
        "every peer caught up during setup"
    );
    bench
}

/// One measured edit: the time until all peers' queues hold the change.
async fn one_edit(b: &mut Bench) -> Duration {
    b.seq += 1;
    let before = b.editor.doc.heads();
    b.editor
        .doc
        .move_node("n", Position::new(b.seq as f64, 0.0))
        .expect("move");
    let new: Vec<Vec<u8>> = b
        .editor
        .doc
        .changes_since(&before)
        .into_iter()
        .map(|c| c.bytes)
        .collect();
    let mut outgoing = b.editor.link.after_local_edit(&mut b.editor.doc, &new);
    assert_eq!(outgoing.len(), 1, "one message carries the edit");
    let out = outgoing.pop().expect("a message with the edit");
    let started = Instant::now();
    send(&b.actor, "editor", out).await;
    let mut received = Vec::with_capacity(b.peers.len());
    for p in &mut b.peers {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), p.rx.frames.recv()).await {
                Ok(Some(OutFrame::Message(_))) => {}
                Ok(Some(frame)) => {
                    received.push(frame);
                    break;
                }
                Ok(None) | Err(_) => panic!("peer {} got no frame", p.id),
            }
        }
    }
    let elapsed = started.elapsed();
    // Untimed: the peers apply the frame and answer (if the protocol wants an
    // answer), as clients do.
    for (p, frame) in b.peers.iter_mut().zip(received) {
        let replies = apply(p, frame);
        for out in replies {
            send(&b.actor, &p.id, out).await;
        }
    }
    settle(b).await;
    elapsed
}

fn fan_out(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("flow_actor");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    for (peers, stream) in PEER_COUNTS
        .into_iter()
        .flat_map(|n| [(n, false), (n, true)])
    {
        let bench = Arc::new(Mutex::new(runtime.block_on(setup(peers, stream))));
        let mode = if stream { "stream" } else { "sync" };
        group.bench_function(format!("{mode}_one_edit_fan_out_{peers}_peers"), |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let bench = bench.clone();
                async move {
                    let mut bench = bench.lock().await;
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += one_edit(&mut bench).await;
                    }
                    total
                }
            })
        });
        let last = runtime.block_on(async {
            let b = bench.lock().await;
            b.peers.last().and_then(|p| p.doc.node("n"))
        });
        assert!(last.is_some_and(|n| n.position.x > 0.0), "peers kept up");
    }
    group.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);

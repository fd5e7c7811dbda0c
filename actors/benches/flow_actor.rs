//! The flow actor's hot path: apply one sync message carrying one typed edit, store
//! it, acknowledge it and fan it out to 100 local peers (and, for reference, to one).
//!
//! Setup: a `FlowRegistry` on `MemoryStore` and `MemoryBus`, one flow actor, one
//! editor and 100 peers joined with `Outbound::new` (as in `tests/registry.rs`), all
//! caught up through the sync protocol.
//!
//! Measured (`iter_custom`): from handing the actor the editor's sync message
//! (`FlowMsg::Sync`) until every one of the 100 peers' outbound queues holds the
//! sync frame with the change. Not measured: the peers then apply the frame and
//! answer (as real clients do), so that every iteration starts from the same steady
//! state, in which the actor's sync state for each peer knows what it has.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flowhub_actors::bus::MemoryBus;
use flowhub_actors::flow::{FlowConfig, FlowDeps, FlowMsg, FlowRegistry};
use flowhub_actors::metrics::Metrics;
use flowhub_actors::session::{OutFrame, Outbound, OutboundRx};
use flowhub_actors::store::MemoryStore;
use flowhub_crdt::{FlowDoc, NewNode, Position, SyncState};
use flowhub_protocol::{Role, SyncFrame};
use ractor::ActorRef;
use tokio::sync::Mutex;

/// The fan-out the issue asks for, and one peer for reference.
const PEER_COUNTS: [usize; 2] = [1, 100];
const FLOW: &str = "bench";

struct Peer {
    id: String,
    rx: OutboundRx,
    doc: FlowDoc,
    sync: SyncState,
}

struct Bench {
    actor: ActorRef<FlowMsg>,
    editor: Peer,
    peers: Vec<Peer>,
    seq: u64,
    _registry: FlowRegistry,
}

async fn join(actor: &ActorRef<FlowMsg>, id: &str, role: Role, metrics: &Arc<Metrics>) -> Peer {
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
        reply
    })
    .expect("join");
    Peer {
        id: id.into(),
        rx,
        doc: FlowDoc::new(),
        sync: SyncState::new(),
    }
}

/// Applies every queued sync frame and sends the answers; returns whether anything
/// was sent to the actor.
async fn pump(actor: &ActorRef<FlowMsg>, peer: &mut Peer) -> bool {
    let mut sent = false;
    while let Ok(frame) = peer.rx.frames.try_recv() {
        if let OutFrame::Binary(bytes) = frame {
            let frame = SyncFrame::decode(&bytes).expect("sync frame");
            peer.doc
                .receive_sync_message(&mut peer.sync, &frame.payload)
                .expect("apply");
        }
    }
    while let Some(msg) = peer.doc.generate_sync_message(&mut peer.sync) {
        ractor::call!(actor, |reply| FlowMsg::Sync {
            session_id: peer.id.clone(),
            payload: msg,
            reply
        })
        .expect("sync");
        sent = true;
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

async fn setup(peer_count: usize) -> Bench {
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
    let mut editor = join(&actor, "editor", Role::Editor, &metrics).await;
    let mut peers = Vec::with_capacity(peer_count);
    for i in 0..peer_count {
        peers.push(join(&actor, &format!("peer-{i}"), Role::Editor, &metrics).await);
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
    b.editor
        .doc
        .move_node("n", Position::new(b.seq as f64, 0.0))
        .expect("move");
    let msg = b
        .editor
        .doc
        .generate_sync_message(&mut b.editor.sync)
        .expect("a sync message with the edit");
    let started = Instant::now();
    ractor::call!(b.actor, |reply| FlowMsg::Sync {
        session_id: "editor".into(),
        payload: msg,
        reply
    })
    .expect("sync");
    let mut received = Vec::with_capacity(b.peers.len());
    for p in &mut b.peers {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), p.rx.frames.recv()).await {
                Ok(Some(OutFrame::Binary(bytes))) => {
                    received.push(bytes);
                    break;
                }
                Ok(Some(OutFrame::Text(_))) => {}
                Ok(None) | Err(_) => panic!("peer {} got no sync frame", p.id),
            }
        }
    }
    let elapsed = started.elapsed();
    // Untimed: the peers apply the frame and answer, as clients do.
    for (p, bytes) in b.peers.iter_mut().zip(received) {
        let frame = SyncFrame::decode(&bytes).expect("sync frame");
        p.doc
            .receive_sync_message(&mut p.sync, &frame.payload)
            .expect("apply");
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
    for peers in PEER_COUNTS {
        let bench = Arc::new(Mutex::new(runtime.block_on(setup(peers))));
        group.bench_function(format!("sync_one_edit_fan_out_{peers}_peers"), |b| {
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

//! FlowDoc benchmarks: typed edit throughput (single and batched) against the
//! bare-Automerge floor, merging, persistence, read views, validation and the
//! hub's validated sync receive.
//!
//! Quick run: `cargo bench -p flowhub-crdt -- --warm-up-time 1 --measurement-time 2`
//!
//! `floor/*` does the very same Automerge ops as the typed edit of the same
//! name with no lookups or checks at all, so `typed_edits/X ÷ floor/X` is the
//! overhead FlowDoc adds. `floor/move_node_unbatched` is a move as three
//! plain calls (what FlowDoc did before batching the position map) and
//! `floor/move_as_one_scalar` what a move would cost if a position were one
//! scalar (not the document format). `batch/*` reports throughput per typed
//! edit; `apply/*` compares ways to apply one received change.
//!
//! Wall times here swing with machine load; for repeatable numbers count
//! instructions with `examples/edit_instructions.rs` under callgrind.

use std::hint::black_box;

use automerge::transaction::Transactable;
use std::collections::HashMap;

use automerge::sync::SyncDoc;
use automerge::{
    hydrate, AutoCommit, Change, ObjId, ObjType, PatchLog, ReadDoc, ScalarValue, ROOT,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use flowhub_crdt::{Endpoint, FlowDoc, NewNode, Position, SyncState};

/// A flow with `n` nodes chained by `n - 1` edges plus a few config keys each.
fn big_flow(n: usize) -> FlowDoc {
    let mut doc = FlowDoc::new();
    let mut prev: Option<String> = None;
    for i in 0..n {
        let node = NewNode::new(
            "http",
            format!("step {i}"),
            Position::new(i as f64 * 10.0, 0.0),
        )
        .with_id(format!("n{i}"))
        .config_entry("url", serde_json::json!(format!("https://example.com/{i}")))
        .config_entry("retry", serde_json::json!({"max": 3, "backoff": [1, 2, 4]}));
        let (id, _) = doc.add_node(node).expect("add node");
        if let Some(p) = prev {
            doc.connect(
                None,
                Endpoint::new(p, "out"),
                Endpoint::new(id.clone(), "in"),
            )
            .expect("connect");
        }
        prev = Some(id);
    }
    doc
}

/// The map node `id` of a flow's `nodes`.
fn node_obj(doc: &AutoCommit, id: &str) -> ObjId {
    let nodes = doc.get(ROOT, "nodes").expect("get").expect("nodes").1;
    doc.get(&nodes, id).expect("get").expect("node").1
}

/// A `position` map `{x, y}` for `batch_create_object`.
fn position_value(x: f64, y: f64) -> hydrate::Value {
    hydrate::Value::from(HashMap::from([
        ("x", hydrate::Value::from(x)),
        ("y", hydrate::Value::from(y)),
    ]))
}

/// Run the sync protocol between two docs until neither has anything to say.
fn sync_pair(a: &mut FlowDoc, b: &mut FlowDoc) {
    let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
    loop {
        let ab = a.generate_sync_message(&mut sa);
        if let Some(m) = &ab {
            b.receive_sync_message(&mut sb, m).expect("receive");
        }
        let ba = b.generate_sync_message(&mut sb);
        if let Some(m) = &ba {
            a.receive_sync_message(&mut sa, m).expect("receive");
        }
        if ab.is_none() && ba.is_none() {
            break;
        }
    }
}

fn typed_edits(c: &mut Criterion) {
    let mut group = c.benchmark_group("typed_edits");
    group.throughput(Throughput::Elements(1));
    group.bench_function("add_node", |b| {
        let mut doc = FlowDoc::new();
        b.iter(|| {
            doc.add_node(NewNode::new("action", "a", Position::new(1.0, 2.0)))
                .expect("add")
        })
    });
    group.bench_function("move_node", |b| {
        let mut doc = big_flow(100);
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            doc.move_node("n50", Position::new(i as f64, 1.0))
                .expect("move")
        })
    });
    group.bench_function("relabel_node", |b| {
        let mut doc = big_flow(100);
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            doc.relabel_node("n50", if i & 1 == 0 { "even" } else { "odd" })
                .expect("relabel")
        })
    });
    group.finish();
}

/// The bare-Automerge cost of each typed edit: the same ops and one commit,
/// without lookups, checks or id generation.
fn floor(c: &mut Criterion) {
    let mut group = c.benchmark_group("floor");
    group.throughput(Throughput::Elements(1));
    group.bench_function("put_commit", |b| {
        let mut doc = AutoCommit::new();
        let mut i = 0i64;
        b.iter(|| {
            i += 1;
            doc.put(ROOT, "k", i).expect("put");
            doc.commit()
        })
    });
    group.bench_function("add_node", |b| {
        let mut flow = FlowDoc::new();
        let doc = flow.doc_mut();
        let nodes = match doc.get(ROOT, "nodes").expect("get") {
            Some((_, id)) => id,
            None => panic!("no nodes map"),
        };
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let obj = doc
                .put_object(&nodes, format!("n{i}"), ObjType::Map)
                .expect("put");
            doc.put(&obj, "kind", "action").expect("put");
            doc.put(&obj, "label", "a").expect("put");
            let pos = doc.put_object(&obj, "position", ObjType::Map).expect("put");
            doc.put(&pos, "x", 1.0).expect("put");
            doc.put(&pos, "y", 2.0).expect("put");
            doc.put_object(&obj, "config", ObjType::Map).expect("put");
            doc.commit()
        })
    });
    group.bench_function("move_node", |b| {
        // The calls FlowDoc makes: the new position map and its two entries
        // via `batch_create_object` (two op-set splices).
        let mut flow = big_flow(100);
        let doc = flow.doc_mut();
        let node = node_obj(doc, "n50");
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            doc.batch_create_object(&node, "position", &position_value(i as f64, 1.0), false)
                .expect("put");
            doc.commit()
        })
    });
    group.bench_function("move_node_unbatched", |b| {
        // The same three ops as three calls (three splices): what a move cost
        // before FlowDoc batched it, and what a plain Automerge client pays.
        let mut flow = big_flow(100);
        let doc = flow.doc_mut();
        let node = node_obj(doc, "n50");
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let pos = doc
                .put_object(&node, "position", ObjType::Map)
                .expect("put");
            doc.put(&pos, "x", i as f64).expect("put");
            doc.put(&pos, "y", 1.0).expect("put");
            doc.commit()
        })
    });
    group.bench_function("move_as_one_scalar", |b| {
        // A hypothetical format that stores a position as one scalar (16
        // bytes: x then y as little-endian f64), so that a move is one put.
        // Not the document format: the cost such a format would have.
        let mut flow = big_flow(100);
        let doc = flow.doc_mut();
        let node = node_obj(doc, "n50");
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let mut xy = Vec::with_capacity(16);
            xy.extend_from_slice(&(i as f64).to_le_bytes());
            xy.extend_from_slice(&1.0f64.to_le_bytes());
            doc.put(&node, "position", ScalarValue::Bytes(xy))
                .expect("put");
            doc.commit()
        })
    });
    group.finish();
}

/// Many typed edits committed as one change ([`FlowDoc::batch`]); throughput
/// is per typed edit.
fn batched_edits(c: &mut Criterion) {
    const N: u64 = 100;
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(N));
    group.bench_function("drag_100_moves_one_node", |b| {
        let mut doc = big_flow(100);
        let mut i = 0u64;
        b.iter(|| {
            doc.batch(|tx| {
                for _ in 0..N {
                    i += 1;
                    tx.move_node("n50", Position::new(i as f64, 1.0))?;
                }
                Ok(())
            })
            .expect("batch")
        })
    });
    group.bench_function("move_100_nodes", |b| {
        let mut doc = big_flow(100);
        let ids: Vec<String> = (0..N).map(|i| format!("n{i}")).collect();
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            doc.batch(|tx| {
                for id in &ids {
                    tx.move_node(id, Position::new(i as f64, 1.0))?;
                }
                Ok(())
            })
            .expect("batch")
        })
    });
    group.bench_function("floor_move_100_nodes", |b| {
        // The bare Automerge ops of `move_100_nodes`, for comparison.
        let mut flow = big_flow(100);
        let doc = flow.doc_mut();
        let nodes = doc.get(ROOT, "nodes").expect("get").expect("nodes").1;
        let objs: Vec<_> = (0..N)
            .map(|i| {
                doc.get(&nodes, format!("n{i}"))
                    .expect("get")
                    .expect("node")
                    .1
            })
            .collect();
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let value = position_value(i as f64, 1.0);
            for node in &objs {
                doc.batch_create_object(node, "position", &value, false)
                    .expect("put");
            }
            doc.commit()
        })
    });
    group.bench_function("add_100_nodes", |b| {
        let mut doc = FlowDoc::new();
        b.iter(|| {
            doc.batch(|tx| {
                for _ in 0..N {
                    tx.add_node(NewNode::new("action", "a", Position::new(1.0, 2.0)))?;
                }
                Ok(())
            })
            .expect("batch")
        })
    });
    group.finish();
}

/// The hub applying one received change (a peer's move) with patches
/// recorded, as its validated receives need them, three ways: through a sync
/// message (what `receive_changes_validated` does), `load_incremental` of the
/// change's bytes, and `apply_changes` of the already parsed change (the last
/// two record patches through the diff cursor, the only way `AutoCommit`
/// offers to record them for those calls).
fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    let mut hub = big_flow(100);
    let mut peer = hub.fork();
    peer.move_node("n50", Position::new(5.0, 5.0))
        .expect("move");
    let change: Change = peer.doc_mut().get_last_local_change().expect("change");
    let base = hub.doc_mut().clone();
    let setup = || (base.clone(), change.clone());
    group.bench_function("one_change_sync_message", |b| {
        b.iter_batched(
            setup,
            |(mut doc, change)| {
                let message = automerge::sync::Message {
                    heads: Vec::new(),
                    need: Vec::new(),
                    have: Vec::new(),
                    changes: vec![change.raw_bytes().to_vec()].into(),
                    flags: None,
                    version: automerge::sync::MessageVersion::V1,
                };
                let mut log = PatchLog::active();
                let mut state = automerge::sync::State::new();
                doc.sync()
                    .receive_sync_message_log_patches(&mut state, message, &mut log)
                    .expect("apply");
                black_box(doc.make_patches(&mut log));
                doc
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("one_change_load_incremental", |b| {
        b.iter_batched(
            setup,
            |(mut doc, change)| {
                doc.update_diff_cursor();
                doc.load_incremental(change.raw_bytes()).expect("apply");
                black_box(doc.diff_incremental());
                doc.reset_diff_cursor();
                doc
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("one_change_apply_changes", |b| {
        b.iter_batched(
            setup,
            |(mut doc, change)| {
                doc.update_diff_cursor();
                doc.apply_changes([change]).expect("apply");
                black_box(doc.diff_incremental());
                doc.reset_diff_cursor();
                doc
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn merge(c: &mut Criterion) {
    c.bench_function("merge/2x100_concurrent_edits", |b| {
        b.iter_batched(
            || {
                let mut base = big_flow(50);
                let mut left = base.fork();
                let mut right = base.fork();
                for i in 0..100 {
                    let n = format!("n{}", i % 50);
                    left.move_node(&n, Position::new(i as f64, 0.0))
                        .expect("move");
                    right.relabel_node(&n, &format!("r{i}")).expect("relabel");
                }
                let changes: Vec<Vec<u8>> = right
                    .changes_since(&base.heads())
                    .into_iter()
                    .map(|c| c.bytes)
                    .collect();
                (left, changes)
            },
            |(mut left, changes)| black_box(left.apply_changes(&changes).expect("apply")),
            BatchSize::SmallInput,
        )
    });
}

fn persistence(c: &mut Criterion) {
    let mut doc = big_flow(1000);
    let bytes = doc.save();
    let mut group = c.benchmark_group("flow_1000_nodes");
    group.sample_size(20);
    group.bench_function("save", |b| b.iter(|| black_box(doc.save())));
    group.bench_function("load", |b| {
        b.iter(|| black_box(FlowDoc::load(&bytes).expect("load")))
    });
    group.bench_function("validate", |b| b.iter(|| doc.validate().expect("valid")));
    group.bench_function("snapshot", |b| b.iter(|| black_box(doc.snapshot())));
    group.bench_function("to_json", |b| b.iter(|| black_box(doc.to_json())));
    group.bench_function("node", |b| b.iter(|| black_box(doc.node("n500"))));

    // A run recorded half-way through the edits below.
    let mut history = big_flow(1000);
    let run_heads = history.heads();
    for i in 0..200 {
        history
            .move_node(&format!("n{i}"), Position::new(-1.0, -1.0))
            .expect("move");
    }
    group.bench_function("to_json_at_older_heads", |b| {
        b.iter(|| black_box(history.to_json_at(&run_heads).expect("to_json_at")))
    });
    group.bench_function("at_heads_fork", |b| {
        b.iter(|| black_box(history.at_heads(&run_heads).expect("at_heads")))
    });
    group.bench_function("clone_automerge", |b| {
        b.iter(|| black_box(doc.doc().clone()))
    });

    // One peer makes a single edit; the hub receives it with validation.
    let mut peer = FlowDoc::load(&bytes).expect("load");
    let mut hub = FlowDoc::load(&bytes).expect("load");
    sync_pair(&mut peer, &mut hub);
    let mut setup = || {
        let mut hub = hub.fork();
        let mut peer = peer.fork();
        // Settle both sync states first so the measured message is the
        // steady-state one carrying just the new change.
        let (mut sp, mut sh) = (SyncState::new(), SyncState::new());
        loop {
            let a = peer.generate_sync_message(&mut sp);
            if let Some(m) = &a {
                hub.receive_sync_message(&mut sh, m).expect("receive");
            }
            let b = hub.generate_sync_message(&mut sh);
            if let Some(m) = &b {
                peer.receive_sync_message(&mut sp, m).expect("receive");
            }
            if a.is_none() && b.is_none() {
                break;
            }
        }
        peer.move_node("n500", Position::new(5.0, 5.0))
            .expect("move");
        let msg = peer.generate_sync_message(&mut sp).expect("message");
        (hub, sh, msg)
    };
    group.bench_function("receive_sync_message_validated_single_edit", |b| {
        b.iter_batched(
            &mut setup,
            |(mut hub, mut sh, msg)| {
                let applied = hub
                    .receive_sync_message_validated(&mut sh, &msg)
                    .expect("valid");
                assert_eq!(applied.changes.len(), 1);
                black_box(applied)
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("receive_sync_message_single_edit", |b| {
        b.iter_batched(
            &mut setup,
            |(mut hub, mut sh, msg)| {
                black_box(hub.receive_sync_message(&mut sh, &msg).expect("receive"))
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(
    benches,
    typed_edits,
    floor,
    batched_edits,
    apply,
    merge,
    persistence
);
criterion_main!(benches);

//! FlowDoc benchmarks: typed edit throughput, merging, persistence, validation
//! and the hub's validated sync receive.
//!
//! Quick run: `cargo bench -p flowhub-crdt -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

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

criterion_group!(benches, typed_edits, merge, persistence);
criterion_main!(benches);

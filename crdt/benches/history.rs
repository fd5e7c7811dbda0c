//! History benchmarks on a flow with 10,000 changes: listing the newest 50
//! change summaries, and the diff between the first and the last heads.
//!
//! Run: `cargo bench -p flowhub-crdt --bench history -- --quick`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use flowhub_crdt::{genesis_hash, Endpoint, FlowDoc, NewNode, Position};
use serde_json::json;

const CHANGES: usize = 10_000;
const NODES: usize = 200;

/// 200 node adds, 199 connects, then moves, relabels and config edits
/// cycling over the nodes until the flow has 10,000 changes (genesis included).
fn long_history() -> FlowDoc {
    let mut doc = FlowDoc::new();
    for i in 0..NODES {
        let node = NewNode::new("http", format!("step {i}"), Position::new(i as f64, 0.0))
            .with_id(format!("n{i}"))
            .config_entry("url", json!(format!("https://example.com/{i}")));
        doc.add_node(node).expect("add");
        if i > 0 {
            doc.connect(
                None,
                Endpoint::new(format!("n{}", i - 1), "out"),
                Endpoint::new(format!("n{i}"), "in"),
            )
            .expect("connect");
        }
    }
    let mut i = 0usize;
    while doc.all_changes().len() < CHANGES {
        // `all_changes` is costly; check it only every 500 edits.
        for _ in 0..500 {
            let id = format!("n{}", i % NODES);
            match i % 3 {
                0 => doc.move_node(&id, Position::new(i as f64, 1.0)).map(drop),
                1 => doc.relabel_node(&id, &format!("step {i}")).map(drop),
                _ => doc.configure_node(&id, "retries", json!(i)).map(drop),
            }
            .expect("edit");
            i += 1;
        }
    }
    doc
}

fn history(c: &mut Criterion) {
    let mut doc = long_history();
    let first = vec![genesis_hash()];
    let last = doc.heads();
    let mut group = c.benchmark_group("history_10k_changes");
    group.sample_size(10);
    group.bench_function("change_summaries_50", |b| {
        b.iter(|| black_box(doc.change_summaries(50, None).expect("summaries")))
    });
    // One summary: mostly the walk over all change metadata.
    group.bench_function("change_summaries_1", |b| {
        b.iter(|| black_box(doc.change_summaries(1, None).expect("summaries")))
    });
    group.bench_function("diff_first_to_last", |b| {
        b.iter(|| black_box(doc.diff(&first, &last).expect("diff")))
    });
    group.bench_function("snapshot_at_last", |b| {
        b.iter(|| black_box(doc.snapshot_at(&last).expect("snapshot")))
    });
    group.finish();
}

criterion_group!(benches, history);
criterion_main!(benches);

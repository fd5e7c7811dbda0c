//! Repeatable cost of single edits, for instruction counting: criterion's wall
//! times swing by 2× on a busy machine, instruction counts do not.
//!
//! ```text
//! cargo build --release -p flowhub-crdt --example edit_instructions
//! valgrind --tool=callgrind --toggle-collect='*measured*' \
//!     target/release/examples/edit_instructions move_node 1000
//! ```
//!
//! Each case sets up its document outside `measured`, then runs `measured`
//! once with `n` edits (one change each): instructions ÷ `n` is the cost of
//! one edit. The cases mirror the `typed_edits` / `floor` benchmarks.

use std::hint::black_box;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ReadDoc, ROOT};
use flowhub_crdt::{Endpoint, FlowDoc, NewNode, Position};

/// The `big_flow` of the benchmarks: `n` chained nodes with some config.
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

#[inline(never)]
fn measured(n: u64, mut edit: impl FnMut(u64)) {
    for i in 1..=n {
        edit(i);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_else(|| "move_node".into());
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    match case.as_str() {
        "move_node" => {
            let mut doc = big_flow(100);
            measured(n, |i| {
                black_box(
                    doc.move_node("n50", Position::new(i as f64, 1.0))
                        .expect("move"),
                );
            });
        }
        "floor_move_node" => {
            let mut flow = big_flow(100);
            let doc = flow.doc_mut();
            let nodes = doc.get(ROOT, "nodes").expect("get").expect("nodes").1;
            let node = doc.get(&nodes, "n50").expect("get").expect("n50").1;
            measured(n, |i| {
                let pos = doc
                    .put_object(&node, "position", ObjType::Map)
                    .expect("put");
                doc.put(&pos, "x", i as f64).expect("put");
                doc.put(&pos, "y", 1.0).expect("put");
                black_box(doc.commit());
            });
        }
        "floor_move_node_batch" => {
            // The same ops as `floor_move_node`, the new position map written
            // with automerge's `batch_create_object`.
            let mut flow = big_flow(100);
            let doc = flow.doc_mut();
            let nodes = doc.get(ROOT, "nodes").expect("get").expect("nodes").1;
            let node = doc.get(&nodes, "n50").expect("get").expect("n50").1;
            measured(n, |i| {
                let mut map = std::collections::HashMap::new();
                map.insert("x", automerge::hydrate::Value::from(i as f64));
                map.insert("y", automerge::hydrate::Value::from(1.0));
                let value = automerge::hydrate::Value::from(map);
                doc.batch_create_object(&node, "position", &value, false)
                    .expect("put");
                black_box(doc.commit());
            });
        }
        "floor_put_commit" => {
            let mut doc = AutoCommit::new();
            measured(n, |i| {
                doc.put(ROOT, "k", i as i64).expect("put");
                black_box(doc.commit());
            });
        }
        "floor_put_commit_big" => {
            // One put + commit into the same 100-node flow the moves edit.
            let mut flow = big_flow(100);
            let doc = flow.doc_mut();
            let nodes = doc.get(ROOT, "nodes").expect("get").expect("nodes").1;
            let node = doc.get(&nodes, "n50").expect("get").expect("n50").1;
            measured(n, |i| {
                doc.put(&node, "label", i as i64).expect("put");
                black_box(doc.commit());
            });
        }
        "relabel_node" => {
            let mut doc = big_flow(100);
            measured(n, |i| {
                black_box(
                    doc.relabel_node("n50", if i & 1 == 0 { "even" } else { "odd" })
                        .expect("relabel"),
                );
            });
        }
        other => {
            eprintln!("unknown case {other}");
            std::process::exit(2);
        }
    }
}

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

use automerge::sync::SyncDoc;
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

/// A flow of `FLOW_NODES` nodes (default 100) and `n` moves of its middle node
/// made on a fork of it, one change each.
fn peer_moves(n: u64) -> (FlowDoc, Vec<automerge::Change>) {
    let nodes: usize = std::env::var("FLOW_NODES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let mut hub = big_flow(nodes);
    let mut peer = hub.fork();
    let moved = format!("n{}", nodes / 2);
    let changes = (1..=n)
        .map(|i| {
            peer.move_node(&moved, Position::new(i as f64, 2.0))
                .expect("move");
            peer.doc_mut().get_last_local_change().expect("change")
        })
        .collect();
    (hub, changes)
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
        "floor_move_as_one_scalar" => {
            // A hypothetical one-scalar position (16 bytes, x then y as LE f64).
            let mut flow = big_flow(100);
            let doc = flow.doc_mut();
            let nodes = doc.get(ROOT, "nodes").expect("get").expect("nodes").1;
            let node = doc.get(&nodes, "n50").expect("get").expect("n50").1;
            measured(n, |i| {
                let mut xy = Vec::with_capacity(16);
                xy.extend_from_slice(&(i as f64).to_le_bytes());
                xy.extend_from_slice(&1.0f64.to_le_bytes());
                doc.put(&node, "position", automerge::ScalarValue::Bytes(xy))
                    .expect("put");
                black_box(doc.commit());
            });
        }
        "add_node" => {
            let mut doc = big_flow(100);
            measured(n, |_| {
                black_box(
                    doc.add_node(NewNode::new("action", "a", Position::new(1.0, 2.0)))
                        .expect("add"),
                );
            });
        }
        "floor_add_node_batch" => {
            // A whole node in one `batch_create_object` (two splices); the ops
            // come out in another order than FlowDoc's add writes them.
            use automerge::hydrate::Value as H;
            let mut flow = big_flow(100);
            let doc = flow.doc_mut();
            let nodes = doc.get(ROOT, "nodes").expect("get").expect("nodes").1;
            measured(n, |i| {
                let position = H::from(std::collections::HashMap::from([
                    ("x", H::from(1.0)),
                    ("y", H::from(2.0)),
                ]));
                let node = H::from(std::collections::HashMap::from([
                    ("kind", H::from("action")),
                    ("label", H::from("a")),
                    ("position", position),
                    ("config", H::map()),
                ]));
                doc.batch_create_object(&nodes, format!("x{i}"), &node, false)
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
        // The hub's whole receive of a peer's change frame (decode, apply in
        // place, validate what it touched), n moves of one node in a row: compare
        // n = 200 with n = 2000 to see whether an edit's cost grows with the
        // node's history.
        "receive_changes_validated" => {
            let (mut hub, changes) = peer_moves(n);
            hub.validate_in_place(true);
            let mut i = 0;
            measured(n, |_| {
                let bytes = changes[i].raw_bytes().to_vec();
                i += 1;
                black_box(hub.receive_changes_validated(&bytes).expect("apply"));
            });
        }
        // Applying one received change (a peer's move) with patches recorded,
        // n times in a row, the ways the hub could.
        "apply_sync_message" | "apply_load_incremental" | "apply_changes_diff" => {
            let (mut hub, changes) = peer_moves(n);
            let doc = hub.doc_mut();
            let mut i = 0;
            measured(n, |_| {
                let change = changes[i].clone();
                i += 1;
                let patches = match case.as_str() {
                    "apply_sync_message" => {
                        // What `receive_changes_validated` does today.
                        let message = automerge::sync::Message {
                            heads: Vec::new(),
                            need: Vec::new(),
                            have: Vec::new(),
                            changes: vec![change.raw_bytes().to_vec()].into(),
                            flags: None,
                            version: automerge::sync::MessageVersion::V1,
                        };
                        let mut log = automerge::PatchLog::active();
                        let mut state = automerge::sync::State::new();
                        doc.sync()
                            .receive_sync_message_log_patches(&mut state, message, &mut log)
                            .expect("apply");
                        doc.make_patches(&mut log)
                    }
                    "apply_load_incremental" => {
                        doc.update_diff_cursor();
                        doc.load_incremental(change.raw_bytes()).expect("apply");
                        let patches = doc.diff_incremental();
                        doc.reset_diff_cursor();
                        patches
                    }
                    _ => {
                        doc.update_diff_cursor();
                        doc.apply_changes([change]).expect("apply");
                        let patches = doc.diff_incremental();
                        doc.reset_diff_cursor();
                        patches
                    }
                };
                assert!(!patches.is_empty(), "no patches");
                black_box(patches);
            });
        }
        other => {
            eprintln!("unknown case {other}");
            std::process::exit(2);
        }
    }
}

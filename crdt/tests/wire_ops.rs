//! Typed edits write exactly the Automerge ops of the plain call sequence the
//! document format is defined by (e.g. a move: `put_object(node, "position",
//! Map)`, `put(x)`, `put(y)`). Stock automerge-repo peers and the TypeScript
//! client write and read these ops, so however FlowDoc issues them (e.g. with
//! `batch_create_object` to save splices), the change must come out byte for
//! byte the same: same hash from the same actor and state.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ChangeHash, ObjId, ObjType, ReadDoc, ROOT};
use flowhub_crdt::{FlowDoc, NewNode, Position};

fn map_at(doc: &AutoCommit, obj: &ObjId, key: &str) -> ObjId {
    match doc.get(obj, key).expect("get") {
        Some((automerge::Value::Object(ObjType::Map), id)) => id,
        other => panic!("{key}: not a map: {other:?}"),
    }
}

/// The reference sequence for a move.
fn raw_move(doc: &mut AutoCommit, node: &str, to: Position) {
    let nodes = map_at(doc, &ROOT, "nodes");
    let node = map_at(doc, &nodes, node);
    let pos = doc
        .put_object(&node, "position", ObjType::Map)
        .expect("put");
    doc.put(&pos, "x", to.x).expect("put");
    doc.put(&pos, "y", to.y).expect("put");
}

/// A flow with nodes `a` and `b`, and a raw replica of it under the same actor.
fn flow_and_raw() -> (FlowDoc, AutoCommit) {
    let mut flow = FlowDoc::new();
    for id in ["a", "b"] {
        flow.add_node(NewNode::new("http", id, Position::new(1.0, 2.0)).with_id(id))
            .expect("add");
    }
    let raw = flow.doc().clone();
    (flow, raw)
}

fn commit(raw: &mut AutoCommit) -> ChangeHash {
    raw.commit().expect("ops to commit")
}

#[test]
fn a_move_is_the_reference_change() {
    let (mut flow, mut raw) = flow_and_raw();
    let to = Position::new(-3.5, 1e9);
    let hash = flow.move_node("a", to).expect("move");
    raw_move(&mut raw, "a", to);
    assert_eq!(hash, commit(&mut raw));
    assert_eq!(flow.node("a").expect("a").position, to);
}

#[test]
fn moves_in_a_batch_are_the_reference_change() {
    let (mut flow, mut raw) = flow_and_raw();
    let (_, hash) = flow
        .batch(|tx| {
            tx.move_node("a", Position::new(5.0, 5.0))?;
            tx.move_node("b", Position::new(6.0, 6.0))?;
            tx.move_node("a", Position::new(7.0, -0.0))?;
            tx.relabel_node("b", "B")?;
            tx.move_node("b", Position::new(8.0, 8.0))
        })
        .expect("batch");
    raw_move(&mut raw, "a", Position::new(7.0, -0.0));
    raw_move(&mut raw, "b", Position::new(6.0, 6.0));
    let nodes = map_at(&raw, &ROOT, "nodes");
    let b = map_at(&raw, &nodes, "b");
    raw.put(&b, "label", "B").expect("put");
    raw_move(&mut raw, "b", Position::new(8.0, 8.0));
    assert_eq!(hash, commit(&mut raw));
}

#[test]
fn an_add_is_the_reference_change() {
    let (mut flow, mut raw) = flow_and_raw();
    let node = NewNode::new("http", "Fetch", Position::new(0.25, -7.0))
        .with_id("c")
        .config_entry("url", serde_json::json!("https://example.com"))
        .config_entry("retry", serde_json::json!({"max": 3, "backoff": [1, 2.5]}));
    let (_, hash) = flow.add_node(node).expect("add");

    let nodes = map_at(&raw, &ROOT, "nodes");
    let c = raw.put_object(&nodes, "c", ObjType::Map).expect("put");
    raw.put(&c, "kind", "http").expect("put");
    raw.put(&c, "label", "Fetch").expect("put");
    let pos = raw.put_object(&c, "position", ObjType::Map).expect("put");
    raw.put(&pos, "x", 0.25).expect("put");
    raw.put(&pos, "y", -7.0).expect("put");
    let cfg = raw.put_object(&c, "config", ObjType::Map).expect("put");
    // serde_json maps iterate in key order.
    let retry = raw.put_object(&cfg, "retry", ObjType::Map).expect("put");
    let backoff = raw
        .put_object(&retry, "backoff", ObjType::List)
        .expect("put");
    raw.insert(&backoff, 0, 1i64).expect("insert");
    raw.insert(&backoff, 1, 2.5).expect("insert");
    raw.put(&retry, "max", 3i64).expect("put");
    raw.put(&cfg, "url", "https://example.com").expect("put");
    assert_eq!(hash, commit(&mut raw));
}

#[test]
fn a_rolled_back_move_leaves_nothing_behind() {
    let (mut flow, _) = flow_and_raw();
    let before = flow.to_json();
    let heads = flow.heads();
    let err = flow.batch(|tx| {
        tx.move_node("a", Position::new(9.0, 9.0))?;
        tx.relabel_node("a", "moved")?;
        tx.move_node("b", Position::new(9.0, 9.0))?;
        tx.relabel_node("missing", "x")
    });
    assert!(err.is_err());
    assert_eq!(flow.heads(), heads);
    assert_eq!(flow.to_json(), before);
    // The next edit still writes exactly the reference change.
    let mut raw = flow.doc().clone();
    let hash = flow.move_node("b", Position::new(1.0, 1.0)).expect("move");
    raw_move(&mut raw, "b", Position::new(1.0, 1.0));
    assert_eq!(hash, commit(&mut raw));
    flow.validate().expect("valid");
}

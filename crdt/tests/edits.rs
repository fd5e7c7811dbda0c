//! Typed edits: happy paths, one-change-per-edit, and every error case.

mod common;

use common::{abc, node};
use flowhub_crdt::{CrdtError, Endpoint, FlowDoc, NewNode, Position, SchemaError};
use serde_json::json;

/// Run `edit`, asserting it added exactly one change whose hash it returned.
fn one_change(doc: &mut FlowDoc, edit: impl FnOnce(&mut FlowDoc) -> flowhub_crdt::ChangeHash) {
    let before = doc.heads();
    let hash = edit(doc);
    let new = doc.changes_since(&before);
    assert_eq!(new.len(), 1, "edit must commit exactly one change");
    assert_eq!(new[0].hash, hash);
    assert_eq!(doc.heads(), vec![hash]);
}

#[test]
fn new_flow_is_empty_and_valid() {
    let mut doc = FlowDoc::new();
    let snap = doc.snapshot();
    assert_eq!(snap.name, "");
    assert!(snap.nodes.is_empty() && snap.edges.is_empty());
    assert_eq!(doc.validate(), Ok(()));
    assert_eq!(doc.heads().len(), 1);
}

#[test]
fn set_name() {
    let mut doc = FlowDoc::new();
    one_change(&mut doc, |d| d.set_name("Onboarding").unwrap());
    assert_eq!(doc.snapshot().name, "Onboarding");
    assert_eq!(doc.to_json()["name"], "Onboarding");
    let too_long = "x".repeat(1001);
    assert!(matches!(doc.set_name(&too_long), Err(CrdtError::Schema(_))));
}

#[test]
fn add_node_with_explicit_and_generated_ids() {
    let mut doc = FlowDoc::new();
    let mut id = String::new();
    one_change(&mut doc, |d| {
        let (i, h) = d
            .add_node(
                NewNode::new("http", "Fetch", Position::new(1.5, -2.0))
                    .with_id("fetch")
                    .config_entry("url", json!("https://x")),
            )
            .unwrap();
        id = i;
        h
    });
    assert_eq!(id, "fetch");
    let n = doc.node("fetch").unwrap();
    assert_eq!((n.kind.as_str(), n.label.as_str()), ("http", "Fetch"));
    assert_eq!(n.position, Position::new(1.5, -2.0));
    assert_eq!(n.config["url"], json!("https://x"));

    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let (id, _) = doc
            .add_node(NewNode::new("action", "a", Position::new(0.0, 0.0)))
            .unwrap();
        assert!(ids.insert(id));
    }
    assert_eq!(doc.snapshot().nodes.len(), 51);
    assert_eq!(doc.validate(), Ok(()));
}

#[test]
fn generated_ids_differ_across_replicas() {
    let mut a = FlowDoc::new();
    let mut b = FlowDoc::new();
    let (ia, _) = a
        .add_node(NewNode::new("action", "a", Position::new(0.0, 0.0)))
        .unwrap();
    let (ib, _) = b
        .add_node(NewNode::new("action", "b", Position::new(0.0, 0.0)))
        .unwrap();
    assert_ne!(ia, ib);
}

#[test]
fn add_node_errors() {
    let mut doc = abc();
    let before = doc.heads();
    assert!(
        matches!(doc.add_node(node("a", "http")), Err(CrdtError::DuplicateId(id)) if id == "a")
    );
    assert!(matches!(
        doc.add_node(node("z", "Bad Kind")),
        Err(CrdtError::Schema(SchemaError::InvalidValue { .. }))
    ));
    assert!(matches!(
        doc.add_node(node("z", "")),
        Err(CrdtError::Schema(_))
    ));
    assert!(matches!(
        doc.add_node(node("z", &"k".repeat(65))),
        Err(CrdtError::Schema(_))
    ));
    assert!(matches!(
        doc.add_node(node("", "http")),
        Err(CrdtError::Schema(_))
    ));
    assert!(matches!(
        doc.add_node(NewNode::new(
            "http",
            "x".repeat(1001),
            Position::new(0.0, 0.0)
        )),
        Err(CrdtError::Schema(_))
    ));
    assert!(matches!(
        doc.add_node(NewNode::new("http", "l", Position::new(f64::NAN, 0.0))),
        Err(CrdtError::Schema(SchemaError::InvalidValue { path, .. })) if path.ends_with("position/x")
    ));
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    assert!(matches!(
        doc.add_node(node("z", "http").config_entry("deep", deep)),
        Err(CrdtError::Schema(SchemaError::TooDeep { .. }))
    ));
    assert_eq!(doc.heads(), before, "failed edits must not commit anything");
}

#[test]
fn kinds_allow_documented_charset() {
    let mut doc = FlowDoc::new();
    for kind in [
        "trigger",
        "action",
        "http",
        "filter",
        "transform",
        "decision",
        "delay",
        "my_kind.v2-beta",
    ] {
        doc.add_node(NewNode::new(kind, "k", Position::new(0.0, 0.0)))
            .unwrap();
    }
    assert_eq!(doc.validate(), Ok(()));
}

#[test]
fn move_node() {
    let mut doc = abc();
    one_change(&mut doc, |d| {
        d.move_node("b", Position::new(10.0, 20.0)).unwrap()
    });
    assert_eq!(doc.node("b").unwrap().position, Position::new(10.0, 20.0));
    assert!(
        matches!(doc.move_node("nope", Position::new(0.0, 0.0)), Err(CrdtError::NodeNotFound(id)) if id == "nope")
    );
    assert!(matches!(
        doc.move_node("b", Position::new(f64::INFINITY, 0.0)),
        Err(CrdtError::Schema(_))
    ));
}

#[test]
fn relabel_node() {
    let mut doc = abc();
    one_change(&mut doc, |d| d.relabel_node("a", "Start here").unwrap());
    assert_eq!(doc.node("a").unwrap().label, "Start here");
    assert!(matches!(
        doc.relabel_node("nope", "x"),
        Err(CrdtError::NodeNotFound(_))
    ));
    assert!(matches!(
        doc.relabel_node("a", &"x".repeat(1001)),
        Err(CrdtError::Schema(_))
    ));
    // Labels are counted in chars, not bytes.
    doc.relabel_node("a", &"é".repeat(1000)).unwrap();
}

#[test]
fn configure_node_round_trips_nested_json() {
    let mut doc = abc();
    let value = json!({
        "method": "POST",
        "retries": 3,
        "negative": -7,
        "big": u64::MAX,
        "ratio": 0.25,
        "enabled": true,
        "nothing": null,
        "headers": [{"k": "a", "v": "1"}, {"k": "b", "v": [1, 2, [3]]}],
        "empty": {},
        "empty_list": []
    });
    one_change(&mut doc, |d| {
        d.configure_node("b", "request", value.clone()).unwrap()
    });
    one_change(&mut doc, |d| {
        d.configure_node("b", "timeout_ms", json!(5000)).unwrap()
    });
    let n = doc.node("b").unwrap();
    assert_eq!(n.config["request"], value);
    assert_eq!(n.config["timeout_ms"], json!(5000));
    assert_eq!(doc.validate(), Ok(()));
    // Overwrite a key with a scalar, and null keeps the key.
    doc.configure_node("b", "request", json!(null)).unwrap();
    assert_eq!(doc.node("b").unwrap().config["request"], json!(null));

    assert!(matches!(
        doc.configure_node("nope", "k", json!(1)),
        Err(CrdtError::NodeNotFound(_))
    ));
    let mut deep = json!("leaf");
    for _ in 0..32 {
        deep = json!({ "d": deep });
    }
    assert!(matches!(
        doc.configure_node("b", "deep", deep),
        Err(CrdtError::Schema(SchemaError::TooDeep { .. }))
    ));
}

#[test]
fn config_depth_limit_is_exact() {
    let mut doc = abc();
    // The config map is level 1, so a value may add 31 more levels.
    let mut ok = json!(1);
    for _ in 0..31 {
        ok = json!([ok]);
    }
    doc.configure_node("a", "deep", ok.clone()).unwrap();
    assert_eq!(doc.node("a").unwrap().config["deep"], ok);
    assert_eq!(doc.validate(), Ok(()));
    let too_deep = json!([ok]);
    assert!(doc.configure_node("a", "deep", too_deep).is_err());
}

#[test]
fn concurrent_config_keys_merge() {
    let mut a = abc();
    let mut b = a.fork();
    a.configure_node("b", "url", json!("https://a")).unwrap();
    b.configure_node("b", "method", json!("GET")).unwrap();
    common::sync_pair(&mut a, &mut b, false).unwrap();
    let cfg = a.node("b").unwrap().config;
    assert_eq!(cfg["url"], json!("https://a"));
    assert_eq!(cfg["method"], json!("GET"));
    assert_eq!(a.to_json(), b.to_json());
}

#[test]
fn delete_node_removes_touching_edges_in_same_change() {
    let mut doc = abc();
    doc.add_node(node("d", "delay")).unwrap();
    doc.connect(
        Some("ad".into()),
        Endpoint::new("a", "out"),
        Endpoint::new("d", "in"),
    )
    .unwrap();
    one_change(&mut doc, |d| d.delete_node("b").unwrap());
    let snap = doc.snapshot();
    assert!(!snap.nodes.contains_key("b"));
    assert_eq!(snap.edges.keys().collect::<Vec<_>>(), vec!["ad"]);
    assert!(doc.dangling_edges().unwrap().is_empty());
    assert!(matches!(
        doc.delete_node("b"),
        Err(CrdtError::NodeNotFound(_))
    ));
}

#[test]
fn connect_and_disconnect() {
    let mut doc = abc();
    let mut id = String::new();
    one_change(&mut doc, |d| {
        let (i, h) = d
            .connect(None, Endpoint::new("a", "err"), Endpoint::new("c", "in"))
            .unwrap();
        id = i;
        h
    });
    let e = &doc.snapshot().edges[&id];
    assert_eq!(e.source, Endpoint::new("a", "err"));
    assert_eq!(e.target, Endpoint::new("c", "in"));

    assert!(matches!(
        doc.connect(None, Endpoint::new("ghost", "out"), Endpoint::new("c", "in")),
        Err(CrdtError::NodeNotFound(n)) if n == "ghost"
    ));
    assert!(matches!(
        doc.connect(None, Endpoint::new("a", "out"), Endpoint::new("ghost", "in")),
        Err(CrdtError::NodeNotFound(n)) if n == "ghost"
    ));
    assert!(matches!(
        doc.connect(
            Some("ab".into()),
            Endpoint::new("a", "out"),
            Endpoint::new("c", "in")
        ),
        Err(CrdtError::DuplicateId(_))
    ));

    one_change(&mut doc, |d| d.disconnect(&id).unwrap());
    assert!(!doc.snapshot().edges.contains_key(&id));
    assert!(matches!(
        doc.disconnect(&id),
        Err(CrdtError::EdgeNotFound(_))
    ));
}

#[test]
fn repair_is_noop_on_clean_flow() {
    let mut doc = abc();
    let before = doc.heads();
    assert_eq!(doc.repair().unwrap(), None);
    assert_eq!(doc.heads(), before);
}

#[test]
fn to_json_shape() {
    let mut doc = abc();
    doc.set_name("f").unwrap();
    let j = doc.to_json();
    assert_eq!(j["name"], "f");
    assert_eq!(j["heads"].as_array().unwrap().len(), 1);
    assert_eq!(j["heads"][0], json!(doc.heads_hex()[0]));
    assert_eq!(
        j["nodes"]["a"],
        json!({"id": "a", "kind": "trigger", "label": "trigger a", "position": {"x": 0.0, "y": 0.0}, "config": {}})
    );
    assert_eq!(
        j["edges"]["ab"],
        json!({"id": "ab", "source": {"node": "a", "port": "out"}, "target": {"node": "b", "port": "in"}})
    );
    // The snapshot serialises to the same nodes/edges.
    let snap = serde_json::to_value(doc.snapshot()).unwrap();
    assert_eq!(snap["nodes"], j["nodes"]);
}

#[test]
fn edits_after_a_failed_edit_contain_only_their_own_ops() {
    let mut doc = abc();
    let _ = doc.add_node(node("a", "http")); // duplicate: fails before writing
    let _ = doc.connect(None, Endpoint::new("a", "o"), Endpoint::new("ghost", "i"));
    let before = doc.heads();
    doc.relabel_node("a", "x").unwrap();
    let new = doc.changes_since(&before);
    assert_eq!(new.len(), 1);
    assert_eq!(doc.snapshot().nodes.len(), 3);
    assert_eq!(doc.snapshot().edges.len(), 2);
}

#[test]
fn edits_that_change_nothing_still_commit_one_change() {
    // Automerge skips a put of an identical value; typed edits still yield one change.
    let mut doc = abc();
    doc.set_name("same").unwrap();
    one_change(&mut doc, |d| d.set_name("same").unwrap());
    one_change(&mut doc, |d| d.relabel_node("a", "trigger a").unwrap());
    doc.configure_node("a", "k", json!(1)).unwrap();
    one_change(&mut doc, |d| d.configure_node("a", "k", json!(1)).unwrap());
    assert_eq!(doc.validate(), Ok(()));
}

#[test]
fn batch_commits_many_edits_as_one_change() {
    let mut doc = abc();
    let before = doc.heads();
    let (id, hash) = doc
        .batch(|tx| {
            tx.set_name("batched")?;
            let id = tx.add_node(NewNode::new("http", "new", Position::new(0.0, 0.0)))?;
            tx.move_node(&id, Position::new(3.0, 4.0))?;
            tx.relabel_node("a", "A")?;
            tx.configure_node(&id, "url", json!("https://x"))?;
            tx.connect(
                Some("an".into()),
                Endpoint::new("a", "out"),
                Endpoint::new(id.clone(), "in"),
            )?;
            tx.disconnect("bc")?;
            tx.delete_node("c")?;
            Ok(id)
        })
        .unwrap();
    let new = doc.changes_since(&before);
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].hash, hash);
    let snap = doc.snapshot();
    assert_eq!(snap.name, "batched");
    assert_eq!(snap.nodes[&id].position, Position::new(3.0, 4.0));
    assert_eq!(snap.nodes[&id].config["url"], json!("https://x"));
    assert_eq!(snap.nodes["a"].label, "A");
    assert!(!snap.nodes.contains_key("c"));
    assert_eq!(snap.edges.keys().collect::<Vec<_>>(), vec!["ab", "an"]);
    assert_eq!(doc.validate(), Ok(()));
}

#[test]
fn failed_batch_changes_nothing_and_forgets_what_it_added() {
    let mut doc = abc();
    let before = doc.heads();
    let json_before = doc.to_json();
    let err = doc
        .batch(|tx| {
            tx.add_node(node("z", "http"))?;
            tx.move_node("z", Position::new(1.0, 1.0))?;
            tx.relabel_node("a", "changed")?;
            tx.move_node("ghost", Position::new(0.0, 0.0))
        })
        .unwrap_err();
    assert!(matches!(err, CrdtError::NodeNotFound(id) if id == "ghost"));
    assert_eq!(doc.heads(), before);
    assert_eq!(doc.to_json(), json_before);
    // The rolled-back node must not linger in any lookup cache.
    assert!(matches!(
        doc.move_node("z", Position::new(0.0, 0.0)),
        Err(CrdtError::NodeNotFound(_))
    ));
    one_change(&mut doc, |d| d.relabel_node("a", "x").unwrap());
    assert_eq!(doc.snapshot().nodes.len(), 3);
}

#[test]
fn panicking_batch_is_rolled_back() {
    let mut doc = abc();
    let before = doc.heads();
    let json_before = doc.to_json();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = doc.batch(|tx| -> flowhub_crdt::Result<()> {
            tx.relabel_node("a", "half")?;
            panic!("client code panicked mid-batch");
        });
    }));
    assert!(outcome.is_err());
    assert_eq!(doc.heads(), before);
    assert_eq!(doc.to_json(), json_before);
    one_change(&mut doc, |d| {
        d.move_node("b", Position::new(1.0, 1.0)).unwrap()
    });
    assert_eq!(doc.node("a").unwrap().label, "trigger a");
}

#[test]
fn empty_batch_still_commits_one_change() {
    let mut doc = abc();
    one_change(&mut doc, |d| d.batch(|_| Ok(())).unwrap().1);
}

#[test]
fn drag_in_a_batch_writes_only_the_final_position() {
    let mut doc = abc();
    let before = doc.heads();
    doc.batch(|tx| {
        for i in 0..100 {
            tx.move_node("a", Position::new(i as f64, -(i as f64)))?;
            tx.move_node("b", Position::new(0.5, i as f64))?;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(doc.node("a").unwrap().position, Position::new(99.0, -99.0));
    assert_eq!(doc.node("b").unwrap().position, Position::new(0.5, 99.0));
    let change = doc.doc_mut().get_last_local_change().unwrap();
    assert_eq!(change.len(), 6, "one position map (3 ops) per dragged node");
    assert_eq!(doc.changes_since(&before).len(), 1);
    // Bad input mid-drag fails the batch like any other edit.
    assert!(matches!(
        doc.batch(|tx| {
            tx.move_node("a", Position::new(1.0, 1.0))?;
            tx.move_node("a", Position::new(f64::NAN, 1.0))
        }),
        Err(CrdtError::Schema(_))
    ));
    assert_eq!(doc.node("a").unwrap().position, Position::new(99.0, -99.0));
}

#[test]
fn moves_and_other_edits_interleave_in_order() {
    let mut doc = abc();
    doc.batch(|tx| {
        tx.move_node("a", Position::new(1.0, 1.0))?;
        tx.delete_node("a")?;
        tx.add_node(node("a", "delay"))?;
        tx.move_node("a", Position::new(2.0, 2.0))?;
        Ok(())
    })
    .unwrap();
    let a = doc.node("a").unwrap();
    assert_eq!(
        (a.kind.as_str(), a.position),
        ("delay", Position::new(2.0, 2.0))
    );
    assert_eq!(doc.validate(), Ok(()));
}

#[test]
fn edits_after_foreign_changes_target_the_current_node() {
    // A peer deletes node "a" and re-creates it (a new map object). Our next
    // typed edit must write into the new map, not one remembered from before.
    let mut doc = abc();
    let mut peer = doc.fork();
    doc.move_node("a", Position::new(1.0, 1.0)).unwrap();
    peer.delete_node("a").unwrap();
    peer.add_node(node("a", "delay")).unwrap();
    common::sync_pair(&mut peer, &mut doc, true).unwrap();
    doc.move_node("a", Position::new(7.0, 7.0)).unwrap();
    assert_eq!(doc.node("a").unwrap().position, Position::new(7.0, 7.0));
    assert_eq!(doc.node("a").unwrap().kind, "delay");

    // Same through raw changes and through uncommitted `doc_mut` writes.
    let mut peer = doc.fork();
    peer.delete_node("a").unwrap();
    peer.add_node(node("a", "filter")).unwrap();
    common::push_changes(&mut peer, &mut doc);
    doc.relabel_node("a", "after raw").unwrap();
    assert_eq!(doc.node("a").unwrap().label, "after raw");

    use automerge::transaction::Transactable;
    use automerge::ReadDoc;
    let d = doc.doc_mut();
    let nodes = d.get(automerge::ROOT, "nodes").unwrap().unwrap().1;
    d.delete(&nodes, "a").unwrap();
    assert!(matches!(
        doc.move_node("a", Position::new(0.0, 0.0)),
        Err(CrdtError::NodeNotFound(_))
    ));
}

//! Typed edits as data: the JSON shape of `Edit` and `apply_edits` (one
//! change, all or nothing, the typed edits' errors).

mod common;

use common::abc;
use flowhub_crdt::{CrdtError, Edit, Endpoint, FlowDoc, Position};
use serde_json::json;

#[test]
fn json_shape_is_tagged_by_op() {
    let edit: Edit =
        serde_json::from_value(json!({"op": "move_node", "id": "n1", "to": {"x": 1, "y": 2}}))
            .unwrap();
    assert_eq!(
        edit,
        Edit::MoveNode {
            id: "n1".into(),
            to: Position::new(1.0, 2.0)
        }
    );
    let add: Edit = serde_json::from_value(
        json!({"op": "add_node", "kind": "http", "position": {"x": 0, "y": 0}}),
    )
    .unwrap();
    assert_eq!(
        add,
        Edit::AddNode {
            id: None,
            kind: "http".into(),
            label: String::new(),
            position: Position::new(0.0, 0.0),
            config: serde_json::Map::new(),
        }
    );
    let connect = Edit::Connect {
        id: None,
        source: Endpoint::new("a", "out"),
        target: Endpoint::new("b", "in"),
    };
    assert_eq!(
        serde_json::to_value(&connect).unwrap(),
        json!({"op": "connect", "source": {"node": "a", "port": "out"},
               "target": {"node": "b", "port": "in"}})
    );
    assert!(serde_json::from_value::<Edit>(json!({"op": "explode", "id": "a"})).is_err());
}

#[test]
fn a_batch_is_one_change_and_edits_see_earlier_ones() {
    let mut doc = FlowDoc::new();
    let before = doc.heads();
    let edits: Vec<Edit> = serde_json::from_value(json!([
        {"op": "set_name", "name": "Onboarding"},
        {"op": "add_node", "id": "t", "kind": "trigger", "label": "Start",
         "position": {"x": 0, "y": 0}, "config": {"cron": "0 * * * *"}},
        {"op": "add_node", "kind": "http", "label": "Fetch", "position": {"x": 100, "y": 0}},
        {"op": "move_node", "id": "t", "to": {"x": 5, "y": 6}},
        {"op": "relabel_node", "id": "t", "label": "Every hour"},
        {"op": "configure_node", "id": "t", "key": "tz", "value": "UTC"},
        {"op": "unconfigure_node", "id": "t", "key": "cron"},
        {"op": "set_node_kind", "id": "t", "kind": "schedule"},
        {"op": "connect", "id": "e1", "source": {"node": "t", "port": "out"},
         "target": {"node": "t", "port": "in"}},
        {"op": "disconnect", "id": "e1"}
    ]))
    .unwrap();
    let (ids, hash) = doc.apply_edits_ids(&edits).unwrap();
    assert_eq!(doc.changes_since(&before).len(), 1);
    assert_eq!(doc.heads(), vec![hash]);
    assert_eq!(ids[1].as_deref(), Some("t"));
    let generated = ids[2].clone().expect("add_node reports its generated id");
    assert_eq!(ids[3], None);

    let snap = doc.snapshot();
    assert_eq!(snap.name, "Onboarding");
    let t = &snap.nodes["t"];
    assert_eq!(
        (t.kind.as_str(), t.label.as_str()),
        ("schedule", "Every hour")
    );
    assert_eq!(t.position, Position::new(5.0, 6.0));
    assert_eq!(
        serde_json::Value::Object(t.config.clone()),
        json!({"tz": "UTC"})
    );
    assert_eq!(snap.nodes[&generated].label, "Fetch");
    assert!(snap.edges.is_empty());
    assert_eq!(doc.validate(), Ok(()));
}

#[test]
fn a_failing_edit_rolls_back_the_whole_batch_with_the_typed_error() {
    let mut doc = abc();
    let before = doc.to_json();
    let heads = doc.heads();
    let bad = [
        Edit::MoveNode {
            id: "a".into(),
            to: Position::new(9.0, 9.0),
        },
        Edit::DeleteNode { id: "ghost".into() },
    ];
    assert!(matches!(doc.apply_edits(&bad), Err(CrdtError::NodeNotFound(id)) if id == "ghost"));
    let dup = [Edit::Connect {
        id: Some("ab".into()),
        source: Endpoint::new("a", "out"),
        target: Endpoint::new("c", "in"),
    }];
    assert!(matches!(doc.apply_edits(&dup), Err(CrdtError::DuplicateId(id)) if id == "ab"));
    let bad_kind = [Edit::SetNodeKind {
        id: "a".into(),
        kind: "Not A Kind".into(),
    }];
    assert!(matches!(
        doc.apply_edits(&bad_kind),
        Err(CrdtError::Schema(_))
    ));
    assert!(matches!(
        doc.apply_edits(&[Edit::Disconnect { id: "nope".into() }]),
        Err(CrdtError::EdgeNotFound(_))
    ));
    assert_eq!(doc.heads(), heads, "failed batches commit nothing");
    assert_eq!(doc.to_json(), before);
}

#[test]
fn unconfigure_removes_a_key_and_tolerates_an_absent_one() {
    let mut doc = abc();
    doc.configure_node("a", "k", json!(null)).unwrap();
    assert!(doc.node("a").unwrap().config.contains_key("k"));
    doc.unconfigure_node("a", "k").unwrap();
    assert!(!doc.node("a").unwrap().config.contains_key("k"));
    doc.unconfigure_node("a", "k").unwrap();
    assert!(matches!(
        doc.unconfigure_node("ghost", "k"),
        Err(CrdtError::NodeNotFound(_))
    ));
}

#[test]
fn set_node_kind_keeps_edges() {
    let mut doc = abc();
    let edges = doc.snapshot().edges;
    doc.set_node_kind("b", "delay").unwrap();
    assert_eq!(doc.node("b").unwrap().kind, "delay");
    assert_eq!(doc.snapshot().edges, edges);
}

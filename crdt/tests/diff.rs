//! Diffs: `FlowDoc::diff` / `FlowDiff::between`, and the property that a diff
//! turned into edits replays exactly what happened between two versions.

mod common;

use std::collections::BTreeSet;

use common::random::{self, Op};
use common::{abc, node};
use flowhub_crdt::{ChangeHash, ConfigChange, Edit, FlowDiff, FlowDoc, FlowSnapshot, Position};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Apply each op that can apply as its own change (through `apply_edits`).
fn run(doc: &mut FlowDoc, ops: &[Op]) {
    for op in ops {
        if let Some(edit) = random::edit(&doc.snapshot(), op) {
            doc.apply_edits(std::slice::from_ref(&edit))
                .unwrap_or_else(|e| panic!("{edit:?}: {e}"));
        }
    }
}

fn without_heads(mut v: Value) -> Value {
    v.as_object_mut().expect("object").remove("heads");
    v
}

/// Node ids whose read view differs between the snapshots, worked out
/// independently of `FlowDiff`.
fn changed_ids(a: &FlowSnapshot, b: &FlowSnapshot) -> BTreeSet<String> {
    a.nodes
        .keys()
        .chain(b.nodes.keys())
        .filter(|id| a.nodes.get(*id) != b.nodes.get(*id))
        .cloned()
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn diff_as_edits_replays_v1_to_v2(
        first in proptest::collection::vec(random::op(), 0..40),
        second in proptest::collection::vec(random::op(), 0..40),
    ) {
        let mut doc = FlowDoc::new();
        run(&mut doc, &first);
        let v1: Vec<ChangeHash> = doc.heads();
        run(&mut doc, &second);
        let v2 = doc.heads();

        let diff = doc.diff(&v1, &v2).unwrap();
        let (s1, s2) = (doc.snapshot_at(&v1).unwrap(), doc.snapshot_at(&v2).unwrap());
        prop_assert_eq!(&diff, &FlowDiff::between(&s1, &s2));
        let named: BTreeSet<String> = diff.node_ids().into_iter().map(str::to_owned).collect();
        prop_assert_eq!(named, changed_ids(&s1, &s2));
        prop_assert_eq!(diff.is_empty(), s1 == s2);

        // The diff survives a JSON round trip unchanged (null config values included).
        let round: FlowDiff = serde_json::from_value(serde_json::to_value(&diff).unwrap()).unwrap();
        prop_assert_eq!(&round, &diff);

        let mut replica = doc.at_heads(&v1).unwrap();
        replica.apply_edits(&diff.to_edits()).unwrap();
        prop_assert_eq!(without_heads(replica.to_json()), without_heads(doc.to_json_at(&v2).unwrap()));
        prop_assert_eq!(replica.validate(), Ok(()));

        // And back: the inverted diff restores v1.
        replica.apply_edits(&diff.clone().inverted().to_edits()).unwrap();
        prop_assert_eq!(without_heads(replica.to_json()), without_heads(doc.to_json_at(&v1).unwrap()));
    }
}

#[test]
fn diff_lists_each_kind_of_change() {
    let mut doc = abc();
    doc.configure_node("a", "url", json!("https://old"))
        .unwrap();
    doc.configure_node("a", "gone", json!(1)).unwrap();
    let v1 = doc.heads();
    doc.set_name("Renamed").unwrap();
    doc.move_node("a", Position::new(3.0, 4.0)).unwrap();
    doc.relabel_node("a", "Start").unwrap();
    doc.configure_node("a", "url", json!("https://new"))
        .unwrap();
    doc.configure_node("a", "nullable", json!(null)).unwrap();
    doc.unconfigure_node("a", "gone").unwrap();
    doc.set_node_kind("b", "delay").unwrap();
    doc.delete_node("c").unwrap();
    doc.add_node(node("d", "http")).unwrap();
    doc.connect(
        Some("ad".into()),
        flowhub_crdt::Endpoint::new("a", "out"),
        flowhub_crdt::Endpoint::new("d", "in"),
    )
    .unwrap();
    let v2 = doc.heads();

    let diff = doc.diff(&v1, &v2).unwrap();
    assert_eq!(diff.name.as_ref().map(|n| n.new.as_str()), Some("Renamed"));
    assert_eq!(
        diff.nodes_added.iter().map(|n| &n.id).collect::<Vec<_>>(),
        ["d"]
    );
    assert_eq!(
        diff.nodes_removed.iter().map(|n| &n.id).collect::<Vec<_>>(),
        ["c"]
    );
    assert_eq!(
        diff.nodes_removed[0].kind, "action",
        "removed nodes come whole"
    );
    let a = &diff.nodes_changed[0];
    assert_eq!(a.id, "a");
    assert_eq!(
        a.position.as_ref().map(|p| (p.old, p.new)),
        Some((Position::new(0.0, 0.0), Position::new(3.0, 4.0)))
    );
    assert_eq!(a.label.as_ref().map(|l| l.new.as_str()), Some("Start"));
    assert_eq!(
        a.config["url"],
        ConfigChange {
            old: Some(json!("https://old")),
            new: Some(json!("https://new"))
        }
    );
    assert_eq!(
        a.config["nullable"],
        ConfigChange {
            old: None,
            new: Some(Value::Null)
        }
    );
    assert_eq!(
        a.config["gone"],
        ConfigChange {
            old: Some(json!(1)),
            new: None
        }
    );
    assert_eq!(
        diff.nodes_changed[1].kind.as_ref().map(|k| k.new.as_str()),
        Some("delay")
    );
    assert_eq!(
        diff.edges_removed.iter().map(|e| &e.id).collect::<Vec<_>>(),
        ["bc"]
    );
    assert_eq!(
        diff.edges_added.iter().map(|e| &e.id).collect::<Vec<_>>(),
        ["ad"]
    );

    // Serialised, "added" and "set to null" stay distinguishable.
    let json = serde_json::to_value(&diff).unwrap();
    assert_eq!(
        json["nodes_changed"][0]["config"]["nullable"],
        json!({"new": null})
    );
    assert_eq!(
        json["nodes_changed"][0]["config"]["gone"],
        json!({"old": 1})
    );

    // Diffing backwards is the inverse.
    assert_eq!(doc.diff(&v2, &v1).unwrap(), diff.inverted());
}

#[test]
fn repointed_edge_is_a_change_and_replays() {
    let mut doc = abc();
    let v1 = doc.heads();
    doc.disconnect("ab").unwrap();
    doc.connect(
        Some("ab".into()),
        flowhub_crdt::Endpoint::new("a", "out"),
        flowhub_crdt::Endpoint::new("c", "in"),
    )
    .unwrap();
    let v2 = doc.heads();
    let diff = doc.diff(&v1, &v2).unwrap();
    assert_eq!(diff.edges_changed.len(), 1);
    assert_eq!(diff.edges_changed[0].new.target.node, "c");
    assert!(diff.edges_added.is_empty() && diff.edges_removed.is_empty());
    assert!(matches!(diff.to_edits().first(), Some(Edit::Disconnect { id }) if id == "ab"));
}

#[test]
fn diff_refuses_unknown_heads() {
    let mut doc = abc();
    let heads = doc.heads();
    let mut other = FlowDoc::new();
    other.set_name("elsewhere").unwrap();
    let foreign = other.heads();
    assert!(matches!(
        doc.diff(&heads, &foreign),
        Err(flowhub_crdt::CrdtError::UnknownHeads(_))
    ));
    assert!(matches!(
        doc.diff(&[], &heads),
        Err(flowhub_crdt::CrdtError::InvalidHeads(_))
    ));
}

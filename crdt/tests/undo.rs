//! Per-user undo/redo: own edits undone, collaborators' work kept, and the
//! concurrent cases documented in the `undo` module.

mod common;

use common::random;
use common::{abc, node, push_changes};
use flowhub_crdt::{Edit, Endpoint, FlowDoc, Position, SkipReason, Skipped, UndoStack};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Alice (with an undo stack) and Bob, both holding the a -> b -> c flow.
fn pair() -> (FlowDoc, UndoStack, FlowDoc) {
    let mut alice = abc();
    let bob = alice.fork();
    (alice, UndoStack::new(), bob)
}

fn exchange(a: &mut FlowDoc, b: &mut FlowDoc) {
    push_changes(a, b);
    push_changes(b, a);
}

fn at(x: f64, y: f64) -> Position {
    Position::new(x, y)
}

fn skipped(path: &str, reason: SkipReason) -> Skipped {
    Skipped {
        path: path.into(),
        reason,
    }
}

#[test]
fn undo_reverts_own_edit_and_keeps_others_then_redo() {
    let (mut alice, mut undo, mut bob) = pair();
    undo.record(&mut alice, |d| d.move_node("a", at(50.0, 60.0)))
        .unwrap();
    bob.relabel_node("b", "Bob's label").unwrap();
    bob.configure_node("a", "owner", json!("bob")).unwrap();
    exchange(&mut alice, &mut bob);

    let heads = alice.heads();
    let undone = undo.undo(&mut alice).unwrap().expect("a step to undo");
    assert!(undone.skipped.is_empty());
    assert_eq!(
        alice.changes_since(&heads).len(),
        1,
        "undo is one new change"
    );
    let a = alice.node("a").unwrap();
    assert_eq!(a.position, at(0.0, 0.0));
    assert_eq!(
        a.config["owner"],
        json!("bob"),
        "Bob's config on the same node stays"
    );
    assert_eq!(alice.node("b").unwrap().label, "Bob's label");

    exchange(&mut alice, &mut bob);
    assert_eq!(bob.node("a").unwrap().position, at(0.0, 0.0));
    assert_eq!(alice.to_json(), bob.to_json());

    assert!(undo.can_redo());
    undo.redo(&mut alice).unwrap().expect("a step to redo");
    assert_eq!(alice.node("a").unwrap().position, at(50.0, 60.0));
    assert!(undo.can_undo() && !undo.can_redo());
    assert!(undo.undo(&mut alice).unwrap().is_some());
    assert!(
        undo.undo(&mut alice).unwrap().is_none(),
        "only Alice's one step"
    );
}

#[test]
fn a_new_edit_clears_redo() {
    let (mut alice, mut undo, _) = pair();
    undo.apply(
        &mut alice,
        &[Edit::RelabelNode {
            id: "a".into(),
            label: "one".into(),
        }],
    )
    .unwrap();
    undo.undo(&mut alice).unwrap();
    assert!(undo.can_redo());
    undo.apply(
        &mut alice,
        &[Edit::RelabelNode {
            id: "a".into(),
            label: "two".into(),
        }],
    )
    .unwrap();
    assert!(!undo.can_redo());
    assert!(undo.redo(&mut alice).unwrap().is_none());
}

#[test]
fn undo_of_a_move_leaves_a_later_move_by_someone_else() {
    let (mut alice, mut undo, mut bob) = pair();
    undo.record(&mut alice, |d| d.move_node("a", at(10.0, 10.0)))
        .unwrap();
    undo.record(&mut alice, |d| d.relabel_node("a", "mine"))
        .unwrap();
    exchange(&mut alice, &mut bob);
    bob.move_node("a", at(99.0, 99.0)).unwrap();
    exchange(&mut alice, &mut bob);

    // The relabel nobody touched since is undone normally.
    let relabel = undo.undo(&mut alice).unwrap().unwrap();
    assert!(relabel.change.is_some() && relabel.skipped.is_empty());
    // The move is skipped: Bob's later position stays, nothing is committed.
    let heads = alice.heads();
    let moved = undo.undo(&mut alice).unwrap().unwrap();
    assert_eq!(moved.change, None);
    assert_eq!(
        moved.skipped,
        [skipped("nodes/a/position", SkipReason::ChangedSince)]
    );
    assert_eq!(alice.heads(), heads);
    assert_eq!(alice.node("a").unwrap().position, at(99.0, 99.0));
    // A fully skipped undo leaves nothing to redo: redo brings back the relabel.
    undo.redo(&mut alice).unwrap().unwrap();
    assert_eq!(alice.node("a").unwrap().label, "mine");
    assert!(!undo.can_redo());
}

#[test]
fn undo_of_a_batch_applies_the_parts_nobody_changed() {
    let (mut alice, mut undo, mut bob) = pair();
    undo.apply(
        &mut alice,
        &[
            Edit::MoveNode {
                id: "a".into(),
                to: at(1.0, 1.0),
            },
            Edit::ConfigureNode {
                id: "a".into(),
                key: "url".into(),
                value: json!("x"),
            },
            Edit::ConfigureNode {
                id: "b".into(),
                key: "url".into(),
                value: json!("y"),
            },
        ],
    )
    .unwrap();
    exchange(&mut alice, &mut bob);
    bob.configure_node("b", "url", json!("bob's")).unwrap();
    exchange(&mut alice, &mut bob);

    let undone = undo.undo(&mut alice).unwrap().unwrap();
    assert_eq!(
        undone.skipped,
        [skipped("nodes/b/config/url", SkipReason::ChangedSince)]
    );
    let snap = alice.snapshot();
    assert_eq!(snap.nodes["a"].position, at(0.0, 0.0));
    assert!(
        !snap.nodes["a"].config.contains_key("url"),
        "an added key is removed again"
    );
    assert_eq!(snap.nodes["b"].config["url"], json!("bob's"));

    // Redo re-applies exactly what the undo did.
    undo.redo(&mut alice).unwrap().unwrap();
    let snap = alice.snapshot();
    assert_eq!(snap.nodes["a"].position, at(1.0, 1.0));
    assert_eq!(snap.nodes["a"].config["url"], json!("x"));
    assert_eq!(snap.nodes["b"].config["url"], json!("bob's"));
}

#[test]
fn undo_of_an_add_deletes_only_an_untouched_node() {
    let (mut alice, mut undo, mut bob) = pair();
    undo.record(&mut alice, |d| d.add_node(node("mine", "http")))
        .unwrap();
    undo.record(&mut alice, |d| d.add_node(node("edited", "http")))
        .unwrap();
    undo.record(&mut alice, |d| d.add_node(node("wired", "http")))
        .unwrap();
    exchange(&mut alice, &mut bob);
    bob.connect(
        Some("bw".into()),
        Endpoint::new("b", "out"),
        Endpoint::new("wired", "in"),
    )
    .unwrap();
    bob.relabel_node("edited", "Bob's now").unwrap();
    exchange(&mut alice, &mut bob);

    let wired = undo.undo(&mut alice).unwrap().unwrap();
    assert_eq!(
        wired.skipped,
        [skipped("nodes/wired", SkipReason::ChangedSince)]
    );
    let edited = undo.undo(&mut alice).unwrap().unwrap();
    assert_eq!(
        edited.skipped,
        [skipped("nodes/edited", SkipReason::ChangedSince)]
    );
    let mine = undo.undo(&mut alice).unwrap().unwrap();
    assert!(mine.skipped.is_empty());
    let snap = alice.snapshot();
    assert!(snap.nodes.contains_key("wired") && snap.edges.contains_key("bw"));
    assert_eq!(snap.nodes["edited"].label, "Bob's now");
    assert!(!snap.nodes.contains_key("mine"));
}

#[test]
fn undo_of_a_delete_restores_the_node_and_its_edges() {
    let (mut alice, mut undo, mut bob) = pair();
    alice
        .configure_node("b", "url", json!({"deep": [1, 2]}))
        .unwrap();
    exchange(&mut alice, &mut bob);
    let before = alice.snapshot();
    undo.record(&mut alice, |d| d.delete_node("b")).unwrap();
    assert!(alice.snapshot().edges.is_empty());
    exchange(&mut alice, &mut bob);
    bob.relabel_node("c", "Bob's c").unwrap();
    exchange(&mut alice, &mut bob);

    let undone = undo.undo(&mut alice).unwrap().unwrap();
    assert!(undone.skipped.is_empty());
    let snap = alice.snapshot();
    assert_eq!(snap.nodes["b"], before.nodes["b"]);
    assert_eq!(snap.edges, before.edges);
    assert_eq!(snap.nodes["c"].label, "Bob's c");
}

#[test]
fn restoring_a_deleted_node_skips_edges_to_nodes_gone_since() {
    let (mut alice, mut undo, mut bob) = pair();
    undo.record(&mut alice, |d| d.delete_node("b")).unwrap();
    exchange(&mut alice, &mut bob);
    bob.delete_node("c").unwrap();
    exchange(&mut alice, &mut bob);

    let undone = undo.undo(&mut alice).unwrap().unwrap();
    assert_eq!(undone.skipped, [skipped("edges/bc", SkipReason::Gone)]);
    let snap = alice.snapshot();
    assert!(snap.nodes.contains_key("b") && snap.edges.contains_key("ab"));
    assert!(!snap.nodes.contains_key("c"));
    assert_eq!(alice.validate(), Ok(()));
}

#[test]
fn undo_works_after_a_merge_of_concurrent_remote_changes() {
    let (mut alice, mut undo, mut bob) = pair();
    // Concurrent: neither has seen the other's edit when making it.
    undo.record(&mut alice, |d| d.set_name("Alice's name"))
        .unwrap();
    undo.record(&mut alice, |d| d.disconnect("ab")).unwrap();
    bob.move_node("c", at(7.0, 7.0)).unwrap();
    bob.add_node(node("bobs", "delay")).unwrap();
    exchange(&mut alice, &mut bob);

    undo.undo(&mut alice).unwrap().unwrap();
    undo.undo(&mut alice).unwrap().unwrap();
    exchange(&mut alice, &mut bob);
    let snap = bob.snapshot();
    assert_eq!(snap.name, "");
    assert!(snap.edges.contains_key("ab"));
    assert_eq!(snap.nodes["c"].position, at(7.0, 7.0));
    assert!(snap.nodes.contains_key("bobs"));
    assert_eq!(alice.to_json(), bob.to_json());
}

#[test]
fn the_stack_survives_a_reload_as_data() {
    let (mut alice, mut undo, _) = pair();
    undo.record(&mut alice, |d| d.relabel_node("a", "renamed"))
        .unwrap();
    let saved: Value = serde_json::to_value(&undo).unwrap();
    let mut reloaded_doc = FlowDoc::load(&alice.save()).unwrap();
    let mut reloaded: UndoStack = serde_json::from_value(saved).unwrap();
    assert_eq!(reloaded, undo);
    reloaded.undo(&mut reloaded_doc).unwrap().unwrap();
    assert_eq!(reloaded_doc.node("a").unwrap().label, "trigger a");
}

#[test]
fn limit_drops_the_oldest_steps() {
    let (mut alice, _, _) = pair();
    let mut undo = UndoStack::with_limit(2);
    for label in ["1", "2", "3"] {
        undo.record(&mut alice, |d| d.relabel_node("a", label))
            .unwrap();
    }
    undo.undo(&mut alice).unwrap();
    undo.undo(&mut alice).unwrap();
    assert!(undo.undo(&mut alice).unwrap().is_none());
    assert_eq!(alice.node("a").unwrap().label, "1");
}

fn without_heads(mut v: Value) -> Value {
    v.as_object_mut().expect("object").remove("heads");
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Alone, undoing every step returns to the start and redoing every step
    /// returns to the end.
    #[test]
    fn undo_all_then_redo_all(ops in proptest::collection::vec(random::op(), 1..30)) {
        let mut doc = FlowDoc::new();
        let mut undo = UndoStack::new();
        let start = without_heads(doc.to_json());
        for op in &ops {
            if let Some(edit) = random::edit(&doc.snapshot(), op) {
                undo.apply(&mut doc, &[edit]).unwrap();
            }
        }
        let end = without_heads(doc.to_json());
        while let Some(undone) = undo.undo(&mut doc).unwrap() {
            prop_assert!(undone.skipped.is_empty());
        }
        prop_assert_eq!(without_heads(doc.to_json()), start);
        while let Some(redone) = undo.redo(&mut doc).unwrap() {
            prop_assert!(redone.skipped.is_empty());
        }
        prop_assert_eq!(without_heads(doc.to_json()), end);
    }
}

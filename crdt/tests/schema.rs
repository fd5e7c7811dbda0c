//! `validate()` rules, the tolerant read view, and the validated sync receive.

mod common;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjId, ObjType, ReadDoc, ScalarValue, Value, ROOT};
use common::{abc, sync_pair};
use flowhub_crdt::{CrdtError, Endpoint, FlowDoc, Position, SyncState};

/// The object at `path` (map keys from the root).
fn obj(doc: &AutoCommit, path: &[&str]) -> ObjId {
    let mut cur = ROOT;
    for key in path {
        cur = match doc.get(&cur, *key).unwrap() {
            Some((Value::Object(_), id)) => id,
            other => panic!("{path:?}: {other:?}"),
        };
    }
    cur
}

type Craft = fn(&mut AutoCommit);

/// Schema-breaking raw edits, each with the path its error must name.
fn bad_edits() -> Vec<(&'static str, Craft, &'static str)> {
    vec![
        (
            "kind not a string",
            |d| {
                let n = obj(d, &["nodes", "a"]);
                d.put(&n, "kind", 42).unwrap();
            },
            "nodes/a/kind",
        ),
        (
            "kind bad charset",
            |d| {
                let n = obj(d, &["nodes", "a"]);
                d.put(&n, "kind", "HTTP Call").unwrap();
            },
            "nodes/a/kind",
        ),
        (
            "foreign root key",
            |d| d.put(ROOT, "evil", true).unwrap(),
            "evil",
        ),
        (
            "name not a string",
            |d| d.put(ROOT, "name", 5).unwrap(),
            "name",
        ),
        (
            "edges map deleted",
            |d| d.delete(ROOT, "edges").unwrap(),
            "edges",
        ),
        (
            "nodes replaced by list",
            |d| {
                d.put_object(ROOT, "nodes", ObjType::List).unwrap();
            },
            "nodes",
        ),
        (
            "position x not a number",
            |d| {
                let p = obj(d, &["nodes", "a", "position"]);
                d.put(&p, "x", "left").unwrap();
            },
            "nodes/a/position/x",
        ),
        (
            "position x NaN",
            |d| {
                let p = obj(d, &["nodes", "a", "position"]);
                d.put(&p, "x", f64::NAN).unwrap();
            },
            "nodes/a/position/x",
        ),
        (
            "position not a map",
            |d| {
                let n = obj(d, &["nodes", "b"]);
                d.put(&n, "position", "here").unwrap();
            },
            "nodes/b/position",
        ),
        (
            "position extra key",
            |d| {
                let p = obj(d, &["nodes", "a", "position"]);
                d.put(&p, "z", 1.0).unwrap();
            },
            "nodes/a/position/z",
        ),
        (
            "node extra key",
            |d| {
                let n = obj(d, &["nodes", "c"]);
                d.put(&n, "colour", "red").unwrap();
            },
            "nodes/c/colour",
        ),
        (
            "node label deleted",
            |d| {
                let n = obj(d, &["nodes", "c"]);
                d.delete(&n, "label").unwrap();
            },
            "nodes/c/label",
        ),
        (
            "label too long",
            |d| {
                let n = obj(d, &["nodes", "c"]);
                d.put(&n, "label", "x".repeat(1001)).unwrap();
            },
            "nodes/c/label",
        ),
        (
            "node is a scalar",
            |d| {
                let n = obj(d, &["nodes"]);
                d.put(&n, "z", 1).unwrap();
            },
            "nodes/z",
        ),
        (
            "new empty node",
            |d| {
                let n = obj(d, &["nodes"]);
                d.put_object(&n, "z", ObjType::Map).unwrap();
            },
            "nodes/z/kind",
        ),
        (
            "bad node id",
            |d| {
                let n = obj(d, &["nodes"]);
                d.put_object(&n, "bad\nid", ObjType::Map).unwrap();
            },
            "nodes/bad\nid",
        ),
        (
            "config text object",
            |d| {
                let c = obj(d, &["nodes", "a", "config"]);
                d.put_object(&c, "t", ObjType::Text).unwrap();
            },
            "nodes/a/config/t",
        ),
        (
            "config counter",
            |d| {
                let c = obj(d, &["nodes", "a", "config"]);
                d.put(&c, "n", ScalarValue::counter(1)).unwrap();
            },
            "nodes/a/config/n",
        ),
        (
            "config bytes in list",
            |d| {
                let c = obj(d, &["nodes", "a", "config"]);
                let l = d.put_object(&c, "l", ObjType::List).unwrap();
                d.insert(&l, 0, "ok").unwrap();
                d.insert(&l, 1, ScalarValue::Bytes(vec![1])).unwrap();
            },
            "nodes/a/config/l/1",
        ),
        (
            "config too deep",
            |d| {
                let mut c = obj(d, &["nodes", "a", "config"]);
                for _ in 0..32 {
                    c = d.put_object(&c, "d", ObjType::Map).unwrap();
                }
            },
            "nodes/a/config/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d",
        ),
        (
            "config replaced by scalar",
            |d| {
                let n = obj(d, &["nodes", "a"]);
                d.put(&n, "config", ScalarValue::Null).unwrap();
            },
            "nodes/a/config",
        ),
        (
            "edge field deleted",
            |d| {
                let e = obj(d, &["edges", "ab"]);
                d.delete(&e, "source_port").unwrap();
            },
            "edges/ab/source_port",
        ),
        (
            "edge field not a string",
            |d| {
                let e = obj(d, &["edges", "ab"]);
                d.put(&e, "target", 3).unwrap();
            },
            "edges/ab/target",
        ),
        (
            "edge extra key",
            |d| {
                let e = obj(d, &["edges", "bc"]);
                d.put(&e, "weight", 1).unwrap();
            },
            "edges/bc/weight",
        ),
    ]
}

#[test]
fn validate_reports_each_violation_with_its_path() {
    for (name, craft, path) in bad_edits() {
        let mut doc = abc();
        craft(doc.doc_mut());
        doc.doc_mut().commit();
        let err = doc.validate().expect_err(name);
        assert_eq!(err.path(), path, "{name}: {err}");
        assert!(err.to_string().starts_with(path), "{name}: {err}");
    }
}

#[test]
fn error_message_format() {
    let mut doc = abc();
    bad_edits()[0].1(doc.doc_mut());
    assert_eq!(
        doc.validate().unwrap_err().to_string(),
        "nodes/a/kind: expected string"
    );
}

#[test]
fn numeric_coordinates_of_any_width_are_valid() {
    let mut doc = abc();
    let d = doc.doc_mut();
    let p = d
        .put_object(obj(d, &["nodes", "a"]), "position", ObjType::Map)
        .unwrap();
    d.put(&p, "x", 3i64).unwrap();
    d.put(&p, "y", ScalarValue::Uint(4)).unwrap();
    d.commit();
    assert_eq!(doc.validate(), Ok(()));
    assert_eq!(doc.node("a").unwrap().position, Position::new(3.0, 4.0));
}

#[test]
fn losing_conflict_values_are_not_validated() {
    // Two writers set `kind` concurrently; only the winner is checked. The op
    // with the higher actor id wins a same-counter conflict, so we pick actors.
    for (valid_wins, expect_ok) in [(true, true), (false, false)] {
        let mut base = abc();
        let mut good = base.fork();
        let mut bad = base.fork();
        let (hi, lo) = (
            automerge::ActorId::from([0xff; 16]),
            automerge::ActorId::from([0x01; 16]),
        );
        good.doc_mut()
            .set_actor(if valid_wins { hi.clone() } else { lo.clone() });
        bad.doc_mut().set_actor(if valid_wins { lo } else { hi });
        good.relabel_node("a", "fine").unwrap();
        let n = obj(bad.doc(), &["nodes", "a"]);
        bad.doc_mut().put(&n, "label", 7).unwrap();
        bad.doc_mut().commit();
        common::push_changes(&mut good, &mut base);
        common::push_changes(&mut bad, &mut base);
        let conflicts = base.doc().get_all(&n, "label").unwrap().len();
        assert_eq!(conflicts, 2);
        assert_eq!(base.validate().is_ok(), expect_ok);
    }
}

#[test]
fn read_view_skips_malformed_entries_deterministically() {
    let mut doc = abc();
    bad_edits()[0].1(doc.doc_mut()); // nodes/a/kind = 42
    doc.doc_mut().commit();
    let snap = doc.snapshot();
    assert!(!snap.nodes.contains_key("a"), "malformed node skipped");
    assert!(snap.nodes.contains_key("b"));
    assert!(
        !snap.edges.contains_key("ab"),
        "edges to a skipped node are hidden too"
    );
    assert!(snap.edges.contains_key("bc"));
    assert_eq!(doc.node("a"), None);
}

#[test]
fn validated_receive_rejects_each_violation_and_restores_exactly() {
    rejects_each_violation_and_restores_exactly(false);
}

/// The hub's mode: no snapshot per message; a refused one is undone by rebuilding.
#[test]
fn in_place_validated_receive_rejects_each_violation_and_restores_exactly() {
    rejects_each_violation_and_restores_exactly(true);
}

fn rejects_each_violation_and_restores_exactly(in_place: bool) {
    for (name, craft, path) in bad_edits() {
        let mut hub = abc();
        hub.validate_in_place(in_place);
        let mut peer = hub.fork();
        sync_pair(&mut peer, &mut hub, true).unwrap();
        // A valid edit first, so the rejected message mixes good and bad changes.
        peer.move_node("b", Position::new(9.0, 9.0)).unwrap();
        craft(peer.doc_mut());
        peer.doc_mut().commit();

        let heads = hub.heads();
        let json = hub.to_json();
        let saved = hub.save();
        match sync_pair(&mut peer, &mut hub, true) {
            Err(CrdtError::Schema(e)) => assert_eq!(e.path(), path, "{name}"),
            other => panic!("{name}: expected schema error, got {other:?}"),
        }
        assert_eq!(hub.heads(), heads, "{name}");
        assert_eq!(hub.to_json(), json, "{name}");
        assert_eq!(hub.save(), saved, "{name}: document restored byte for byte");
        assert!(hub.missing_deps().is_empty(), "{name}: nothing left queued");
        assert!(!hub.is_poisoned(), "{name}");
        assert_eq!(hub.validate(), Ok(()));

        // Another peer's valid edit still goes through.
        let mut other = FlowDoc::load(&saved).unwrap();
        other.relabel_node("c", "still works").unwrap();
        sync_pair(&mut other, &mut hub, true).unwrap();
        assert_eq!(hub.node("c").unwrap().label, "still works");
        assert_eq!(hub.to_json(), other.to_json());
    }
}

#[test]
fn validated_receive_resets_state_on_rejection() {
    let mut hub = abc();
    let mut peer = hub.fork();
    let n = obj(peer.doc(), &["nodes", "a"]);
    peer.doc_mut().put(&n, "kind", 1).unwrap();
    peer.doc_mut().commit();
    let (mut sp, mut sh) = (SyncState::new(), SyncState::new());
    let mut rejected = false;
    for _ in 0..10 {
        if let Some(m) = peer.generate_sync_message(&mut sp) {
            if let Err(e) = hub.receive_sync_message_validated(&mut sh, &m) {
                assert!(matches!(e, CrdtError::Schema(_)));
                rejected = true;
                break;
            }
        }
        if let Some(m) = hub.generate_sync_message(&mut sh) {
            peer.receive_sync_message(&mut sp, &m).unwrap();
        }
    }
    assert!(rejected);
    assert_eq!(
        format!("{:?}", sh.inner()),
        format!("{:?}", SyncState::new().inner())
    );
}

#[test]
fn validated_receive_accepts_typed_edits_and_reports_applied_changes() {
    let mut hub = abc();
    let mut peer = hub.fork();
    let before = hub.heads();
    peer.add_node(common::node("d", "delay")).unwrap();
    peer.connect(None, Endpoint::new("c", "out"), Endpoint::new("d", "in"))
        .unwrap();
    let expected = peer.changes_since(&before);
    let (mut sp, mut sh) = (SyncState::new(), SyncState::new());
    let mut applied = Vec::new();
    for _ in 0..10 {
        if let Some(m) = peer.generate_sync_message(&mut sp) {
            applied.extend(
                hub.receive_sync_message_validated(&mut sh, &m)
                    .unwrap()
                    .changes,
            );
        }
        if let Some(m) = hub.generate_sync_message(&mut sh) {
            peer.receive_sync_message(&mut sp, &m).unwrap();
        }
    }
    assert_eq!(applied, expected);
    assert_eq!(hub.to_json(), peer.to_json());
}

#[test]
fn has_new_changes_detects_edits_without_applying() {
    let mut hub = abc();
    let mut viewer = hub.fork();
    let (mut sv, mut sh) = (SyncState::new(), SyncState::new());
    // Handshake: no changes either way.
    let hello = viewer.generate_sync_message(&mut sv).unwrap();
    assert!(!hub.sync_message_has_new_changes(&hello).unwrap());
    hub.receive_sync_message(&mut sh, &hello).unwrap();
    if let Some(m) = hub.generate_sync_message(&mut sh) {
        viewer.receive_sync_message(&mut sv, &m).unwrap();
    }
    viewer.relabel_node("a", "sneaky").unwrap();
    let heads = hub.heads();
    let mut saw_new = false;
    for _ in 0..5 {
        if let Some(m) = viewer.generate_sync_message(&mut sv) {
            if hub.sync_message_has_new_changes(&m).unwrap() {
                saw_new = true;
                break;
            }
            hub.receive_sync_message(&mut sh, &m).unwrap();
        }
        if let Some(m) = hub.generate_sync_message(&mut sh) {
            viewer.receive_sync_message(&mut sv, &m).unwrap();
        }
    }
    assert!(saw_new);
    assert_eq!(hub.heads(), heads, "checking must not apply anything");
    assert!(hub.sync_message_has_new_changes(b"\x42garbage").is_err());
}

#[test]
fn has_new_changes_handles_whole_document_messages() {
    // A peer that has nothing (empty heads) and supports v2 gets the whole
    // document as one chunk.
    let mut hub = abc();
    let full = whole_document_message(&mut hub);

    let mut fresh = FlowDoc::new();
    assert!(fresh.sync_message_has_new_changes(&full).unwrap());
    let mut twin = FlowDoc::load(&hub.save()).unwrap();
    assert!(!twin.sync_message_has_new_changes(&full).unwrap());

    // And the validated receive takes it.
    let mut st = SyncState::new();
    let applied = fresh
        .receive_sync_message_validated(&mut st, &full)
        .unwrap();
    assert_eq!(
        applied.changes.len(),
        hub.all_changes().len() - 1,
        "all but genesis are new"
    );
    assert_eq!(fresh.snapshot(), hub.snapshot());
}

#[test]
fn validated_receive_catches_invalid_value_exposed_by_a_delete() {
    // A losing conflict value is not validated (nobody sees it), but if the
    // winner is deleted by someone who never saw the loser, the loser becomes
    // visible. The incremental validation must catch that exposure.
    let mut base = abc();
    let mut good = base.fork();
    let mut bad = base.fork();
    good.doc_mut()
        .set_actor(automerge::ActorId::from([0xff; 16]));
    bad.doc_mut()
        .set_actor(automerge::ActorId::from([0x01; 16]));
    good.add_node(common::node("x", "http")).unwrap();
    let nodes = obj(bad.doc(), &["nodes"]);
    let x = bad.doc_mut().put_object(&nodes, "x", ObjType::Map).unwrap();
    bad.doc_mut().put(&x, "kind", 42).unwrap();
    bad.doc_mut().commit();

    let mut hub = base.fork();
    sync_pair(&mut good, &mut hub, true).unwrap();
    sync_pair(&mut bad, &mut hub, true).expect("a losing invalid value is accepted");
    assert_eq!(hub.validate(), Ok(()));
    assert_eq!(hub.node("x").unwrap().kind, "http");

    let mut deleter = good.fork(); // knows only the valid "x"
    deleter.delete_node("x").unwrap();
    let heads = hub.heads();
    match sync_pair(&mut deleter, &mut hub, true) {
        Err(CrdtError::Schema(e)) => assert_eq!(e.path(), "nodes/x/kind"),
        other => panic!("expected the exposed value to be rejected, got {other:?}"),
    }
    assert_eq!(hub.heads(), heads);
}

#[test]
fn hostile_change_queued_ahead_of_its_dependency_cannot_block_honest_peers() {
    // C1 (honest, valid) <- C2 (hostile, invalid). The attacker sends C2 alone;
    // the hub queues it. When an honest peer later delivers C1, C2 is released
    // and fails validation. The hub must then forget C2, so that the honest
    // peer's retry succeeds instead of failing forever.
    let mut hub = abc();
    let mut honest = hub.fork();
    honest.relabel_node("a", "honest").unwrap();
    let mut attacker = honest.fork();
    let n = obj(attacker.doc(), &["nodes", "a"]);
    attacker.doc_mut().put(&n, "kind", 42).unwrap();
    attacker.doc_mut().commit();
    let c2 = attacker.doc_mut().get_last_local_change().unwrap();

    let msg = common::message_with_changes(vec![c2.hash()], std::slice::from_ref(&c2));
    let mut st = SyncState::new();
    let applied = hub.receive_sync_message_validated(&mut st, &msg).unwrap();
    assert!(applied.is_empty(), "queued, not applied");
    assert_eq!(hub.missing_deps().len(), 1);

    let first = sync_pair(&mut honest, &mut hub, true);
    assert!(matches!(first, Err(CrdtError::Schema(_))), "{first:?}");
    assert!(
        hub.missing_deps().is_empty(),
        "hostile change dropped from the queue"
    );
    assert_eq!(hub.node("a").unwrap().label, "trigger a");

    sync_pair(&mut honest, &mut hub, true).expect("honest retry succeeds");
    assert_eq!(hub.node("a").unwrap().label, "honest");
    assert_eq!(hub.validate(), Ok(()));
}

/// The message a peer that has nothing (a v2 peer: stock automerge-repo and the flowhub
/// clients) receives from `hub`, on a fresh sync state: the whole document as one chunk.
fn whole_document_message(hub: &mut FlowDoc) -> Vec<u8> {
    use automerge::sync::SyncDoc;
    let mut empty = AutoCommit::new();
    let hello = empty
        .sync()
        .generate_sync_message(&mut automerge::sync::State::new())
        .unwrap()
        .encode();
    let mut state = SyncState::new();
    hub.receive_sync_message(&mut state, &hello).unwrap();
    let full = hub.generate_sync_message(&mut state).unwrap();
    let decoded = automerge::sync::Message::decode(&full).unwrap();
    assert_eq!(decoded.changes.len(), 1, "whole-document chunk expected");
    full
}

/// The document chunk of [`whole_document_message`].
fn whole_document_for_a_new_peer(hub: &mut FlowDoc) -> Vec<u8> {
    let full = whole_document_message(hub);
    let decoded = automerge::sync::Message::decode(&full).unwrap();
    let document = decoded.changes.iter().next().unwrap().to_vec();
    document
}

#[test]
fn new_peers_share_one_saved_document_that_leaves_queued_changes_out() {
    let mut hub = abc();
    // A change whose dependency the hub lacks: queued, never validated.
    let mut ahead = hub.fork();
    ahead.relabel_node("a", "first").unwrap();
    ahead.relabel_node("a", "second").unwrap();
    let queued = ahead.doc_mut().get_last_local_change().unwrap();
    let msg = common::message_with_changes(vec![queued.hash()], std::slice::from_ref(&queued));
    let applied = hub
        .receive_sync_message_validated(&mut SyncState::new(), &msg)
        .unwrap();
    assert!(applied.is_empty(), "queued, not applied");
    assert_eq!(hub.missing_deps().len(), 1);

    let first = whole_document_for_a_new_peer(&mut hub);
    let second = whole_document_for_a_new_peer(&mut hub);
    assert_eq!(first, second, "the same heads give the same saved document");
    let mut loaded = FlowDoc::load(&first).unwrap();
    assert!(
        !loaded.has_change(&queued.hash()) && loaded.missing_deps().is_empty(),
        "a queued change is not forwarded"
    );
    assert_eq!(loaded.heads(), hub.heads());
    assert_eq!(loaded.snapshot(), hub.snapshot());

    // A new change: the next new peer gets a document that holds it.
    hub.relabel_node("b", "after").unwrap();
    let third = whole_document_for_a_new_peer(&mut hub);
    assert_ne!(third, first);
    let mut loaded = FlowDoc::load(&third).unwrap();
    assert_eq!(loaded.node("b").unwrap().label, "after");
    assert_eq!(loaded.heads(), hub.heads());
}

//! Reading the flow as it was at given heads: `to_json_at`, `snapshot_at`,
//! `validate_at`, `at_heads`, and `parse_heads`.

mod common;

use common::{abc, node, sync_pair};
use flowhub_crdt::{parse_heads, ChangeHash, CrdtError, Endpoint, FlowDoc, Position};
use serde_json::json;

#[test]
fn edits_after_recorded_heads_do_not_show_at_them() {
    let mut doc = abc();
    doc.set_name("v1").unwrap();
    let heads = doc.heads();
    let json_then = doc.to_json();
    let snapshot_then = doc.snapshot();

    doc.set_name("v2").unwrap();
    doc.move_node("a", Position::new(5.0, 5.0)).unwrap();
    doc.relabel_node("b", "renamed").unwrap();
    doc.configure_node("c", "url", json!("https://x")).unwrap();
    doc.add_node(node("d", "delay")).unwrap();
    doc.connect(
        Some("cd".into()),
        Endpoint::new("c", "out"),
        Endpoint::new("d", "in"),
    )
    .unwrap();
    doc.delete_node("a").unwrap();
    assert_ne!(doc.to_json(), json_then);

    assert_eq!(doc.to_json_at(&heads).unwrap(), json_then);
    assert_eq!(doc.snapshot_at(&heads).unwrap(), snapshot_then);
    assert_eq!(doc.validate_at(&heads).unwrap(), ());

    let mut past = doc.at_heads(&heads).unwrap();
    assert_eq!(past.heads(), heads);
    assert_eq!(past.to_json(), json_then);
    assert_ne!(past.actor_hex(), doc.actor_hex());
    // The view is detached: editing it leaves the document alone.
    let now = doc.to_json();
    past.relabel_node("a", "only in the past").unwrap();
    assert_eq!(doc.to_json(), now);
}

#[test]
fn at_current_heads_equals_the_present() {
    let mut doc = abc();
    let heads = doc.heads();
    assert_eq!(doc.to_json_at(&heads).unwrap(), doc.to_json());
    assert_eq!(doc.at_heads(&heads).unwrap().to_json(), doc.to_json());
}

#[test]
fn heads_in_json_are_the_given_heads_sorted_and_deduplicated() {
    // Two concurrent edits give a document with two heads.
    let mut a = abc();
    let mut b = a.fork();
    let ha = a.relabel_node("a", "from a").unwrap();
    let hb = b.relabel_node("b", "from b").unwrap();
    sync_pair(&mut a, &mut b, false).unwrap();
    a.move_node("c", Position::new(9.0, 9.0)).unwrap();

    let j = a.to_json_at(&[hb, ha, hb]).unwrap();
    let mut want = vec![ha.to_string(), hb.to_string()];
    want.sort();
    assert_eq!(j["heads"], json!(want));
    assert_eq!(j["nodes"]["a"]["label"], "from a");
    assert_eq!(j["nodes"]["b"]["label"], "from b");
    assert_eq!(j["nodes"]["c"]["position"], json!({"x": 0.0, "y": 0.0}));

    // Only one side's head: the other side's edit is not there.
    let only_a = a.to_json_at(&[ha]).unwrap();
    assert_eq!(only_a["nodes"]["a"]["label"], "from a");
    assert_eq!(only_a["nodes"]["b"]["label"], "http b");
    assert_eq!(only_a["heads"], json!([ha.to_string()]));
}

#[test]
fn unknown_heads_are_named_in_the_error() {
    let mut doc = abc();
    let known = doc.heads()[0];
    let unknown = ChangeHash([7; 32]);
    for result in [
        doc.to_json_at(&[known, unknown]).map(drop),
        doc.snapshot_at(&[unknown]).map(drop),
        doc.validate_at(&[unknown]),
        doc.at_heads(&[unknown, known]).map(drop),
    ] {
        match result {
            Err(CrdtError::UnknownHeads(hashes)) => {
                assert_eq!(hashes, vec![unknown.to_string()])
            }
            other => panic!("expected UnknownHeads, got {other:?}"),
        }
    }
    let message = doc.to_json_at(&[unknown]).unwrap_err().to_string();
    assert!(message.contains(&unknown.to_string()), "{message}");

    // A change of another replica we never received is unknown too.
    let mut other = doc.fork();
    let theirs = other.relabel_node("a", "x").unwrap();
    assert!(matches!(
        doc.to_json_at(&[theirs]),
        Err(CrdtError::UnknownHeads(_))
    ));
    assert!(matches!(
        doc.to_json_at(&[]),
        Err(CrdtError::InvalidHeads(_))
    ));
}

#[test]
fn queued_changes_count_as_unknown() {
    let mut doc = abc();
    let mut peer = doc.fork();
    peer.relabel_node("a", "first").unwrap();
    let second = peer.relabel_node("a", "second").unwrap();
    let last = peer.changes_since(&doc.heads()).pop().unwrap();
    doc.apply_changes(&[last.bytes]).unwrap();
    assert_eq!(doc.missing_deps().len(), 1);
    assert!(matches!(
        doc.to_json_at(&[second]),
        Err(CrdtError::UnknownHeads(_))
    ));
}

#[test]
fn parse_heads_round_trips_and_rejects_garbage() {
    let mut doc = abc();
    let mut other = doc.fork();
    doc.relabel_node("a", "x").unwrap();
    other.relabel_node("b", "y").unwrap();
    sync_pair(&mut doc, &mut other, false).unwrap();
    let hex = doc.heads_hex();
    assert_eq!(hex.len(), 2);
    assert_eq!(parse_heads(&hex).unwrap(), doc.heads());
    let spaced = vec![format!(" {} ", hex[0])];
    assert_eq!(parse_heads(&spaced).unwrap()[0].to_string(), hex[0]);
    let upper = vec![hex[0].to_uppercase()];
    assert_eq!(parse_heads(&upper).unwrap()[0].to_string(), hex[0]);
    assert!(parse_heads::<String>(&[]).unwrap().is_empty());

    for bad in ["", "zz", "abc", &hex[0][..63], &format!("{}0", hex[0])] {
        assert!(
            matches!(parse_heads(&[bad]), Err(CrdtError::InvalidHeads(_))),
            "{bad:?}"
        );
    }
    // End to end, as the hub does for `?heads=a,b`.
    let query = hex.join(",");
    let parts: Vec<String> = query.split(',').map(str::to_owned).collect();
    let heads = parse_heads(&parts).unwrap();
    assert_eq!(doc.to_json_at(&heads).unwrap(), doc.to_json());
}

#[test]
fn at_heads_of_a_loaded_document() {
    let mut doc = abc();
    let heads = doc.heads();
    let then = doc.to_json();
    doc.delete_node("b").unwrap();
    let mut loaded = FlowDoc::load(&doc.save()).unwrap();
    assert_eq!(loaded.to_json_at(&heads).unwrap(), then);
    assert_eq!(loaded.at_heads(&heads).unwrap().to_json(), then);
}

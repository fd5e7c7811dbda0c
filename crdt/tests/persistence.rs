//! save/load/load_parts round trips, change exchange, and hostile input.

mod common;

use common::{abc, change_on_missing_object, message_with_changes, node, sync_pair};
use flowhub_crdt::{CrdtError, FlowDoc, Position, SyncState};
use proptest::prelude::*;

#[test]
fn save_load_round_trip() {
    let mut doc = abc();
    doc.set_name("persisted").unwrap();
    doc.configure_node(
        "b",
        "retry",
        serde_json::json!({"max": 3, "backoff": [1, 2]}),
    )
    .unwrap();
    let bytes = doc.save();
    let mut loaded = FlowDoc::load(&bytes).unwrap();
    assert_eq!(loaded.heads(), doc.heads());
    assert_eq!(loaded.to_json(), doc.to_json());
    assert_ne!(
        loaded.actor_hex(),
        doc.actor_hex(),
        "loaded replica gets a fresh actor"
    );
    // Both can keep editing and merge.
    loaded.move_node("a", Position::new(1.0, 1.0)).unwrap();
    doc.move_node("c", Position::new(2.0, 2.0)).unwrap();
    sync_pair(&mut doc, &mut loaded, true).unwrap();
    assert_eq!(doc.to_json(), loaded.to_json());
}

#[test]
fn load_parts_from_snapshot_plus_changes() {
    let mut doc = abc();
    let snapshot = doc.save();
    let at_snapshot = doc.heads();
    doc.relabel_node("a", "later").unwrap();
    doc.add_node(node("d", "delay")).unwrap();
    let later: Vec<Vec<u8>> = doc
        .changes_since(&at_snapshot)
        .into_iter()
        .map(|c| c.bytes)
        .collect();
    assert_eq!(later.len(), 2);

    let mut rebuilt = FlowDoc::load_parts(Some(&snapshot), &later).unwrap();
    assert_eq!(rebuilt.heads(), doc.heads());
    assert_eq!(rebuilt.to_json(), doc.to_json());

    // Duplicates (changes already in the snapshot, or repeated) are harmless.
    let mut dup: Vec<Vec<u8>> = doc.all_changes().into_iter().map(|c| c.bytes).collect();
    dup.extend(later.clone());
    let mut rebuilt = FlowDoc::load_parts(Some(&snapshot), &dup).unwrap();
    assert_eq!(rebuilt.to_json(), doc.to_json());

    // No snapshot: the full change log (genesis included or not) is enough.
    let all: Vec<Vec<u8>> = doc.all_changes().into_iter().map(|c| c.bytes).collect();
    let mut from_log = FlowDoc::load_parts(None, &all).unwrap();
    assert_eq!(from_log.to_json(), doc.to_json());
    let mut without_genesis = FlowDoc::load_parts(None, &all[1..]).unwrap();
    assert_eq!(without_genesis.to_json(), doc.to_json());

    // Out-of-order changes are fine too.
    let mut reversed = all.clone();
    reversed.reverse();
    let mut out_of_order = FlowDoc::load_parts(None, &reversed).unwrap();
    assert_eq!(out_of_order.to_json(), doc.to_json());
    assert!(out_of_order.missing_deps().is_empty());
}

#[test]
fn missing_deps_are_reported_and_filled() {
    let mut doc = abc();
    let base: Vec<Vec<u8>> = doc.all_changes().into_iter().map(|c| c.bytes).collect();
    let base_heads = doc.heads();
    doc.relabel_node("a", "one").unwrap();
    doc.relabel_node("a", "two").unwrap();
    let changes = doc.changes_since(&base_heads);

    let mut other = FlowDoc::load_parts(None, &base).unwrap();
    let applied = other.apply_changes(&[changes[1].bytes.clone()]).unwrap();
    assert!(applied.is_empty(), "queued, not applied");
    assert_eq!(other.missing_deps(), vec![changes[0].hash]);
    let applied = other.apply_changes(&[changes[0].bytes.clone()]).unwrap();
    assert_eq!(applied, changes, "both applied, in causal order");
    assert!(other.missing_deps().is_empty());
    assert_eq!(other.node("a").unwrap().label, "two");
}

#[test]
fn change_exchange_reports_new_changes_only() {
    let mut a = abc();
    let mut b = a.fork();
    b.relabel_node("a", "x").unwrap();
    let raw: Vec<Vec<u8>> = b.all_changes().into_iter().map(|c| c.bytes).collect();
    let applied = a.apply_changes(&raw).unwrap();
    assert_eq!(applied.len(), 1);
    assert!(a.has_change(&applied[0].hash));
    assert_eq!(applied[0].hash_hex(), b.heads_hex()[0]);
    assert!(
        a.apply_changes(&raw).unwrap().is_empty(),
        "second time nothing is new"
    );
}

#[test]
fn load_rejects_non_flow_documents() {
    assert!(matches!(
        FlowDoc::load(&[]),
        Err(CrdtError::InvalidDocument(_))
    ));
    let mut plain = automerge::AutoCommit::new();
    use automerge::transaction::Transactable;
    plain.put(automerge::ROOT, "nodes", "nope").unwrap();
    assert!(matches!(
        FlowDoc::load(&plain.save()),
        Err(CrdtError::InvalidDocument(_))
    ));
}

#[test]
fn semantically_invalid_changes_are_contained() {
    // automerge 0.12 panics applying these; every entry point must turn that
    // into an error and leave the document exactly as it was.
    let mut doc = abc();
    let heads = doc.heads();
    let saved = doc.save();
    let bad = change_on_missing_object(heads.clone());

    let r = doc.apply_changes(&[bad.raw_bytes().to_vec()]);
    assert!(matches!(r, Err(CrdtError::InvalidChange(_))), "{r:?}");
    assert_eq!(doc.save(), saved);

    let msg = message_with_changes(vec![bad.hash()], std::slice::from_ref(&bad));
    let mut st = SyncState::new();
    let r = doc.receive_sync_message(&mut st, &msg);
    assert!(matches!(r, Err(CrdtError::InvalidSyncMessage(_))), "{r:?}");
    assert_eq!(doc.save(), saved);
    let r = doc.receive_sync_message_validated(&mut st, &msg);
    assert!(matches!(r, Err(CrdtError::InvalidSyncMessage(_))), "{r:?}");
    assert_eq!(doc.save(), saved);

    assert!(FlowDoc::load_parts(Some(&saved), &[bad.raw_bytes().to_vec()]).is_err());

    // The document is still fully usable.
    doc.relabel_node("a", "alive").unwrap();
    assert_eq!(doc.validate(), Ok(()));
}

/// In place (the hub's mode) there is no snapshot to go back to after a panic: the
/// document says it is poisoned, so the hub rebuilds it from its store.
#[test]
fn semantically_invalid_changes_poison_an_in_place_document() {
    let mut doc = abc();
    doc.validate_in_place(true);
    let bad = change_on_missing_object(doc.heads());
    let msg = message_with_changes(vec![bad.hash()], std::slice::from_ref(&bad));
    let r = doc.receive_sync_message_validated(&mut SyncState::new(), &msg);
    assert!(matches!(r, Err(CrdtError::InvalidSyncMessage(_))), "{r:?}");
    assert!(doc.is_poisoned());

    let mut doc = abc();
    doc.validate_in_place(true);
    let bad = change_on_missing_object(doc.heads());
    let r = doc.receive_changes_validated(bad.raw_bytes());
    assert!(matches!(r, Err(CrdtError::InvalidSyncMessage(_))), "{r:?}");
    assert!(doc.is_poisoned());

    // The unvalidated receives (the Rust client's, the hub's bus) go in place too.
    let mut doc = abc();
    doc.validate_in_place(true);
    let bad = change_on_missing_object(doc.heads());
    let r = doc.apply_changes(&[bad.raw_bytes().to_vec()]);
    assert!(matches!(r, Err(CrdtError::InvalidChange(_))), "{r:?}");
    assert!(doc.is_poisoned());

    let mut doc = abc();
    doc.validate_in_place(true);
    let bad = change_on_missing_object(doc.heads());
    let r = doc.receive_changes(bad.raw_bytes());
    assert!(r.is_err(), "{r:?}");
    assert!(doc.is_poisoned());

    let mut doc = abc();
    doc.validate_in_place(true);
    let bad = change_on_missing_object(doc.heads());
    let msg = message_with_changes(vec![bad.hash()], std::slice::from_ref(&bad));
    let mut st = SyncState::new();
    let r = doc.receive_sync_message(&mut st, &msg);
    assert!(matches!(r, Err(CrdtError::InvalidSyncMessage(_))), "{r:?}");
    assert!(doc.is_poisoned());
}

#[test]
fn corrupt_chunk_in_sync_message_rejects_whole_message() {
    let mut doc = abc();
    let mut peer = doc.fork();
    peer.relabel_node("a", "x").unwrap();
    let good = peer.doc_mut().get_last_local_change().unwrap();
    let mut corrupt = good.raw_bytes().to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let msg = automerge::sync::Message {
        heads: vec![],
        need: vec![],
        have: vec![],
        changes: automerge::sync::ChunkList::from(vec![good.raw_bytes().to_vec(), corrupt]),
        flags: None,
        version: automerge::sync::MessageVersion::V1,
    }
    .encode();
    let heads = doc.heads();
    let mut st = SyncState::new();
    assert!(doc.receive_sync_message(&mut st, &msg).is_err());
    assert_eq!(doc.heads(), heads);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic any decoding entry point, and never change
    /// the document.
    #[test]
    fn random_bytes_are_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), prefix in 0usize..4) {
        // Also try inputs that start like real messages/chunks so parsing goes deeper.
        let mut input = match prefix {
            0 => vec![],
            1 => vec![0x42],
            2 => vec![0x43],
            _ => vec![0x85, 0x6f, 0x4a, 0x83],
        };
        input.extend(bytes);
        let mut doc = abc();
        let heads = doc.heads();
        let mut st = SyncState::new();
        let _ = doc.receive_sync_message(&mut st, &input);
        let _ = doc.receive_sync_message_validated(&mut st, &input);
        let _ = doc.sync_message_has_new_changes(&input);
        let _ = doc.apply_changes(&[input.clone()]);
        let _ = FlowDoc::load(&input);
        let _ = FlowDoc::load_parts(Some(&input), &[]);
        let _ = FlowDoc::load_parts(None, &[input.clone()]);
        let _ = SyncState::decode(&input);
        prop_assert_eq!(doc.heads(), heads);
    }

    /// Real messages, changes and documents with bytes flipped.
    #[test]
    fn mutated_real_bytes_are_errors_not_panics(pos in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let mut doc = abc();
        let mut peer = doc.fork();
        peer.relabel_node("a", "x").unwrap();
        let mut st = SyncState::new();
        let msg = peer.generate_sync_message(&mut st).unwrap();
        let change = peer.changes_since(&doc.heads()).remove(0).bytes;
        let saved = peer.save();
        for original in [msg, change, saved] {
            let mut bytes = original.clone();
            let i = pos.index(bytes.len());
            bytes[i] ^= xor;
            let mut target = abc();
            let mut s = SyncState::new();
            let _ = target.receive_sync_message_validated(&mut s, &bytes);
            let _ = target.receive_sync_message(&mut s, &bytes);
            let _ = target.sync_message_has_new_changes(&bytes);
            let _ = target.apply_changes(&[bytes.clone()]);
            let _ = FlowDoc::load(&bytes);
            let _ = FlowDoc::load_parts(None, &[bytes.clone()]);
            prop_assert_eq!(target.validate(), Ok(()));
        }
    }
}

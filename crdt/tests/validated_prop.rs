//! Property: the validated receive (which re-checks only what the incoming
//! patches touched) accepts exactly when validating the whole merged document
//! from scratch would, and leaves the hub untouched when it refuses.

mod common;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjId, ObjType, ReadDoc, ScalarValue, Value, ROOT};
use common::{abc, sync_pair};
use flowhub_crdt::{CrdtError, Endpoint, Position};
use proptest::prelude::*;

/// Objects a raw write may target, as key paths from the root.
const TARGETS: &[&[&str]] = &[
    &[],
    &["nodes"],
    &["edges"],
    &["nodes", "a"],
    &["nodes", "b"],
    &["nodes", "a", "position"],
    &["nodes", "a", "config"],
    &["nodes", "a", "config", "nested"],
    &["edges", "ab"],
    &["nodes", "n1"],
];
const KEYS: &[&str] = &[
    "kind",
    "label",
    "position",
    "config",
    "x",
    "y",
    "source",
    "target_port",
    "name",
    "nodes",
    "edges",
    "a",
    "b",
    "ab",
    "n1",
    "nested",
    "evil",
];

#[derive(Debug, Clone)]
enum Raw {
    Put {
        target: usize,
        key: usize,
        value: usize,
    },
    Delete {
        target: usize,
        key: usize,
    },
    Typed(usize),
}

fn value(i: usize) -> Option<ScalarValue> {
    Some(match i {
        0 => ScalarValue::Str("http".into()),
        1 => ScalarValue::Str("Not A Kind".into()),
        2 => ScalarValue::Int(3),
        3 => ScalarValue::F64(1.5),
        4 => ScalarValue::F64(f64::NAN),
        5 => ScalarValue::Null,
        6 => ScalarValue::Boolean(true),
        7 => ScalarValue::counter(1),
        8 => ScalarValue::Bytes(vec![1, 2]),
        _ => return None, // objects, see `put`
    })
}

fn resolve(doc: &AutoCommit, path: &[&str]) -> Option<ObjId> {
    let mut cur = ROOT;
    for key in path {
        cur = match doc.get(&cur, *key).ok()?? {
            (Value::Object(ObjType::Map), id) => id,
            _ => return None,
        };
    }
    Some(cur)
}

fn raw_edit(doc: &mut flowhub_crdt::FlowDoc, op: &Raw) {
    match *op {
        Raw::Typed(i) => {
            let _ = match i % 4 {
                0 => doc.move_node("b", Position::new(1.0, 2.0)).map(drop),
                1 => doc.relabel_node("a", "fine").map(drop),
                2 => doc
                    .connect(None, Endpoint::new("a", "o"), Endpoint::new("c", "i"))
                    .map(drop),
                _ => doc
                    .configure_node("a", "nested", serde_json::json!({"ok": [1, 2]}))
                    .map(drop),
            };
        }
        Raw::Put {
            target,
            key,
            value: v,
        } => {
            let d = doc.doc_mut();
            if let Some(obj) = resolve(d, TARGETS[target % TARGETS.len()]) {
                let key = KEYS[key % KEYS.len()];
                let _ = match value(v % 12) {
                    Some(s) => d.put(&obj, key, s),
                    None => d
                        .put_object(
                            &obj,
                            key,
                            [ObjType::Map, ObjType::List, ObjType::Text][v % 3],
                        )
                        .map(drop),
                };
                d.commit();
            }
        }
        Raw::Delete { target, key } => {
            let d = doc.doc_mut();
            if let Some(obj) = resolve(d, TARGETS[target % TARGETS.len()]) {
                let _ = d.delete(&obj, KEYS[key % KEYS.len()]);
                d.commit();
            }
        }
    }
}

fn raw() -> impl Strategy<Value = Raw> {
    prop_oneof![
        3 => (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(target, key, value)| Raw::Put { target, key, value }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(target, key)| Raw::Delete { target, key }),
        2 => any::<usize>().prop_map(Raw::Typed),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn incremental_validation_matches_full_validation(
        ops in proptest::collection::vec(raw(), 1..6),
        in_place in any::<bool>(),
    ) {
        let mut hub = abc();
        hub.validate_in_place(in_place);
        hub.configure_node("a", "nested", serde_json::json!({"deep": {"er": 1}})).unwrap();
        let mut peer = hub.fork();
        let mut reference = hub.fork();
        for op in &ops {
            raw_edit(&mut peer, op);
        }
        let before_heads = hub.heads();
        let before_json = hub.to_json();

        let result = sync_pair(&mut peer, &mut hub, true);
        sync_pair(&mut peer, &mut reference, false).unwrap();
        let full = reference.validate();

        match (&result, &full) {
            (Ok(()), Ok(())) => prop_assert_eq!(hub.to_json(), reference.to_json()),
            (Err(CrdtError::Schema(got)), Err(want)) => {
                // Either violation may be reported first; both must be real.
                let _ = (got, want);
                prop_assert_eq!(hub.heads(), before_heads);
                prop_assert_eq!(hub.to_json(), before_json);
                prop_assert!(!hub.is_poisoned());
            }
            _ => prop_assert!(false, "validated receive {:?} but full validation {:?}", result, full),
        }
    }
}

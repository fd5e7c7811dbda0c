//! Property: replicas that make arbitrary typed edits concurrently and then
//! merge — in any order, by raw change exchange or the sync protocol — end up
//! identical, schema-valid, and without visible dangling edges.

mod common;

use common::{push_changes, sync_pair};
use flowhub_crdt::{CrdtError, Endpoint, FlowDoc, NewNode, Position};
use proptest::prelude::*;
use serde_json::json;

const REPLICAS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Add {
        kind: usize,
        explicit: Option<u8>,
    },
    Move {
        pick: usize,
        x: i16,
        y: i16,
    },
    Relabel {
        pick: usize,
        label: u8,
    },
    Configure {
        pick: usize,
        key: u8,
        value: usize,
    },
    Delete {
        pick: usize,
    },
    Connect {
        from: usize,
        to: usize,
        explicit: Option<u8>,
    },
    Disconnect {
        pick: usize,
    },
    Rename {
        name: u8,
    },
    Repair,
}

#[derive(Debug, Clone)]
enum Merge {
    /// Raw changes from one replica to another.
    Changes { from: usize, to: usize },
    /// Sync protocol until quiescent; `validated` = `to` uses the hub receive.
    Sync { a: usize, b: usize, validated: bool },
}

const KINDS: [&str; 7] = [
    "trigger",
    "action",
    "http",
    "filter",
    "transform",
    "decision",
    "delay",
];

fn config_value(i: usize) -> serde_json::Value {
    match i % 6 {
        0 => json!("https://example.com"),
        1 => json!(42),
        2 => json!(-1.5),
        3 => json!(null),
        4 => json!({"headers": {"a": "b"}, "list": [1, "two", {"three": 3}]}),
        _ => json!([true, false, []]),
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..KINDS.len(), proptest::option::of(0u8..3)).prop_map(|(kind, explicit)| Op::Add { kind, explicit }),
        2 => (any::<usize>(), any::<i16>(), any::<i16>()).prop_map(|(pick, x, y)| Op::Move { pick, x, y }),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(pick, label)| Op::Relabel { pick, label }),
        2 => (any::<usize>(), 0u8..3, any::<usize>()).prop_map(|(pick, key, value)| Op::Configure { pick, key, value }),
        1 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        4 => (any::<usize>(), any::<usize>(), proptest::option::of(0u8..2))
            .prop_map(|(from, to, explicit)| Op::Connect { from, to, explicit }),
        1 => any::<usize>().prop_map(|pick| Op::Disconnect { pick }),
        1 => any::<u8>().prop_map(|name| Op::Rename { name }),
        1 => Just(Op::Repair),
    ]
}

fn merge() -> impl Strategy<Value = Merge> {
    prop_oneof![
        (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Merge::Changes { from, to }),
        (0..REPLICAS, 0..REPLICAS, any::<bool>()).prop_map(|(a, b, validated)| Merge::Sync {
            a,
            b,
            validated
        }),
    ]
}

fn pick(ids: &[String], i: usize) -> Option<&String> {
    (!ids.is_empty()).then(|| &ids[i % ids.len()])
}

/// Apply `op` using only ids this replica can see. Errors that a concurrent
/// world legitimately produces (an explicit id already taken) are fine;
/// anything else fails the test.
fn apply(doc: &mut FlowDoc, op: &Op) {
    let snap = doc.snapshot();
    let nodes: Vec<String> = snap.nodes.keys().cloned().collect();
    let edges: Vec<String> = snap.edges.keys().cloned().collect();
    let result: Result<(), CrdtError> = match op {
        Op::Add { kind, explicit } => {
            let mut n = NewNode::new(
                KINDS[*kind],
                format!("{} node", KINDS[*kind]),
                Position::new(0.0, 0.0),
            );
            n.id = explicit.map(|k| format!("x{k}"));
            doc.add_node(n).map(drop)
        }
        Op::Move { pick: p, x, y } => match pick(&nodes, *p) {
            Some(id) => doc
                .move_node(id, Position::new(f64::from(*x), f64::from(*y) / 4.0))
                .map(drop),
            None => Ok(()),
        },
        Op::Relabel { pick: p, label } => match pick(&nodes, *p) {
            Some(id) => doc.relabel_node(id, &format!("label {label}")).map(drop),
            None => Ok(()),
        },
        Op::Configure {
            pick: p,
            key,
            value,
        } => match pick(&nodes, *p) {
            Some(id) => doc
                .configure_node(id, &format!("k{key}"), config_value(*value))
                .map(drop),
            None => Ok(()),
        },
        Op::Delete { pick: p } => match pick(&nodes, *p) {
            Some(id) => doc.delete_node(id).map(drop),
            None => Ok(()),
        },
        Op::Connect { from, to, explicit } => match (pick(&nodes, *from), pick(&nodes, *to)) {
            (Some(a), Some(b)) => doc
                .connect(
                    explicit.map(|k| format!("ex{k}")),
                    Endpoint::new(a, "out"),
                    Endpoint::new(b, "in"),
                )
                .map(drop),
            _ => Ok(()),
        },
        Op::Disconnect { pick: p } => match pick(&edges, *p) {
            Some(id) => doc.disconnect(id).map(drop),
            None => Ok(()),
        },
        Op::Rename { name } => doc.set_name(&format!("flow {name}")).map(drop),
        Op::Repair => doc.repair().map(drop),
    };
    match result {
        Ok(()) | Err(CrdtError::DuplicateId(_)) => {}
        Err(e) => panic!("{op:?} failed: {e}"),
    }
}

fn two(docs: &mut [FlowDoc], a: usize, b: usize) -> (&mut FlowDoc, &mut FlowDoc) {
    assert_ne!(a, b);
    if a < b {
        let (l, r) = docs.split_at_mut(b);
        (&mut l[a], &mut r[0])
    } else {
        let (l, r) = docs.split_at_mut(a);
        (&mut r[0], &mut l[b])
    }
}

fn do_merge(docs: &mut [FlowDoc], m: &Merge) {
    match *m {
        Merge::Changes { from, to } if from != to => {
            let (f, t) = two(docs, from, to);
            push_changes(f, t);
            assert_eq!(t.validate(), Ok(()));
        }
        Merge::Sync { a, b, validated } if a != b => {
            let (x, y) = two(docs, a, b);
            sync_pair(x, y, validated).expect("typed-edit merges are always valid");
            assert_eq!(x.heads(), y.heads());
        }
        _ => {}
    }
}

fn assert_converged(docs: &mut [FlowDoc]) {
    let heads = docs[0].heads();
    let json = docs[0].to_json();
    for doc in docs.iter_mut() {
        assert_eq!(doc.heads(), heads);
        assert_eq!(doc.to_json(), json);
        assert_eq!(doc.validate(), Ok(()));
        let snap = doc.snapshot();
        for edge in snap.edges.values() {
            assert!(
                snap.nodes.contains_key(&edge.source.node),
                "dangling source in view"
            );
            assert!(
                snap.nodes.contains_key(&edge.target.node),
                "dangling target in view"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge(
        base_nodes in 0usize..6,
        rounds in proptest::collection::vec(
            (proptest::collection::vec((0..REPLICAS, op()), 4..16), proptest::collection::vec(merge(), 0..3)),
            1..4,
        ),
        final_order in Just((0..REPLICAS).flat_map(|a| (0..REPLICAS).map(move |b| (a, b))).filter(|(a, b)| a != b).collect::<Vec<_>>()).prop_shuffle(),
        final_by_sync in proptest::collection::vec(any::<bool>(), 6),
    ) {
        let mut docs: Vec<FlowDoc> = (0..REPLICAS).map(|_| FlowDoc::new()).collect();
        // A shared starting graph, so concurrent edits hit the same nodes.
        for i in 0..base_nodes {
            apply(&mut docs[0], &Op::Add { kind: i % KINDS.len(), explicit: None });
        }
        for b in 1..REPLICAS {
            let (x, y) = two(&mut docs, 0, b);
            sync_pair(x, y, false).unwrap();
        }
        for (ops, merges) in &rounds {
            for (replica, op) in ops {
                apply(&mut docs[*replica], op);
            }
            for m in merges {
                do_merge(&mut docs, m);
            }
        }

        // Full merge: every ordered pair once in a random order (each by raw
        // changes or sync), then a second pass so everything has propagated.
        for pass in 0..2 {
            for (i, &(a, b)) in final_order.iter().enumerate() {
                let m = if final_by_sync[i] {
                    Merge::Sync { a, b, validated: pass == 0 }
                } else {
                    Merge::Changes { from: a, to: b }
                };
                do_merge(&mut docs, &m);
            }
        }
        assert_converged(&mut docs);

        // A final sync round between every pair must be quiescent and change nothing.
        for &(a, b) in &final_order {
            let (x, y) = two(&mut docs, a, b);
            sync_pair(x, y, true).unwrap();
        }
        assert_converged(&mut docs);

        // Repair on one replica, propagated, removes dangling edges everywhere
        // without changing what anyone sees.
        let view = docs[0].snapshot();
        docs[0].repair().unwrap();
        for b in 1..REPLICAS {
            let (x, y) = two(&mut docs, 0, b);
            sync_pair(x, y, true).unwrap();
        }
        assert_converged(&mut docs);
        for doc in docs.iter_mut() {
            prop_assert!(doc.dangling_edges().unwrap().is_empty());
            prop_assert_eq!(doc.snapshot(), view.clone());
            prop_assert_eq!(doc.repair().unwrap(), None);
        }
    }
}

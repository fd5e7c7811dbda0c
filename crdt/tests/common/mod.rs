//! Helpers shared by the integration tests.
#![allow(dead_code)]

use automerge::legacy::{self, Key, ObjectId, OpId, OpType};
use automerge::sync::{ChunkList, Message, MessageVersion};
use automerge::{ActorId, Change, ScalarValue};
use flowhub_crdt::{ChangeHash, Endpoint, FlowDoc, NewNode, Position, SyncState};

/// Run the sync protocol between `a` and `b` until neither has anything to
/// send. `validated` makes `b` (the "hub") use the validated receive. Returns
/// the first error `b` reported, if any (and stops there).
pub fn sync_pair(
    a: &mut FlowDoc,
    b: &mut FlowDoc,
    validated: bool,
) -> Result<(), flowhub_crdt::CrdtError> {
    let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
    for _ in 0..100 {
        let ab = a.generate_sync_message(&mut sa);
        if let Some(m) = &ab {
            if validated {
                b.receive_sync_message_validated(&mut sb, m)?;
            } else {
                b.receive_sync_message(&mut sb, m)?;
            }
        }
        let ba = b.generate_sync_message(&mut sb);
        if let Some(m) = &ba {
            a.receive_sync_message(&mut sa, m)?;
        }
        if ab.is_none() && ba.is_none() {
            return Ok(());
        }
    }
    panic!("sync did not quiesce in 100 rounds");
}

/// Send `from` every change `to` lacks, as raw changes.
pub fn push_changes(from: &mut FlowDoc, to: &mut FlowDoc) {
    let have = to.heads();
    let raw: Vec<Vec<u8>> = from
        .changes_since(&have)
        .into_iter()
        .map(|c| c.bytes)
        .collect();
    to.apply_changes(&raw).expect("apply changes");
}

/// A node with an explicit id.
pub fn node(id: &str, kind: &str) -> NewNode {
    NewNode::new(kind, format!("{kind} {id}"), Position::new(0.0, 0.0)).with_id(id)
}

/// A flow with nodes a -> b -> c.
pub fn abc() -> FlowDoc {
    let mut doc = FlowDoc::new();
    for (id, kind) in [("a", "trigger"), ("b", "http"), ("c", "action")] {
        doc.add_node(node(id, kind)).expect("add");
    }
    doc.connect(
        Some("ab".into()),
        Endpoint::new("a", "out"),
        Endpoint::new("b", "in"),
    )
    .expect("connect");
    doc.connect(
        Some("bc".into()),
        Endpoint::new("b", "out"),
        Endpoint::new("c", "in"),
    )
    .expect("connect");
    doc
}

/// A well-formed change (valid encoding and hash) whose single op writes into
/// an object that does not exist — automerge 0.12 panics applying it.
pub fn change_on_missing_object(deps: Vec<ChangeHash>) -> Change {
    let actor = ActorId::random();
    legacy::Change {
        operations: vec![legacy::Op {
            action: OpType::Put(ScalarValue::Str("boom".into())),
            obj: ObjectId::Id(OpId::new(999, &actor)),
            key: Key::Map("k".into()),
            pred: Vec::new().into(),
            insert: false,
        }],
        actor_id: actor,
        hash: None,
        seq: 1,
        start_op: std::num::NonZeroU64::MIN,
        time: 0,
        message: None,
        deps,
        extra_bytes: vec![],
        author: None,
    }
    .into()
}

/// A v1 sync message carrying exactly `changes` (and claiming `heads`).
pub fn message_with_changes(heads: Vec<ChangeHash>, changes: &[Change]) -> Vec<u8> {
    let mut heads = heads;
    heads.sort();
    Message {
        heads,
        need: vec![],
        have: vec![],
        changes: ChunkList::from(
            changes
                .iter()
                .map(|c| c.raw_bytes().to_vec())
                .collect::<Vec<_>>(),
        ),
        flags: None,
        version: MessageVersion::V1,
    }
    .encode()
}

/// Random typed edits for property tests, as [`flowhub_crdt::Edit`] data.
pub mod random {
    use flowhub_crdt::{Edit, Endpoint, FlowSnapshot, Position};
    use proptest::prelude::*;
    use serde_json::json;

    /// An edit chosen against whatever the document holds when it is applied:
    /// `pick`s index the current node or edge ids.
    #[derive(Debug, Clone)]
    pub enum Op {
        Add {
            kind: u8,
            id: u8,
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
        SetKind {
            pick: usize,
            kind: u8,
        },
        Configure {
            pick: usize,
            key: u8,
            value: usize,
        },
        Unconfigure {
            pick: usize,
            key: u8,
        },
        Delete {
            pick: usize,
        },
        Connect {
            from: usize,
            to: usize,
            id: Option<u8>,
        },
        Disconnect {
            pick: usize,
        },
        Rename {
            name: u8,
        },
    }

    const KINDS: [&str; 4] = ["trigger", "http", "decision", "delay"];

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

    pub fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..4, 0u8..12).prop_map(|(kind, id)| Op::Add { kind, id }),
            3 => (any::<usize>(), -50i16..50, -50i16..50).prop_map(|(pick, x, y)| Op::Move { pick, x, y }),
            1 => (any::<usize>(), 0u8..4).prop_map(|(pick, label)| Op::Relabel { pick, label }),
            1 => (any::<usize>(), 0u8..4).prop_map(|(pick, kind)| Op::SetKind { pick, kind }),
            2 => (any::<usize>(), 0u8..3, any::<usize>()).prop_map(|(pick, key, value)| Op::Configure { pick, key, value }),
            1 => (any::<usize>(), 0u8..3).prop_map(|(pick, key)| Op::Unconfigure { pick, key }),
            1 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
            3 => (any::<usize>(), any::<usize>(), proptest::option::of(0u8..4))
                .prop_map(|(from, to, id)| Op::Connect { from, to, id }),
            1 => any::<usize>().prop_map(|pick| Op::Disconnect { pick }),
            1 => (0u8..4).prop_map(|name| Op::Rename { name }),
        ]
    }

    fn pick<T>(items: &std::collections::BTreeMap<String, T>, i: usize) -> Option<String> {
        (!items.is_empty()).then(|| items.keys().nth(i % items.len()).cloned())?
    }

    /// The edit `op` stands for on a document showing `snap`; `None` when it
    /// cannot apply (nothing to pick, or an id already taken).
    pub fn edit(snap: &FlowSnapshot, op: &Op) -> Option<Edit> {
        Some(match op {
            Op::Add { kind, id } => {
                let id = format!("n{id}");
                if snap.nodes.contains_key(&id) {
                    return None;
                }
                let kind = KINDS[usize::from(*kind)];
                Edit::AddNode {
                    id: Some(id),
                    kind: kind.into(),
                    label: format!("{kind} node"),
                    position: Position::new(0.0, 0.0),
                    config: serde_json::Map::new(),
                }
            }
            Op::Move { pick: p, x, y } => Edit::MoveNode {
                id: pick(&snap.nodes, *p)?,
                to: Position::new(f64::from(*x), f64::from(*y) / 4.0),
            },
            Op::Relabel { pick: p, label } => Edit::RelabelNode {
                id: pick(&snap.nodes, *p)?,
                label: format!("label {label}"),
            },
            Op::SetKind { pick: p, kind } => Edit::SetNodeKind {
                id: pick(&snap.nodes, *p)?,
                kind: KINDS[usize::from(*kind)].into(),
            },
            Op::Configure {
                pick: p,
                key,
                value,
            } => Edit::ConfigureNode {
                id: pick(&snap.nodes, *p)?,
                key: format!("k{key}"),
                value: config_value(*value),
            },
            Op::Unconfigure { pick: p, key } => Edit::UnconfigureNode {
                id: pick(&snap.nodes, *p)?,
                key: format!("k{key}"),
            },
            Op::Delete { pick: p } => Edit::DeleteNode {
                id: pick(&snap.nodes, *p)?,
            },
            Op::Connect { from, to, id } => {
                let id = id.map(|k| format!("e{k}"));
                if id.as_ref().is_some_and(|id| snap.edges.contains_key(id)) {
                    return None;
                }
                Edit::Connect {
                    id,
                    source: Endpoint::new(pick(&snap.nodes, *from)?, "out"),
                    target: Endpoint::new(pick(&snap.nodes, *to)?, "in"),
                }
            }
            Op::Disconnect { pick: p } => Edit::Disconnect {
                id: pick(&snap.edges, *p)?,
            },
            Op::Rename { name } => Edit::SetName {
                name: format!("flow {name}"),
            },
        })
    }
}

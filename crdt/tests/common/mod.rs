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

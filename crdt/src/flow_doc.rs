//! [`FlowDoc`]: the flow document type and the plumbing its operations share.

use std::fmt;
use std::sync::OnceLock;

use automerge::transaction::CommitOptions;
use automerge::{ActorId, AutoCommit, ChangeHash, ObjId, ObjType, ReadDoc, Value, ROOT};

use crate::error::{CrdtError, Result};
use crate::genesis::genesis;

/// A flow on Automerge: typed edits, a deterministic read view, schema
/// validation, change exchange and the Automerge sync protocol.
///
/// Sans-IO: it never touches the network, disk, clock or threads; callers move
/// the bytes it produces.
///
/// Not `Clone`: a clone would share the actor id, and two replicas editing
/// under one actor id produce conflicting `(actor, seq)` pairs that Automerge
/// rejects. Use [`FlowDoc::fork`] for an independent replica.
pub struct FlowDoc {
    pub(crate) doc: AutoCommit,
    /// Counter behind generated node/edge ids (see [`FlowDoc::fresh_id`]).
    next_id: u64,
}

impl fmt::Debug for FlowDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowDoc")
            .field("actor", &self.doc.get_actor().to_hex_string())
            .finish_non_exhaustive()
    }
}

impl Default for FlowDoc {
    fn default() -> Self {
        Self::new()
    }
}

/// The hash of the shared genesis change (identical in every FlowDoc).
pub fn genesis_hash() -> ChangeHash {
    static HASH: OnceLock<Option<ChangeHash>> = OnceLock::new();
    // `genesis()` only yields None if Automerge refused to write three root keys
    // into an empty document; an all-zero hash then simply matches no document.
    HASH.get_or_init(|| genesis().1)
        .unwrap_or(ChangeHash([0; 32]))
}

impl FlowDoc {
    /// A new empty flow: the shared genesis change (see [`crate::genesis`]) and a
    /// random actor for this replica's own edits.
    pub fn new() -> Self {
        Self::from_automerge(genesis().0)
    }

    /// Wrap an Automerge document, giving it a fresh random actor.
    pub(crate) fn from_automerge(mut doc: AutoCommit) -> Self {
        doc.set_actor(ActorId::random());
        Self { doc, next_id: 0 }
    }

    /// An independent replica of this document with its own random actor.
    pub fn fork(&mut self) -> Self {
        Self::from_automerge(self.doc.fork())
    }

    /// The underlying Automerge document (read-only).
    pub fn doc(&self) -> &AutoCommit {
        &self.doc
    }

    /// The underlying Automerge document. Writes made through it bypass the
    /// typed edits' checks; use with care (tests use it to craft bad changes).
    pub fn doc_mut(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    /// This replica's actor id, hex encoded.
    pub fn actor_hex(&self) -> String {
        self.doc.get_actor().to_hex_string()
    }

    /// The object id of a root map (`nodes` or `edges`), if the winning value
    /// there is a map.
    pub(crate) fn root_map(&self, key: &str) -> Option<ObjId> {
        map_child(&self.doc, &ROOT, key)
    }

    pub(crate) fn require_root_map(&self, key: &str) -> Result<ObjId> {
        self.root_map(key)
            .ok_or_else(|| CrdtError::InvalidDocument(format!("{key}: root map missing")))
    }

    /// The node map for `id`, or `NodeNotFound`.
    pub(crate) fn node_obj(&self, id: &str) -> Result<ObjId> {
        let nodes = self.require_root_map("nodes")?;
        map_child(&self.doc, &nodes, id).ok_or_else(|| CrdtError::NodeNotFound(id.to_owned()))
    }

    /// The edge map for `id`, or `EdgeNotFound`.
    pub(crate) fn edge_obj(&self, id: &str) -> Result<ObjId> {
        let edges = self.require_root_map("edges")?;
        map_child(&self.doc, &edges, id).ok_or_else(|| CrdtError::EdgeNotFound(id.to_owned()))
    }

    /// A new id for a node (`prefix` "n") or edge ("e") not used in `map`.
    ///
    /// Ids embed 12 hex chars (48 bits) of this replica's random actor id plus a
    /// local counter, so ids generated concurrently by different replicas do not
    /// collide without any coordination; the existence check covers the rest.
    pub(crate) fn fresh_id(&mut self, prefix: &str, map: &ObjId) -> String {
        let actor = self.doc.get_actor().to_hex_string();
        let actor = actor.get(..12).unwrap_or(&actor).to_owned();
        loop {
            self.next_id += 1;
            let id = format!("{prefix}{actor}-{}", self.next_id);
            if !matches!(self.doc.get(map, id.as_str()), Ok(Some(_))) {
                return id;
            }
        }
    }

    /// Run `f` as exactly one Automerge change and return its hash.
    ///
    /// On error every op `f` made is rolled back, so a failed typed edit never
    /// leaks half its ops into the next change.
    pub(crate) fn edit<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<(T, ChangeHash)> {
        // Ops someone left pending through `doc_mut` are committed on their own
        // first, so the typed edit's change contains only its own ops.
        self.doc.commit();
        match f(self) {
            Ok(value) => match self.doc.commit() {
                Some(hash) => Ok((value, hash)),
                // Automerge drops a put of the value already there, so an edit
                // that changes nothing has no ops. Commit an empty change anyway:
                // callers rely on every typed edit yielding exactly one new change
                // (to ack, persist and broadcast), and an empty change is harmless.
                None => Ok((value, self.doc.empty_change(CommitOptions::default()))),
            },
            Err(e) => {
                self.doc.rollback();
                Err(e)
            }
        }
    }
}

/// The winning value at `key` of map `obj`, if it is a map object.
pub(crate) fn map_child(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<ObjId> {
    match doc.get(obj, key) {
        Ok(Some((Value::Object(ObjType::Map), id))) => Some(id),
        _ => None,
    }
}

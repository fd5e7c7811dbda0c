//! [`FlowDoc`]: the flow document type and the plumbing its operations share.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use automerge::transaction::{CommitOptions, Transactable};
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
    /// The actor the id prefix below was made from, and the prefix.
    id_prefix: Option<(ActorId, String)>,
    /// Object ids typed edits looked up, valid while the heads are unchanged.
    pub(crate) cache: Option<EditCache>,
    /// Validated receives apply in place instead of applying to a snapshot (see
    /// [`FlowDoc::validate_in_place`]).
    pub(crate) in_place: bool,
    /// Automerge panicked part-way through an in-place apply: the document must be
    /// rebuilt by the caller (see [`FlowDoc::is_poisoned`]).
    pub(crate) poisoned: bool,
    /// The time typed edits write into their changes (see [`FlowDoc::set_edit_time`]).
    edit_time: Option<i64>,
    /// The message the next typed edit writes into its change (see
    /// [`FlowDoc::apply_edits_with_message`]); taken by that commit.
    pub(crate) edit_message: Option<String>,
    /// The whole history's parts of sync messages, for the current heads (see
    /// [`FlowDoc::generate_sync_message`]): every peer that joins with nothing while
    /// the heads stay the same gets these instead of a new compression and hashing.
    pub(crate) whole: crate::whole_history::WholeHistoryCache,
}

/// Object ids that typed edits need again and again (the root maps, node
/// maps), each lookup costing microseconds in automerge 0.12.
///
/// Valid only for the document state at `heads`: heads name the exact set of
/// applied changes, so the same heads mean the same content. Typed edits
/// check the heads when they start (anything else — a sync message, raw
/// changes, `doc_mut` — moves the heads and so drops the cache), keep the
/// entries right for their own ops, and move `heads` to their commit. A
/// failed or abandoned edit drops the cache.
#[derive(Debug)]
pub(crate) struct EditCache {
    pub(crate) heads: Vec<ChangeHash>,
    pub(crate) nodes: Option<ObjId>,
    pub(crate) edges: Option<ObjId>,
    /// Winning node map per node id.
    pub(crate) node_objs: HashMap<String, ObjId>,
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

/// Parse change hashes written as hex (64 digits each, surrounding whitespace
/// ignored), e.g. the `heads=a,b` of a URL. Fails with
/// [`CrdtError::InvalidHeads`] naming the first malformed entry.
pub fn parse_heads<S: AsRef<str>>(hex: &[S]) -> Result<Vec<ChangeHash>> {
    hex.iter()
        .map(|h| {
            let h = h.as_ref().trim();
            h.parse::<ChangeHash>().map_err(|_| {
                let shown: String = h.chars().take(80).collect();
                CrdtError::InvalidHeads(format!("{shown:?} is not a 64-digit hex change hash"))
            })
        })
        .collect()
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
        Self {
            doc,
            next_id: 0,
            id_prefix: None,
            cache: None,
            in_place: false,
            poisoned: false,
            edit_time: None,
            edit_message: None,
            whole: Default::default(),
        }
    }

    /// Makes the receives ([`FlowDoc::receive_sync_message_validated`],
    /// [`FlowDoc::receive_changes_validated`], and the unvalidated
    /// [`FlowDoc::receive_sync_message`], [`FlowDoc::receive_changes`] and
    /// [`FlowDoc::apply_changes`]) apply in place, without first cloning the
    /// document: the clone costs O(document) on every edit, and on the hub it was
    /// the largest single cost of the edit path. A message that breaks the schema is
    /// still undone exactly, by rebuilding the document at its previous heads (a
    /// replay of the history: milliseconds, on that rare path only). A message that
    /// makes Automerge panic part-way through leaves the document **poisoned**
    /// ([`FlowDoc::is_poisoned`]): only for callers that can rebuild it from
    /// elsewhere, as the hub does from its store and the Rust client from the hub.
    pub fn validate_in_place(&mut self, on: bool) {
        self.in_place = on;
    }

    /// The time, in milliseconds since the Unix epoch, that typed edits from now
    /// on record in their changes (`None`: none, Automerge's 0).
    ///
    /// The document never reads a clock (it is sans-IO), so a client that
    /// wants its changes timed in history ([`FlowDoc::change_summaries`]) sets
    /// this before editing. It is the author's claim, shown as such; the hub
    /// keeps its own receive times.
    pub fn set_edit_time(&mut self, ms: Option<i64>) {
        self.edit_time = ms;
    }

    /// Whether an in-place apply failed in a way that left the document unusable;
    /// the caller must replace it (see [`FlowDoc::validate_in_place`]).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// An independent replica of this document with its own random actor.
    pub fn fork(&mut self) -> Self {
        Self::from_automerge(self.doc.fork())
    }

    /// An independent replica holding exactly the changes up to `heads`: the
    /// flow as it was then, with its own history, heads and random actor
    /// (editing it never affects this document).
    ///
    /// Costs a replay of the history up to `heads` (automerge's `fork_at`),
    /// i.e. milliseconds for a large flow; to just *read* the past, use
    /// [`FlowDoc::to_json_at`] / [`FlowDoc::snapshot_at`], which read in place.
    /// When `heads` are the current heads this is a plain [`FlowDoc::fork`].
    ///
    /// Fails with [`CrdtError::UnknownHeads`] naming every hash this document
    /// does not have, and with [`CrdtError::InvalidHeads`] for an empty list.
    pub fn at_heads(&mut self, heads: &[ChangeHash]) -> Result<FlowDoc> {
        let heads = self.known_heads(heads)?;
        let mut current = self.heads();
        current.sort();
        if heads == current {
            return Ok(self.fork());
        }
        Ok(Self::from_automerge(self.doc.fork_at(&heads)?))
    }

    /// `heads` deduplicated and sorted, after checking that every one is an
    /// applied change of this document.
    pub(crate) fn known_heads(&mut self, heads: &[ChangeHash]) -> Result<Vec<ChangeHash>> {
        if heads.is_empty() {
            return Err(CrdtError::InvalidHeads("no heads given".into()));
        }
        let mut heads = heads.to_vec();
        heads.sort();
        heads.dedup();
        let unknown: Vec<String> = heads
            .iter()
            .filter(|h| !self.has_change(h))
            .map(ChangeHash::to_string)
            .collect();
        if unknown.is_empty() {
            Ok(heads)
        } else {
            Err(CrdtError::UnknownHeads(unknown))
        }
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

    /// Prepare for a typed edit: commit ops someone left pending through
    /// `doc_mut` as their own change (so the edit's change contains only its
    /// own ops), and drop the edit cache unless it is for the current heads.
    pub(crate) fn begin_edit(&mut self) {
        // `commit` with nothing pending would still open and close a
        // transaction; skip it in the common case.
        if self.doc.pending_ops() > 0 {
            self.doc.commit();
        }
        let heads = self.doc.get_heads();
        match &mut self.cache {
            Some(cache) if cache.heads == heads => {}
            slot => {
                *slot = Some(EditCache {
                    heads,
                    nodes: None,
                    edges: None,
                    node_objs: HashMap::new(),
                })
            }
        }
    }

    fn cache_mut(&mut self) -> Option<&mut EditCache> {
        self.cache.as_mut()
    }

    /// A root map (`nodes` / `edges`) for an edit, via the cache.
    pub(crate) fn require_root_map(&mut self, key: &str) -> Result<ObjId> {
        let cached = self.cache.as_ref().and_then(|c| match key {
            "nodes" => c.nodes.clone(),
            "edges" => c.edges.clone(),
            _ => None,
        });
        if let Some(obj) = cached {
            return Ok(obj);
        }
        let obj = self
            .root_map(key)
            .ok_or_else(|| CrdtError::InvalidDocument(format!("{key}: root map missing")))?;
        if let Some(cache) = self.cache_mut() {
            match key {
                "nodes" => cache.nodes = Some(obj.clone()),
                "edges" => cache.edges = Some(obj.clone()),
                _ => {}
            }
        }
        Ok(obj)
    }

    /// The node map for `id`, or `NodeNotFound`.
    pub(crate) fn node_obj(&mut self, id: &str) -> Result<ObjId> {
        if let Some(obj) = self.cache.as_ref().and_then(|c| c.node_objs.get(id)) {
            return Ok(obj.clone());
        }
        let nodes = self.require_root_map("nodes")?;
        let obj = map_child(&self.doc, &nodes, id)
            .ok_or_else(|| CrdtError::NodeNotFound(id.to_owned()))?;
        if let Some(cache) = self.cache_mut() {
            cache.node_objs.insert(id.to_owned(), obj.clone());
        }
        Ok(obj)
    }

    /// Record that the edit in progress made `obj` the node map of `id`
    /// (`None`: deleted it).
    pub(crate) fn set_node_obj(&mut self, id: &str, obj: Option<ObjId>) {
        if let Some(cache) = self.cache_mut() {
            match obj {
                Some(obj) => {
                    cache.node_objs.insert(id.to_owned(), obj);
                }
                None => {
                    cache.node_objs.remove(id);
                }
            }
        }
    }

    /// The edge map for `id`, or `EdgeNotFound`.
    pub(crate) fn edge_obj(&mut self, id: &str) -> Result<ObjId> {
        let edges = self.require_root_map("edges")?;
        map_child(&self.doc, &edges, id).ok_or_else(|| CrdtError::EdgeNotFound(id.to_owned()))
    }

    /// A new id for a node (`prefix` "n") or edge ("e") not used in `map`.
    ///
    /// Ids embed 12 hex chars (48 bits) of this replica's random actor id plus a
    /// local counter, so ids generated concurrently by different replicas do not
    /// collide without any coordination; the existence check covers the rest.
    pub(crate) fn fresh_id(&mut self, prefix: &str, map: &ObjId) -> String {
        let actor = self.doc.get_actor();
        let actor_prefix = match &self.id_prefix {
            Some((cached, p)) if cached == actor => p.clone(),
            _ => {
                let hex = actor.to_hex_string();
                let p = hex.get(..12).unwrap_or(&hex).to_owned();
                self.id_prefix = Some((actor.clone(), p.clone()));
                p
            }
        };
        loop {
            self.next_id += 1;
            let id = format!("{prefix}{actor_prefix}-{}", self.next_id);
            if !matches!(self.doc.get(map, id.as_str()), Ok(Some(_))) {
                return id;
            }
        }
    }

    /// End a typed edit: commit its ops as exactly one change and move the
    /// edit cache to the new heads.
    pub(crate) fn commit_edit(&mut self) -> ChangeHash {
        let message = self.edit_message.take();
        let options = || CommitOptions {
            time: self.edit_time,
            message: message.clone(),
        };
        let hash = match self.doc.commit_with(options()) {
            Some(hash) => hash,
            // Automerge drops a put of the value already there, so an edit
            // that changes nothing has no ops. Commit an empty change anyway:
            // callers rely on every typed edit yielding exactly one new change
            // (to ack, persist and broadcast), and an empty change is harmless.
            None => self.doc.empty_change(options()),
        };
        if self.cache.is_some() {
            // Normally just `[hash]`; asking keeps this right under isolation.
            let heads = self.doc.get_heads();
            if let Some(cache) = self.cache_mut() {
                cache.heads = heads;
            }
        }
        hash
    }

    /// Abandon a typed edit: roll its ops back and drop the edit cache (it
    /// may describe ops that no longer exist).
    pub(crate) fn abort_edit(&mut self) {
        self.edit_message = None;
        self.doc.rollback();
        self.cache = None;
    }
}

/// The winning value at `key` of map `obj`, if it is a map object.
pub(crate) fn map_child(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<ObjId> {
    match doc.get(obj, key) {
        Ok(Some((Value::Object(ObjType::Map), id))) => Some(id),
        _ => None,
    }
}

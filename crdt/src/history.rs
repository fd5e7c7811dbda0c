//! Persistence and change exchange: save/load, heads, and raw changes.
//!
//! The hub's store keeps a periodic `save()` snapshot plus every change applied
//! since, as raw bytes keyed by hash; this module produces and consumes exactly
//! those pieces.

use std::collections::HashMap;

use automerge::{AutoCommit, Change, ChangeHash};

use crate::error::{CrdtError, Result};
use crate::flow_doc::{genesis_hash, FlowDoc};
use crate::guard::{no_panic, PANIC_MESSAGE};

/// One Automerge change as stored and shipped: its hash and raw bytes
/// (`Change::raw_bytes()`, i.e. uncompressed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChange {
    /// The change hash.
    pub hash: ChangeHash,
    /// The encoded change.
    pub bytes: Vec<u8>,
}

impl StoredChange {
    pub(crate) fn from_change(change: &Change) -> Self {
        Self {
            hash: change.hash(),
            bytes: change.raw_bytes().to_vec(),
        }
    }

    /// The hash as lowercase hex.
    pub fn hash_hex(&self) -> String {
        self.hash.to_string()
    }

    /// The Automerge actor (hex) that made the change, read from its bytes: a
    /// header parse, where asking the document would rebuild the change from its op
    /// set. `None` for bytes that are not a change.
    pub fn actor_hex(&self) -> Option<String> {
        Change::try_from(self.bytes.as_slice())
            .ok()
            .map(|c| c.actor_id().to_hex_string())
    }

    /// The change's message, if it has one (read from its bytes).
    pub fn message(&self) -> Option<String> {
        Change::try_from(self.bytes.as_slice())
            .ok()
            .and_then(|c| c.message().map(str::to_owned))
    }
}

impl FlowDoc {
    /// Load a document written by [`FlowDoc::save`]. The loaded replica gets a
    /// fresh random actor, since the saving process may still be editing under
    /// the old one.
    ///
    /// Fails with `InvalidDocument` on corrupt bytes and on documents that do
    /// not contain the FlowDoc genesis change (their root maps would conflict
    /// with every other replica's).
    pub fn load(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() {
            // Automerge would happily load this as an empty, genesis-less doc.
            return Err(CrdtError::InvalidDocument("empty input".into()));
        }
        let doc = no_panic(
            || AutoCommit::load(bytes).map_err(|e| CrdtError::InvalidDocument(e.to_string())),
            || CrdtError::InvalidDocument(PANIC_MESSAGE.into()),
        )?;
        let mut flow = Self::from_automerge(doc);
        if !flow.has_change(&genesis_hash()) {
            return Err(CrdtError::InvalidDocument(
                "not a flowhub document (genesis change missing)".into(),
            ));
        }
        Ok(flow)
    }

    /// Rebuild a document from what a store keeps: an optional snapshot plus raw
    /// changes made after it. Changes already in the snapshot, or repeated, are
    /// ignored. Without a snapshot the document starts from genesis.
    pub fn load_parts(snapshot: Option<&[u8]>, changes: &[Vec<u8>]) -> Result<Self> {
        let mut flow = match snapshot {
            Some(bytes) => Self::load(bytes)?,
            None => Self::new(),
        };
        let parsed =
            parse_changes(changes).map_err(|e| CrdtError::InvalidDocument(e.to_string()))?;
        // The document is ours alone until we return it, so a panic needs no
        // restore: the half-built document is simply dropped.
        no_panic(
            || {
                flow.doc
                    .apply_changes(parsed)
                    .map_err(|e| CrdtError::InvalidDocument(e.to_string()))
            },
            || CrdtError::InvalidDocument(PANIC_MESSAGE.into()),
        )?;
        Ok(flow)
    }

    /// The whole document, compacted.
    ///
    /// Changes still queued for missing dependencies are left out: they were
    /// never applied (nor, on the hub, validated), and the sync protocol fetches
    /// them again together with their dependencies.
    pub fn save(&mut self) -> Vec<u8> {
        crate::whole_history::compacted(self.doc.document())
    }

    /// Current heads, sorted by hash.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// Current heads as sorted lowercase hex.
    pub fn heads_hex(&mut self) -> Vec<String> {
        let mut heads: Vec<String> = self.heads().iter().map(ChangeHash::to_string).collect();
        heads.sort();
        heads
    }

    /// Whether the change is applied (queued changes with missing deps do not count).
    pub fn has_change(&mut self, hash: &ChangeHash) -> bool {
        self.doc.get_change_meta_by_hash(hash).is_some()
    }

    /// Every applied change not reachable from `heads`, in causal order. Unknown
    /// hashes in `heads` are ignored (so a peer ahead of us just gets everything
    /// we cannot prove it has).
    pub fn changes_since(&mut self, heads: &[ChangeHash]) -> Vec<StoredChange> {
        self.doc
            .get_changes(heads)
            .iter()
            .map(StoredChange::from_change)
            .collect()
    }

    /// Every applied change, in causal order.
    pub fn all_changes(&mut self) -> Vec<StoredChange> {
        self.changes_since(&[])
    }

    /// Apply raw changes; returns those that became applied by this call
    /// (including earlier-queued ones they unblocked), in causal order.
    ///
    /// All input is decoded before anything is applied, so one corrupt change
    /// means `InvalidChange` and no effect; if Automerge rejects or panics on
    /// the batch (see the `guard` module) the document is restored exactly
    /// (with [`FlowDoc::validate_in_place`] on, a panic poisons it instead).
    /// Changes whose dependencies are missing are queued until they arrive (see
    /// [`FlowDoc::missing_deps`]). No schema validation: this is for trusted
    /// input such as the hub's own store or changes the hub already validated.
    pub fn apply_changes(&mut self, raw: &[Vec<u8>]) -> Result<Vec<StoredChange>> {
        self.apply_parsed_changes(parse_changes(raw)?)
    }

    /// [`FlowDoc::apply_changes`] after decoding.
    pub(crate) fn apply_parsed_changes(
        &mut self,
        parsed: Vec<Change>,
    ) -> Result<Vec<StoredChange>> {
        if parsed.iter().all(|c| self.has_change(&c.hash())) {
            return Ok(Vec::new());
        }
        let known: HashMap<ChangeHash, Change> =
            parsed.iter().map(|c| (c.hash(), c.clone())).collect();
        // In place when the owner can rebuild a poisoned document (the hub, the
        // Rust client): the snapshot `guarded` takes is O(document) per apply.
        self.guarded_receive(
            |this| {
                let before = this.heads();
                this.doc.apply_changes(parsed)?;
                Ok(this.applied_since(&before, &known))
            },
            || CrdtError::InvalidChange(PANIC_MESSAGE.into()),
        )
    }

    /// Hashes of changes we need but do not have: dependencies of queued changes.
    pub fn missing_deps(&mut self) -> Vec<ChangeHash> {
        self.doc.get_missing_deps(&[])
    }

    /// The changes applied since the document was at `before`, in causal order.
    /// Bytes come from `known` (the input we were handed) when possible, because
    /// rebuilding a change from the op set costs far more than copying it.
    pub(crate) fn applied_since(
        &mut self,
        before: &[ChangeHash],
        known: &HashMap<ChangeHash, Change>,
    ) -> Vec<StoredChange> {
        if self.doc.get_heads() == before {
            return Vec::new();
        }
        let hashes: Vec<ChangeHash> = self
            .doc
            .get_changes_meta(before)
            .iter()
            .map(|m| m.hash)
            .collect();
        hashes
            .into_iter()
            .filter_map(|hash| match known.get(&hash) {
                Some(change) => Some(StoredChange::from_change(change)),
                None => self
                    .doc
                    .get_change_by_hash(&hash)
                    .map(|c| StoredChange::from_change(&c)),
            })
            .collect()
    }
}

/// Decode raw changes, rejecting the whole batch on the first bad one.
fn parse_changes(raw: &[Vec<u8>]) -> Result<Vec<Change>> {
    raw.iter()
        .enumerate()
        .map(|(i, bytes)| {
            Change::try_from(bytes.as_slice())
                .map_err(|e| CrdtError::InvalidChange(format!("change #{i}: {e}")))
        })
        .collect()
}

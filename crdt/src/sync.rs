//! The Automerge sync protocol, plus the hub's guarded variant.
//!
//! One [`SyncState`] per (document, peer) pair; messages are opaque bytes.

use std::collections::HashMap;

use automerge::sync::{self, SyncDoc};
use automerge::{AutoCommit, Change, ChangeHash, PatchLog};

use crate::chunks::{self, Chunk};
use crate::error::{CrdtError, Result};
use crate::flow_doc::FlowDoc;
use crate::guard::{no_panic, PANIC_MESSAGE};
use crate::history::StoredChange;
use crate::incremental::{validate_touched, Touched};
use crate::schema::SchemaError;

/// Sync progress with one peer (what they have, what is in flight).
#[derive(Debug, Clone, Default)]
pub struct SyncState(pub(crate) sync::State);

impl SyncState {
    /// State for a peer we know nothing about.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget everything about the peer, as after a reconnect. The next message
    /// we generate restarts the exchange from scratch.
    pub fn reset(&mut self) {
        self.0 = sync::State::new();
    }

    /// Persistable part of the state (the heads both sides are known to share),
    /// so a reconnecting peer does not resync from zero.
    pub fn encode(&self) -> Vec<u8> {
        self.0.encode()
    }

    /// Restore a state written by [`SyncState::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        sync::State::decode(bytes)
            .map(Self)
            .map_err(|e| CrdtError::InvalidSyncMessage(format!("bad sync state: {e}")))
    }

    /// The Automerge state, for diagnostics.
    pub fn inner(&self) -> &sync::State {
        &self.0
    }
}

/// What receiving a sync message did to the document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Changes newly applied by the message, in causal order (empty for pure
    /// protocol chatter or changes still waiting for dependencies).
    pub changes: Vec<StoredChange>,
}

/// What [`FlowDoc::receive_sync_message_repairing`] did.
#[derive(Debug, Clone, Default)]
pub struct Repaired {
    /// The peer's changes now in the document.
    pub applied: Applied,
    /// The repair change that followed them, when they broke the schema.
    pub repair: Option<crate::Repair>,
}

impl Applied {
    /// Whether the message changed the document.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

fn sync_panic() -> CrdtError {
    CrdtError::InvalidSyncMessage(PANIC_MESSAGE.into())
}

/// Gives back the spare capacity of the lists in a decoded message. Automerge keeps
/// its heads, needs and `have`s in the peer's sync state until the next message, and
/// decoding grows each list to at least four entries where peers mostly send one:
/// ~0.4 KB per connected peer, idle or not.
fn fit_to_size(message: &mut sync::Message) {
    message.heads.shrink_to_fit();
    message.need.shrink_to_fit();
    message.have.shrink_to_fit();
    for have in &mut message.have {
        have.last_sync.shrink_to_fit();
    }
}

/// A decoded sync message and the changes it carries.
struct Incoming {
    message: sync::Message,
    /// Individually decoded change chunks, by hash.
    changes: HashMap<ChangeHash, Change>,
    /// Whole-document / bundle chunks (copied out of the message).
    containers: Vec<Vec<u8>>,
}

/// Decode a message and every chunk in it; any damage is `InvalidSyncMessage`
/// before the document is touched. (Automerge itself would skip a corrupt chunk
/// and apply the rest, leaving us unable to say what was applied.)
fn decode(msg: &[u8]) -> Result<Incoming> {
    let mut message =
        sync::Message::decode(msg).map_err(|e| CrdtError::InvalidSyncMessage(e.to_string()))?;
    fit_to_size(&mut message);
    let mut changes = HashMap::new();
    let mut containers = Vec::new();
    for blob in message.changes.iter() {
        for chunk in chunks::split(blob).map_err(CrdtError::InvalidSyncMessage)? {
            match chunk {
                Chunk::Change(c) => {
                    changes.insert(c.hash(), *c);
                }
                Chunk::Container(bytes) => containers.push(bytes.to_vec()),
            }
        }
    }
    Ok(Incoming {
        message,
        changes,
        containers,
    })
}

/// The hashes of the changes a sync message carries (whole-document chunks are not
/// looked into), for diagnostics and tests.
pub fn sync_message_hashes(msg: &[u8]) -> Result<Vec<ChangeHash>> {
    Ok(decode(msg)?.changes.into_keys().collect())
}

impl FlowDoc {
    /// The next message for the peer behind `state`, or `None` if there is
    /// nothing to say until we hear from them (or something changes locally).
    ///
    /// `state` holds what the peer last told us (its heads, needs and bloom
    /// filters), so this too runs on peer-controlled input: should Automerge
    /// panic on it, the state is reset and the message is generated afresh.
    ///
    /// A message that carries the whole document (to a peer that has nothing and
    /// reads v2 messages, as stock automerge-repo peers do) takes the document as
    /// last saved for such a message while the heads are unchanged, and the message
    /// to a peer we share no heads with takes the bloom filter of the whole history
    /// so too (a [`WholeHistoryCache`]): each costs the hub per peer that opens a
    /// flow otherwise. The saved copy leaves out changes queued for missing
    /// dependencies (Automerge's own save keeps them), which were never applied or
    /// validated and must not be forwarded.
    pub fn generate_sync_message(&mut self, state: &mut SyncState) -> Option<Vec<u8>> {
        let doc = self.doc.document();
        let whole = &mut self.whole;
        let mut generate = |state: &mut SyncState| {
            no_panic(
                || {
                    Ok(doc
                        .generate_sync_message_with(&mut state.0, whole)
                        .map(sync::Message::encode))
                },
                sync_panic,
            )
        };
        match generate(state) {
            Ok(message) => message,
            Err(_) => {
                state.reset();
                generate(state).ok().flatten()
            }
        }
    }

    /// Frees what sync messages to new peers took from the whole history (see
    /// [`FlowDoc::generate_sync_message`]) unless it was computed at `heads`, the
    /// document's current ones. For when the heads moved: otherwise a flow opened once
    /// and then edited keeps a stale copy of its history (for 1,000 changes ~46 KB)
    /// until the next peer that has nothing.
    pub fn release_stale_sync_cache(&mut self, heads: &[ChangeHash]) {
        self.whole.release_unless_at(heads);
    }

    /// Apply a message from the peer behind `state`.
    ///
    /// Undecodable bytes (including any corrupt change chunk) give
    /// `InvalidSyncMessage` and leave both the document and `state` untouched.
    /// If Automerge rejects (or panics on, see the `guard` module) the changes,
    /// the document is restored exactly and `state` is reset (with
    /// [`FlowDoc::validate_in_place`] on, a panic poisons the document instead).
    pub fn receive_sync_message(&mut self, state: &mut SyncState, msg: &[u8]) -> Result<Applied> {
        let incoming = decode(msg)?;
        if !self.may_change(&incoming) {
            return self.apply_message(state, incoming, None);
        }
        let result =
            self.guarded_receive(|this| this.apply_message(state, incoming, None), sync_panic);
        if result.is_err() {
            state.reset();
        }
        result
    }

    /// The hub's receive: apply the message, validate the resulting document,
    /// and if it breaks the schema put everything back exactly as it was, reset
    /// `state`, and return `Err(Schema)`. Never leaves a half-applied or invalid
    /// document. (One deliberate exception to "exactly": changes that were
    /// queued for missing dependencies are dropped on failure, because one of
    /// them may be what failed; see `FlowDoc::drop_queued_changes`.)
    ///
    /// Changes that arrive ahead of their dependencies are queued unvalidated
    /// and validated when a later message releases them.
    ///
    /// Strategy — apply in place, validate, restore a snapshot on failure:
    /// * The snapshot is a clone of the Automerge document. automerge 0.12 keeps
    ///   ops in a columnar store, so that is a few buffer copies (~60 µs for a
    ///   1,000-node flow), versus `fork_at(heads_before)`, which replays the
    ///   whole history (milliseconds) and would also drop changes queued for
    ///   missing dependencies and the cursors. Applying to a fork and swapping on
    ///   success costs the same clone; restoring in place keeps the common
    ///   (valid) path free of a second swap.
    /// * The clone is skipped entirely when the message carries no change we
    ///   lack (acks, heads, bloom filters: most sync traffic), since then nothing
    ///   can change.
    /// * Validation is incremental (see the `incremental` module): patches recorded
    ///   while applying name the nodes and edges touched, and only those (plus
    ///   the root map) are re-checked, so the cost follows the message size, not
    ///   the flow size.
    pub fn receive_sync_message_validated(
        &mut self,
        state: &mut SyncState,
        msg: &[u8],
    ) -> Result<Applied> {
        let incoming = decode(msg)?;
        if !self.may_change(&incoming) {
            return self.apply_message(state, incoming, None);
        }
        self.apply_validated(state, incoming)
    }

    /// The hub's receive for peers that cannot roll back a refused change (stock
    /// automerge-repo peers): like [`FlowDoc::receive_sync_message_validated`], except
    /// that changes breaking the schema are kept and followed by a repair change this
    /// document authors ([`FlowDoc::repair_schema`]), which [`Repaired::repair`]
    /// returns; `applied` holds only the peer's changes. Fails, restoring the document
    /// exactly, only when the damage cannot be repaired (see `repair_schema`) or
    /// Automerge rejects the changes.
    pub fn receive_sync_message_repairing(
        &mut self,
        state: &mut SyncState,
        msg: &[u8],
    ) -> Result<Repaired> {
        let incoming = decode(msg)?;
        if !self.may_change(&incoming) {
            let applied = self.apply_message(state, incoming, None)?;
            return Ok(Repaired {
                applied,
                repair: None,
            });
        }
        let mut repair = None;
        let applied = self.apply_checked(state, incoming, |this, _| {
            repair = this.repair_schema()?;
            Ok(())
        })?;
        Ok(Repaired { applied, repair })
    }

    /// Changes this document lacks, with all their dependencies present, applied and
    /// validated as [`FlowDoc::receive_sync_message_validated`] does (the change
    /// frame path of [`FlowDoc::receive_changes_validated`]).
    pub(crate) fn apply_new_changes_validated(&mut self, new: Vec<Change>) -> Result<Applied> {
        let bytes: Vec<Vec<u8>> = new.iter().map(|c| c.raw_bytes().to_vec()).collect();
        let incoming = Incoming {
            // A message that carries only changes: no heads, needs or bloom filters,
            // so receiving it into a throwaway state does nothing but apply them.
            message: sync::Message {
                heads: Vec::new(),
                need: Vec::new(),
                have: Vec::new(),
                changes: bytes.into(),
                flags: None,
                version: sync::MessageVersion::V1,
            },
            changes: new.into_iter().map(|c| (c.hash(), c)).collect(),
            containers: Vec::new(),
        };
        self.apply_validated(&mut SyncState::new(), incoming)
    }

    /// Applies a message that may change the document: in place, validating what it
    /// touched, restoring the document on failure (see
    /// [`FlowDoc::receive_sync_message_validated`] for the strategy).
    fn apply_validated(&mut self, state: &mut SyncState, incoming: Incoming) -> Result<Applied> {
        self.apply_checked(state, incoming, |_, e| Err(CrdtError::Schema(e)))
    }

    /// [`FlowDoc::apply_validated`], calling `on_invalid` when what the message
    /// touched breaks the schema: the message is refused (the document restored)
    /// unless `on_invalid` makes the document valid and returns `Ok`.
    fn apply_checked(
        &mut self,
        state: &mut SyncState,
        incoming: Incoming,
        on_invalid: impl FnOnce(&mut Self, SchemaError) -> Result<()>,
    ) -> Result<Applied> {
        let result = self.guarded_receive(
            |this| {
                let mut log = PatchLog::active();
                let applied = this.apply_message(state, incoming, Some(&mut log))?;
                if !applied.is_empty() {
                    let patches = this.doc.make_patches(&mut log);
                    if let Err(e) = validate_touched(&this.doc, &Touched::from_patches(&patches)) {
                        on_invalid(this, e)?;
                    }
                }
                Ok(applied)
            },
            sync_panic,
        );
        if result.is_err() {
            state.reset();
        }
        result
    }

    /// Hand a decoded message to Automerge, optionally recording patches, and
    /// report what it applied.
    fn apply_message(
        &mut self,
        state: &mut SyncState,
        incoming: Incoming,
        log: Option<&mut PatchLog>,
    ) -> Result<Applied> {
        let before = self.heads();
        // Automerge trims `sent_hashes` to the changes the peer's heads do not cover,
        // with a lookup per hash. Heads that include all of ours cover every change
        // we have, so nothing we sent is still owed: drop the set in one go. (A peer
        // just sent a whole flow acknowledges it so, with a hash per change to trim.)
        if !before.is_empty() && before.iter().all(|h| incoming.message.heads.contains(h)) {
            state.0.sent_hashes = std::collections::BTreeSet::new();
        }
        match log {
            Some(log) => self.doc.sync().receive_sync_message_log_patches(
                &mut state.0,
                incoming.message,
                log,
            )?,
            None => self
                .doc
                .sync()
                .receive_sync_message(&mut state.0, incoming.message)?,
        }
        // Once the peer has everything we sent, the set is empty, but a `BTreeSet`
        // keeps its emptied root node (~400 bytes) allocated: per peer, for as long
        // as it stays connected. Give it back.
        if state.0.sent_hashes.is_empty() {
            state.0.sent_hashes = std::collections::BTreeSet::new();
        }
        // The shared heads are rebuilt by merging lists (see `fit_to_size`).
        state.0.shared_heads.shrink_to_fit();
        Ok(Applied {
            changes: self.applied_since(&before, &incoming.changes),
        })
    }

    /// Cheap over-approximation of "applying this could change the document":
    /// any change we lack, or any whole-document chunk (checking one of those
    /// exactly would mean loading it).
    fn may_change(&mut self, incoming: &Incoming) -> bool {
        !incoming.containers.is_empty()
            || incoming.changes.keys().any(|hash| !self.has_change(hash))
    }

    /// Whether the encoded message carries any change this document lacks
    /// (applied changes only: queued ones count as lacking). Lets the hub refuse
    /// a read-only peer's edits without applying anything. Undecodable bytes are
    /// an error.
    pub fn sync_message_has_new_changes(&mut self, msg: &[u8]) -> Result<bool> {
        let incoming = decode(msg)?;
        self.carries_unknown(&incoming)
    }

    fn carries_unknown(&mut self, incoming: &Incoming) -> Result<bool> {
        for hash in incoming.changes.keys() {
            if !self.has_change(hash) {
                return Ok(true);
            }
        }
        for bytes in &incoming.containers {
            // A whole document (sent on first sync): load it to learn its hashes.
            let mut other = no_panic(
                || {
                    AutoCommit::load(bytes)
                        .map_err(|e| CrdtError::InvalidSyncMessage(e.to_string()))
                },
                sync_panic,
            )?;
            for meta in other.get_changes_meta(&[]) {
                if !self.has_change(&meta.hash) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::sync::SyncDoc;

    /// The first message of a peer that has nothing (v2, empty heads).
    fn hello_from_an_empty_peer() -> Vec<u8> {
        AutoCommit::new()
            .sync()
            .generate_sync_message(&mut sync::State::new())
            .unwrap()
            .encode()
    }

    /// `hub`'s answer to a new, empty v2 peer, and that peer's sync state after it.
    fn answer_to_a_new_peer(hub: &mut FlowDoc) -> (sync::Message, SyncState) {
        let mut state = SyncState::new();
        hub.receive_sync_message(&mut state, &hello_from_an_empty_peer())
            .unwrap();
        let message = hub.generate_sync_message(&mut state).unwrap();
        (sync::Message::decode(&message).unwrap(), state)
    }

    /// The document chunk of the message `hub` sends a new, empty v2 peer.
    fn document_sent_to_a_new_peer(hub: &mut FlowDoc) -> Vec<u8> {
        let (message, _) = answer_to_a_new_peer(hub);
        let chunk = message.changes.iter().next().unwrap().to_vec();
        chunk
    }

    #[test]
    fn the_whole_history_parts_are_kept_per_heads_and_say_what_automerge_says() {
        let mut hub = FlowDoc::new();
        for i in 0..40 {
            hub.set_name(&format!("version {i}")).unwrap();
        }
        // What Automerge itself sends a new peer and remembers of it, uncached.
        let mut own = SyncState::new();
        hub.receive_sync_message(&mut own, &hello_from_an_empty_peer())
            .unwrap();
        let expected = hub
            .doc
            .document()
            .generate_sync_message(&mut own.0)
            .unwrap();
        assert_eq!(
            expected.have.len(),
            1,
            "a bloom filter of the whole history"
        );
        for round in 0..2 {
            let (message, state) = answer_to_a_new_peer(&mut hub);
            assert_eq!(message.heads, expected.heads, "round {round}");
            assert_eq!(message.need, expected.need, "round {round}");
            assert_eq!(message.have, expected.have, "round {round}");
            assert_eq!(state.0.sent_hashes, own.0.sent_hashes, "round {round}");
            // Every change: the new document's own and the 40 renames.
            assert_eq!(state.0.sent_hashes.len(), 41);
        }
        // Kept for these heads: a planted filter comes out for the next new peer.
        let planted = sync::BloomFilter::from_hashes([].iter());
        hub.whole.bloom = Some(planted.clone());
        assert_eq!(answer_to_a_new_peer(&mut hub).0.have[0].bloom, planted);
        // New heads: computed afresh.
        hub.set_name("changed").unwrap();
        let (message, state) = answer_to_a_new_peer(&mut hub);
        assert_ne!(message.have[0].bloom, planted);
        assert_eq!(state.0.sent_hashes.len(), 42);
    }

    #[test]
    fn a_stale_whole_history_is_released_and_a_current_one_kept() {
        let mut hub = FlowDoc::new();
        hub.set_name("opened").unwrap();
        answer_to_a_new_peer(&mut hub);
        assert!(!hub.whole.is_empty());
        let heads = hub.heads();
        hub.release_stale_sync_cache(&heads);
        assert!(!hub.whole.is_empty(), "computed at these heads: kept");
        hub.set_name("edited").unwrap();
        let heads = hub.heads();
        hub.release_stale_sync_cache(&heads);
        assert!(hub.whole.is_empty(), "computed at older heads: released");
    }

    #[test]
    fn a_new_peer_gets_the_document_saved_at_these_heads_without_saving_again() {
        let mut hub = FlowDoc::new();
        hub.set_name("saved once").unwrap();
        let first = document_sent_to_a_new_peer(&mut hub);
        assert_eq!(hub.whole.saved, Some(first.clone()));
        // Were the document saved again, the marker would not come out.
        let marker = b"saved at these heads".to_vec();
        hub.whole.saved = Some(marker.clone());
        assert_eq!(document_sent_to_a_new_peer(&mut hub), marker);
        // New heads: saved afresh.
        hub.set_name("changed").unwrap();
        let fresh = document_sent_to_a_new_peer(&mut hub);
        assert_ne!(fresh, marker);
        assert_eq!(FlowDoc::load(&fresh).unwrap().heads(), hub.heads());
    }
}

//! Change streaming: new changes sent as they are to peers known to be up to date.
//!
//! The Automerge sync protocol costs one message per peer and per edit in each
//! direction (the hub computes what every peer lacks, every peer answers with its new
//! heads), although all peers that were in sync need the same new change. Streaming
//! skips that for peers that opted in: once the sync protocol has established that a
//! peer has exactly the hub's heads, every later change goes to it as raw change bytes
//! (encoded once for all such peers), and the hub records that the peer now has the
//! new heads instead of waiting to be told. A peer that falls behind (a dropped frame,
//! a reconnect) or sends something unexpected is back on the sync protocol until it is
//! current again. Both ends are here, sans-IO:
//!
//! * [`PeerLink`], the hub's side of one peer: the sync state plus the opt-in, and
//!   [`PeerLink::route`], which decides per new change whether the peer gets the
//!   shared change frame, nothing, or a sync round;
//! * [`HubLink`], a client's side: when its own edits may go out as change frames, and
//!   what to do with a change frame from the hub;
//! * [`FlowDoc::receive_changes_validated`] (the hub applying a peer's change frame
//!   with the same schema guard as a sync message) and [`FlowDoc::receive_changes`]
//!   (a client applying the hub's).
//!
//! # Why the shortcut keeps the sync state true
//! The transport is ordered and the hub streams to a peer only while the peer's last
//! known heads are exactly the hub's heads before the change. The change's
//! dependencies are then all on the peer, and after delivery the peer holds exactly
//! the hub's new heads. [`PeerLink::route`] writes that into the sync state as if the
//! peer had said so (`their_heads`, `shared_heads`, an empty `have` at those heads),
//! and adds the streamed hashes to `sent_hashes`, so if the peer later needs the sync
//! protocol again, nothing it was streamed is sent twice.

use std::collections::HashSet;

use automerge::sync::{BloomFilter, Have};
use automerge::{Change, ChangeHash};

use crate::chunks::{self, Chunk};
use crate::error::{CrdtError, Result};
use crate::flow_doc::FlowDoc;
use crate::sync::{Applied, SyncState};

/// Streamed hashes kept in a peer's `sent_hashes` before it is cleared. A streaming
/// peer never answers, so Automerge never trims the set; keeping some guards against
/// resending to a peer whose stale sync message is still in flight, and clearing
/// bounds memory (a stale message after a clear costs at most a duplicate).
const MAX_STREAMED_HASHES: usize = 4096;

/// What a peer gets for a batch of new changes (see [`PeerLink::route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The shared change frame; the peer's sync state already says it has them.
    Stream,
    /// Nothing: the peer made these changes itself and was current before.
    Nothing,
    /// A sync round ([`PeerLink::sync_message`] until it returns `None`).
    Sync,
}

/// The hub's link to one peer of a flow: the sync state, and whether the peer takes
/// change frames.
#[derive(Debug, Clone, Default)]
pub struct PeerLink {
    sync: SyncState,
    streams: bool,
}

impl PeerLink {
    /// A link to a peer we know nothing about; `streams`: it subscribed with `stream`.
    pub fn new(streams: bool) -> Self {
        PeerLink {
            sync: SyncState::new(),
            streams,
        }
    }

    /// The sync state, for receiving the peer's sync messages.
    pub fn sync_state(&mut self) -> &mut SyncState {
        &mut self.sync
    }

    /// Forget what the peer has (after a dropped frame or a refusal): the next sync
    /// message starts over, and streaming waits until the peer is current again.
    pub fn reset(&mut self) {
        self.sync.reset();
    }

    /// The next sync message for the peer, if the protocol has something to say.
    pub fn sync_message(&mut self, doc: &mut FlowDoc) -> Option<Vec<u8>> {
        doc.generate_sync_message(&mut self.sync)
    }

    /// Whether the peer is known to have exactly `heads` (and to need nothing).
    fn is_current_at(&self, heads: &[ChangeHash]) -> bool {
        let state = &self.sync.0;
        let Some(theirs) = state.their_heads.as_ref() else {
            return false;
        };
        state.their_need.as_ref().is_none_or(|n| n.is_empty()) && same_set(theirs, heads)
    }

    /// New changes `new` took the document from `before` to `after`; `authored`: this
    /// peer sent them. Decides what the peer gets, and updates the sync state to
    /// match when the answer is [`Route::Stream`] or [`Route::Nothing`].
    pub fn route(
        &mut self,
        before: &[ChangeHash],
        after: &[ChangeHash],
        new: &[ChangeHash],
        authored: bool,
    ) -> Route {
        if authored {
            self.authored(new);
        }
        if !self.streams || !self.is_current_at(before) {
            return Route::Sync;
        }
        self.advance(after, new);
        if authored {
            Route::Nothing
        } else {
            Route::Stream
        }
    }

    /// The peer sent changes whose dependencies we lack (it streamed before the sync
    /// protocol brought us an earlier change of its own): make the next sync round
    /// say something even if ours is still unanswered, so the peer answers with what
    /// we lack. Unlike [`PeerLink::reset`] this keeps what we know it has, so nothing
    /// still queued for it is sent twice.
    pub fn request_sync(&mut self) {
        self.sync.0.in_flight = false;
        self.sync.0.have_responded = false;
    }

    /// The peer sent these changes itself, whichever way they came: never send them
    /// back (also while it lags and gets nothing else).
    pub fn authored(&mut self, new: &[ChangeHash]) {
        self.sync.0.sent_hashes.extend(new.iter().copied());
    }

    /// The change frame [`PeerLink::route`] said to stream could not be queued (the
    /// peer's queue was full): the peer has `before`, not the new changes. Every frame
    /// queued before is still delivered in order, so the state stays exact and the
    /// next sync round sends precisely what the peer lacks. (Resetting instead would
    /// resend what is still in its queue.)
    pub fn undelivered(&mut self, before: &[ChangeHash], new: &[ChangeHash]) {
        for hash in new {
            self.sync.0.sent_hashes.remove(hash);
        }
        self.set_peer_heads(before);
    }

    /// Records that the peer has `after` (and `new` among it), as if it had sent us a
    /// sync message saying so.
    fn advance(&mut self, after: &[ChangeHash], new: &[ChangeHash]) {
        let state = &mut self.sync.0;
        if state.sent_hashes.len() + new.len() > MAX_STREAMED_HASHES {
            state.sent_hashes.clear();
        }
        state.sent_hashes.extend(new.iter().copied());
        self.set_peer_heads(after);
    }

    fn set_peer_heads(&mut self, heads: &[ChangeHash]) {
        let state = &mut self.sync.0;
        let heads = heads.to_vec();
        state.their_heads = Some(heads.clone());
        state.their_need = Some(Vec::new());
        state.their_have = Some(vec![Have {
            last_sync: heads.clone(),
            bloom: BloomFilter::default(),
        }]);
        state.shared_heads = heads.clone();
        state.last_sent_heads = heads;
        state.in_flight = false;
        state.have_responded = true;
    }
}

fn same_set(a: &[ChangeHash], b: &[ChangeHash]) -> bool {
    a.len() == b.len() && (a == b || b.iter().all(|h| a.contains(h)))
}

/// What a client sends the hub (the payload of a binary frame of that kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// An Automerge sync message (frame kind `0x01`).
    Sync(Vec<u8>),
    /// Change chunks, concatenated (frame kind `0x02`).
    Changes(Vec<u8>),
}

/// A client's link to the hub for one flow: the sync state, and whether its own new
/// changes may go out as change frames.
#[derive(Debug, Clone, Default)]
pub struct HubLink {
    sync: SyncState,
    /// The hub agreed to stream (`flow_state.stream`).
    streaming: bool,
    /// The document holds every head the hub announced in `flow_state`: from then on
    /// everything this replica has was either sent to the hub already or is the hub's.
    caught_up: bool,
}

/// Upper bound on sync messages produced in one round: Automerge says `None` after
/// one message while it is in flight, so more means something is wrong.
const MAX_MESSAGES_PER_ROUND: usize = 64;

impl HubLink {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new subscription: a fresh sync state (the hub starts from one too).
    pub fn restart(&mut self) {
        *self = HubLink::new();
    }

    /// `flow_state` arrived: whether the hub streams.
    pub fn set_streaming(&mut self, streaming: bool) {
        self.streaming = streaming;
    }

    pub fn streaming(&self) -> bool {
        self.streaming
    }

    /// Call when the document first holds every head `flow_state` named.
    pub fn set_caught_up(&mut self) {
        self.caught_up = true;
    }

    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    pub fn sync_state(&mut self) -> &mut SyncState {
        &mut self.sync
    }

    /// Every sync message the document has for the hub right now.
    pub fn sync_messages(&mut self, doc: &mut FlowDoc) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while out.len() < MAX_MESSAGES_PER_ROUND {
            match doc.generate_sync_message(&mut self.sync) {
                Some(msg) => out.push(Outgoing::Sync(msg)),
                None => break,
            }
        }
        out
    }

    /// A local edit made the changes `new` (raw bytes, causal order): what to send.
    /// While streaming and caught up they go as they are; otherwise through the
    /// sync protocol.
    pub fn after_local_edit(&mut self, doc: &mut FlowDoc, new: &[Vec<u8>]) -> Vec<Outgoing> {
        if new.is_empty() {
            return Vec::new();
        }
        if self.streaming && self.caught_up {
            return vec![Outgoing::Changes(new.concat())];
        }
        self.sync_messages(doc)
    }

    /// Applies a sync message from the hub and returns the replies.
    pub fn receive_sync(
        &mut self,
        doc: &mut FlowDoc,
        msg: &[u8],
    ) -> Result<(Applied, Vec<Outgoing>)> {
        let applied = doc.receive_sync_message(&mut self.sync, msg)?;
        Ok((applied, self.sync_messages(doc)))
    }

    /// Applies a change frame from the hub. Should its changes lack dependencies
    /// (which an ordered hub never causes), the replica asks for a sync round.
    pub fn receive_changes(
        &mut self,
        doc: &mut FlowDoc,
        bytes: &[u8],
    ) -> Result<(Applied, Vec<Outgoing>)> {
        let applied = doc.receive_changes(bytes)?;
        if doc.missing_deps().is_empty() {
            return Ok((applied, Vec::new()));
        }
        self.sync.reset();
        Ok((applied, self.sync_messages(doc)))
    }
}

/// What applying a peer's change frame did on the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangesOutcome {
    /// Validated and applied (empty when the hub had them all).
    Applied(Applied),
    /// Some change depends on a change neither the document nor the frame holds:
    /// nothing was applied; the peer should be synced instead.
    MissingDeps(Vec<ChangeHash>),
}

/// Decodes a change frame's payload: one or more change chunks, nothing else.
fn decode_changes(bytes: &[u8]) -> Result<Vec<Change>> {
    let chunks = chunks::split(bytes).map_err(CrdtError::InvalidChange)?;
    if chunks.is_empty() {
        return Err(CrdtError::InvalidChange("no changes in the frame".into()));
    }
    chunks
        .into_iter()
        .map(|chunk| match chunk {
            Chunk::Change(c) => Ok(*c),
            Chunk::Container(_) => Err(CrdtError::InvalidChange(
                "a change frame carries changes, not documents".into(),
            )),
        })
        .collect()
}

/// The hashes of the changes in a change frame's payload, in order (for diagnostics
/// and tests: which changes did a frame carry?).
pub fn change_frame_hashes(bytes: &[u8]) -> Result<Vec<ChangeHash>> {
    Ok(decode_changes(bytes)?.iter().map(Change::hash).collect())
}

impl FlowDoc {
    /// The hub's apply of a peer's change frame: the same guarantees as
    /// [`FlowDoc::receive_sync_message_validated`] (decoded in full before anything is
    /// applied, validated against the schema, the document restored exactly on
    /// failure), plus: changes whose dependencies are missing are not queued but
    /// reported, so the hub can fall back to the sync protocol.
    pub fn receive_changes_validated(&mut self, bytes: &[u8]) -> Result<ChangesOutcome> {
        let changes = decode_changes(bytes)?;
        let in_frame: HashSet<ChangeHash> = changes.iter().map(Change::hash).collect();
        let new: Vec<Change> = changes
            .into_iter()
            .filter(|c| !self.has_change(&c.hash()))
            .collect();
        if new.is_empty() {
            return Ok(ChangesOutcome::Applied(Applied::default()));
        }
        let mut missing: Vec<ChangeHash> = new
            .iter()
            .flat_map(|c| c.deps().iter().copied())
            .filter(|d| !in_frame.contains(d))
            .collect();
        missing.retain(|d| !self.has_change(d));
        if !missing.is_empty() {
            missing.sort();
            missing.dedup();
            return Ok(ChangesOutcome::MissingDeps(missing));
        }
        self.apply_new_changes_validated(new)
            .map(ChangesOutcome::Applied)
    }

    /// Whether a change frame carries a change this document lacks (lets the hub
    /// refuse a read-only peer's edits without applying anything). Undecodable bytes
    /// are an error.
    pub fn change_frame_has_new_changes(&mut self, bytes: &[u8]) -> Result<bool> {
        Ok(decode_changes(bytes)?
            .iter()
            .any(|c| !self.has_change(&c.hash())))
    }

    /// A client's apply of the hub's change frame (no schema check: the hub validated
    /// them). Changes lacking dependencies are queued, as Automerge does.
    pub fn receive_changes(&mut self, bytes: &[u8]) -> Result<Applied> {
        let changes = decode_changes(bytes)?;
        Ok(Applied {
            changes: self.apply_parsed_changes(changes)?,
        })
    }
}

//! [`Replica`]: one subscribed flow's local state, sans-IO.
//!
//! A replica is the local [`FlowDoc`], the [`HubLink`] towards the hub (the Automerge
//! sync state, and whether new changes may be streamed as they are) and the
//! [`AckTracker`] of this session's edits. Every method returns what must go to the
//! hub (the payloads of binary frames, [`Outgoing`]), in order; the caller sends them
//! while still holding the replica's lock, so frames for one flow leave in the order
//! they were generated.
//!
//! # Rollback
//!
//! When the hub refuses a sync frame it stores nothing from it and resets its sync
//! state for this session. The replica then [rolls back](Replica::reject): every pending
//! edit fails, the document is rebuilt without this session's unacknowledged changes
//! (what the hub cannot have), and a fresh sync state starts a new exchange so the hub
//! resends whatever the rebuilt document lacks. If the rebuild fails the replica starts
//! over from an empty [`FlowDoc::new`]; either way the resync converges on the hub's
//! state.

use std::collections::HashSet;

use automerge::ChangeHash;
use flowhub_crdt::{CrdtError, FlowDoc, HubLink, Outgoing};
use flowhub_protocol::ErrorCode;

use crate::ticket::{AckTracker, TicketStatus};

/// After this many refusals with no sync message from the hub in between, a refusal
/// no longer triggers an immediate resync (the next local edit or hub message restarts
/// the exchange). Guards against a frame/refusal ping-pong with a hub that refuses
/// everything this session sends for the flow.
const MAX_REFUSALS_IN_A_ROW: u32 = 3;

/// What receiving one sync message did.
#[derive(Debug, Default)]
pub(crate) struct Received {
    /// How many changes the message applied (0 for protocol chatter).
    pub(crate) applied: usize,
    /// Replies for the hub.
    pub(crate) replies: Vec<Outgoing>,
}

/// What one local edit did.
pub(crate) struct Edited<R> {
    /// The closure's result.
    pub(crate) result: Result<R, CrdtError>,
    /// Hex hashes of the changes the edit made (also when `result` is an error but some
    /// typed edits inside the closure had already committed).
    pub(crate) hashes: Vec<String>,
    /// Frames carrying the changes.
    pub(crate) messages: Vec<Outgoing>,
}

pub(crate) struct Replica {
    doc: FlowDoc,
    link: HubLink,
    /// The heads `flow_state` named, until the document holds them all.
    catching_up: Option<Vec<ChangeHash>>,
    tracker: AckTracker,
    /// Actor ids (hex) this replica has edited under; a rebuilt document gets a new one.
    local_actors: HashSet<String>,
    /// Refusals since the last sync message received from the hub.
    refusals_in_a_row: u32,
}

impl Default for Replica {
    fn default() -> Self {
        Self::new()
    }
}

impl Replica {
    pub(crate) fn new() -> Self {
        Self::from_doc(FlowDoc::new())
    }

    fn from_doc(mut doc: FlowDoc) -> Self {
        // Applies from the hub go in place, without an O(document) snapshot each;
        // should Automerge panic part-way, `recover_from_poison` starts over.
        doc.validate_in_place(true);
        let mut local_actors = HashSet::new();
        local_actors.insert(doc.actor_hex());
        Replica {
            doc,
            link: HubLink::new(),
            catching_up: None,
            tracker: AckTracker::default(),
            local_actors,
            refusals_in_a_row: 0,
        }
    }

    pub(crate) fn doc(&mut self) -> &mut FlowDoc {
        &mut self.doc
    }

    pub(crate) fn doc_ref(&self) -> &FlowDoc {
        &self.doc
    }

    /// Every sync message the document has for the hub right now.
    pub(crate) fn outgoing(&mut self) -> Vec<Outgoing> {
        self.link.sync_messages(&mut self.doc)
    }

    /// `flow_state` arrived: whether the hub streams, and the heads to catch up to.
    /// Streaming our own edits waits until the document holds those heads: until
    /// then it may hold changes of ours the hub has not had (made offline), which only
    /// the sync protocol finds.
    pub(crate) fn subscribed(&mut self, stream: bool, heads: Vec<ChangeHash>) {
        self.link.set_streaming(stream);
        self.catching_up = Some(heads);
        self.check_caught_up();
    }

    fn check_caught_up(&mut self) {
        if let Some(heads) = &self.catching_up {
            if heads.iter().all(|h| self.doc.has_change(h)) {
                self.catching_up = None;
                self.link.set_caught_up();
            }
        }
    }

    /// What carries the changes made since `before` to the hub.
    fn outgoing_since(&mut self, before: &[ChangeHash]) -> Vec<Outgoing> {
        let new: Vec<Vec<u8>> = self
            .doc
            .doc_mut()
            .get_changes(before)
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        self.link.after_local_edit(&mut self.doc, &new)
    }

    /// Runs a local edit, registers the changes it made as pending, and returns the
    /// messages that carry them.
    pub(crate) fn edit<R>(
        &mut self,
        f: impl FnOnce(&mut FlowDoc) -> Result<R, CrdtError>,
    ) -> Edited<R> {
        let before = self.doc.heads();
        // Milliseconds, as the hub writes: the flow's history groups changes by time.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.doc.set_edit_time(Some(now_ms));
        let result = f(&mut self.doc);
        let hashes = self.new_changes_since(&before);
        self.tracker.register(&hashes);
        let messages = if hashes.is_empty() {
            Vec::new()
        } else {
            self.outgoing_since(&before)
        };
        Edited {
            result,
            hashes,
            messages,
        }
    }

    /// Runs arbitrary code on the document; if it changed the heads, returns the sync
    /// messages for the hub (the changes are not tracked as pending).
    pub(crate) fn with_doc<R>(&mut self, f: impl FnOnce(&mut FlowDoc) -> R) -> (R, Vec<Outgoing>) {
        let before = self.doc.heads();
        let result = f(&mut self.doc);
        let messages = if self.doc.heads() == before {
            Vec::new()
        } else {
            self.outgoing_since(&before)
        };
        (result, messages)
    }

    fn new_changes_since(&mut self, before: &[ChangeHash]) -> Vec<String> {
        if self.doc.heads() == before {
            return Vec::new();
        }
        self.doc
            .doc_mut()
            .get_changes_meta(before)
            .iter()
            .map(|meta| meta.hash.to_string())
            .collect()
    }

    /// Applies a sync message from the hub and returns the replies. On error (bytes
    /// that do not decode) neither the document nor the sync state changed.
    pub(crate) fn receive(&mut self, payload: &[u8]) -> Result<Received, CrdtError> {
        let (applied, replies) = match self.link.receive_sync(&mut self.doc, payload) {
            Ok(received) => received,
            Err(e) => return self.recover_from_poison(e),
        };
        self.refusals_in_a_row = 0;
        self.check_caught_up();
        Ok(Received {
            applied: applied.changes.len(),
            replies,
        })
    }

    /// Applies a change frame from the hub; the replies are empty unless the changes
    /// lacked dependencies (then a sync round asks for them).
    pub(crate) fn receive_changes(&mut self, payload: &[u8]) -> Result<Received, CrdtError> {
        let (applied, replies) = match self.link.receive_changes(&mut self.doc, payload) {
            Ok(received) => received,
            Err(e) => return self.recover_from_poison(e),
        };
        self.check_caught_up();
        Ok(Received {
            applied: applied.changes.len(),
            replies,
        })
    }

    /// After a failed apply: the error as it is, unless Automerge panicked part-way
    /// and left the document unusable. Then the replica starts over from an empty
    /// document and resyncs (the hub has every change but our unacknowledged
    /// ones, which fail: a poisoned document cannot be trusted to hold them).
    fn recover_from_poison(&mut self, error: CrdtError) -> Result<Received, CrdtError> {
        if !self.doc.is_poisoned() {
            return Err(error);
        }
        tracing::warn!(%error, "a failed apply left the replica unusable; resyncing from empty");
        self.tracker.reject_pending(
            ErrorCode::Internal,
            "the replica was rebuilt after a failed apply; edit again",
        );
        let mut doc = FlowDoc::new();
        doc.validate_in_place(true);
        self.local_actors.insert(doc.actor_hex());
        self.doc = doc;
        self.link.sync_state().reset();
        Ok(Received {
            applied: 0,
            replies: self.outgoing(),
        })
    }

    /// Records an `ack` from the hub.
    pub(crate) fn ack(&mut self, hashes: &[String]) {
        self.tracker.ack(hashes);
    }

    pub(crate) fn status(&self, hashes: &[String]) -> TicketStatus {
        self.tracker.status(hashes)
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.tracker.pending_len()
    }

    /// Prepares a new subscription (after a reconnect, or after the hub closed the
    /// flow): the hub starts from a fresh sync state, so must we. Returns at most
    /// `MAX_PENDING_HASHES` of the hashes still awaiting an ack, for
    /// `subscribe_flow.pending`; the hub acks those it already stored, and the new
    /// sync exchange sends it the others again.
    pub(crate) fn restart_sync(&mut self) -> Vec<String> {
        self.link.restart();
        self.catching_up = None;
        self.refusals_in_a_row = 0;
        let mut pending = self.tracker.pending_hashes();
        // Beyond the limit the rest are not lost: the sync resends whatever the hub
        // lacks, and a later resubscribe reports them.
        pending.truncate(flowhub_protocol::MAX_PENDING_HASHES);
        pending
    }

    /// The hub refused a sync frame and reset its side: fail the pending edits, roll
    /// the document back to what the hub can have, and restart the sync. Returns the
    /// first messages of the new exchange (none after [`MAX_REFUSALS_IN_A_ROW`]
    /// refusals without a sync message from the hub in between).
    pub(crate) fn reject(&mut self, code: ErrorCode, message: &str) -> Vec<Outgoing> {
        self.tracker.reject_pending(code, message);
        self.refusals_in_a_row += 1;
        let mut rebuilt = self.rebuild_without_unacked_local().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "rebuilding the replica failed; starting from empty");
            FlowDoc::new()
        });
        rebuilt.validate_in_place(true);
        self.local_actors.insert(rebuilt.actor_hex());
        self.doc = rebuilt;
        // The hub reset its side; whether it streams and whether we caught up stay.
        self.link.sync_state().reset();
        if self.refusals_in_a_row > MAX_REFUSALS_IN_A_ROW {
            tracing::warn!(
                refusals = self.refusals_in_a_row,
                "the hub keeps refusing this flow's sync frames; not resyncing until it sends one"
            );
            return Vec::new();
        }
        self.outgoing()
    }

    /// A copy of the document holding every change except this session's local changes
    /// that the hub has not acknowledged.
    fn rebuild_without_unacked_local(&mut self) -> Result<FlowDoc, CrdtError> {
        let changes = self.doc.doc_mut().get_changes(&[]);
        let keep: Vec<Vec<u8>> = changes
            .iter()
            .filter(|c| {
                let local = self.local_actors.contains(&c.actor_id().to_hex_string());
                !local || self.tracker.is_acked(&c.hash().to_string())
            })
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        FlowDoc::load_parts(None, &keep)
    }

    /// Whether the document contains every one of these changes.
    pub(crate) fn contains_all(&mut self, heads: &[ChangeHash]) -> bool {
        heads.iter().all(|h| self.doc.has_change(h))
    }
}

#[cfg(test)]
mod tests {
    use flowhub_crdt::{Endpoint, NewNode, Position};

    use flowhub_crdt::SyncState;

    use super::*;

    fn sync_payloads(out: Vec<Outgoing>) -> Vec<Vec<u8>> {
        out.into_iter()
            .map(|o| match o {
                Outgoing::Sync(m) => m,
                Outgoing::Changes(_) => panic!("not streaming: no change frames"),
            })
            .collect()
    }

    /// A stand-in for the hub: a FlowDoc that refuses edits from a read-only peer.
    struct FakeHub {
        doc: FlowDoc,
        sync: SyncState,
        read_only: bool,
    }

    enum HubReply {
        Sync(Vec<Vec<u8>>, Vec<String>),
        Refused,
    }

    impl FakeHub {
        fn new(doc: FlowDoc) -> Self {
            FakeHub {
                doc,
                sync: SyncState::new(),
                read_only: false,
            }
        }

        fn receive(&mut self, msg: &[u8]) -> HubReply {
            if self.read_only && self.doc.sync_message_has_new_changes(msg).unwrap() {
                self.sync.reset();
                return HubReply::Refused;
            }
            match self.doc.receive_sync_message_validated(&mut self.sync, msg) {
                Ok(applied) => {
                    let acked = applied.changes.iter().map(|c| c.hash_hex()).collect();
                    let mut out = Vec::new();
                    while let Some(m) = self.doc.generate_sync_message(&mut self.sync) {
                        out.push(m);
                    }
                    HubReply::Sync(out, acked)
                }
                Err(_) => HubReply::Refused,
            }
        }

        fn start(&mut self) -> Vec<Vec<u8>> {
            self.doc
                .generate_sync_message(&mut self.sync)
                .into_iter()
                .collect()
        }
    }

    /// Delivers messages both ways until both sides are quiet. Returns the refusals.
    fn pump(hub: &mut FakeHub, replica: &mut Replica, to_hub: Vec<Outgoing>) -> usize {
        let mut to_hub = sync_payloads(to_hub);
        let mut to_client = hub.start();
        let mut refusals = 0;
        for _ in 0..100 {
            if to_hub.is_empty() && to_client.is_empty() {
                return refusals;
            }
            for msg in std::mem::take(&mut to_hub) {
                match hub.receive(&msg) {
                    HubReply::Sync(out, acked) => {
                        if !acked.is_empty() {
                            replica.ack(&acked);
                        }
                        to_client.extend(out);
                    }
                    HubReply::Refused => {
                        refusals += 1;
                        to_client.clear();
                        to_hub = sync_payloads(replica.reject(ErrorCode::Forbidden, "read only"));
                        break;
                    }
                }
            }
            for msg in std::mem::take(&mut to_client) {
                to_hub.extend(sync_payloads(replica.receive(&msg).unwrap().replies));
            }
        }
        panic!("sync did not settle");
    }

    fn hub_with_two_nodes() -> (FakeHub, Vec<String>) {
        let mut doc = FlowDoc::new();
        doc.set_name("demo").unwrap();
        let (a, _) = doc
            .add_node(NewNode::new("trigger", "A", Position::new(0.0, 0.0)).with_id("a"))
            .unwrap();
        let (b, _) = doc
            .add_node(NewNode::new("http", "B", Position::new(1.0, 0.0)).with_id("b"))
            .unwrap();
        doc.connect(
            Some("e1".into()),
            Endpoint::new(&a, "out"),
            Endpoint::new(&b, "in"),
        )
        .unwrap();
        (FakeHub::new(doc), vec![a, b])
    }

    #[test]
    fn catches_up_with_the_hub() {
        let (mut hub, _) = hub_with_two_nodes();
        let mut replica = Replica::new();
        let heads = hub.doc.heads();
        assert!(!replica.contains_all(&heads));
        let first = replica.outgoing();
        assert_eq!(pump(&mut hub, &mut replica, first), 0);
        assert!(replica.contains_all(&heads));
        assert_eq!(replica.doc_ref().snapshot(), hub.doc.snapshot());
    }

    #[test]
    fn edits_reach_the_hub_and_are_acked() {
        let (mut hub, _) = hub_with_two_nodes();
        let mut replica = Replica::new();
        let first = replica.outgoing();
        pump(&mut hub, &mut replica, first);

        let edited = replica.edit(|doc| {
            doc.relabel_node("a", "A2")?;
            doc.move_node("b", Position::new(5.0, 5.0))?;
            Ok(7)
        });
        assert_eq!(edited.result.unwrap(), 7);
        assert_eq!(edited.hashes.len(), 2);
        assert!(!edited.messages.is_empty());
        assert_eq!(replica.status(&edited.hashes), TicketStatus::Pending);
        assert_eq!(replica.pending_len(), 2);

        assert_eq!(pump(&mut hub, &mut replica, edited.messages), 0);
        assert_eq!(replica.status(&edited.hashes), TicketStatus::Acked);
        assert_eq!(hub.doc.snapshot().nodes["a"].label, "A2");
        assert_eq!(replica.pending_len(), 0);
    }

    #[test]
    fn failed_closure_keeps_committed_changes_tracked() {
        let mut replica = Replica::new();
        let edited = replica.edit(|doc| {
            doc.set_name("x")?;
            doc.relabel_node("missing", "y")?;
            Ok(())
        });
        assert!(matches!(edited.result, Err(CrdtError::NodeNotFound(_))));
        assert_eq!(edited.hashes.len(), 1);
        assert!(!edited.messages.is_empty());
    }

    #[test]
    fn no_op_edit_has_empty_ticket_and_sends_nothing() {
        let mut replica = Replica::new();
        let edited = replica.edit(|doc| Ok(doc.snapshot().nodes.len()));
        assert!(edited.hashes.is_empty());
        assert!(edited.messages.is_empty());
        assert_eq!(replica.status(&edited.hashes), TicketStatus::Acked);
    }

    #[test]
    fn refused_edit_is_rolled_back_by_resyncing() {
        let (mut hub, _) = hub_with_two_nodes();
        let mut replica = Replica::new();
        let first = replica.outgoing();
        pump(&mut hub, &mut replica, first);
        let hub_state = hub.doc.snapshot();

        hub.read_only = true;
        let edited = replica.edit(|doc| {
            doc.add_node(NewNode::new("http", "C", Position::new(2.0, 2.0)).with_id("c"))
        });
        edited.result.unwrap();
        assert!(replica.doc_ref().snapshot().nodes.contains_key("c"));

        let refusals = pump(&mut hub, &mut replica, edited.messages);
        assert_eq!(refusals, 1);
        assert_eq!(
            replica.status(&edited.hashes),
            TicketStatus::Rejected {
                code: ErrorCode::Forbidden,
                message: "read only".into()
            }
        );
        // Rolled back at once (the rebuild keeps the hub's changes), and in sync.
        assert_eq!(replica.doc_ref().snapshot(), hub_state);
        assert_eq!(hub.doc.snapshot(), hub_state);
        let heads = hub.doc.heads();
        assert!(replica.contains_all(&heads));
        assert_eq!(replica.doc().heads(), heads);

        // Later edits work once the hub accepts them again.
        hub.read_only = false;
        let edited = replica.edit(|doc| doc.set_name("renamed"));
        pump(&mut hub, &mut replica, edited.messages);
        assert_eq!(replica.status(&edited.hashes), TicketStatus::Acked);
        assert_eq!(hub.doc.snapshot().name, "renamed");
    }

    #[test]
    fn rollback_keeps_acked_local_changes() {
        let (mut hub, _) = hub_with_two_nodes();
        let mut replica = Replica::new();
        let first = replica.outgoing();
        pump(&mut hub, &mut replica, first);

        let kept = replica.edit(|doc| doc.relabel_node("a", "kept"));
        pump(&mut hub, &mut replica, kept.messages);
        assert_eq!(replica.status(&kept.hashes), TicketStatus::Acked);

        let dropped = replica.edit(|doc| doc.relabel_node("b", "dropped"));
        let resync = replica.reject(ErrorCode::SchemaViolation, "no");
        assert!(!resync.is_empty());
        let snap = replica.doc_ref().snapshot();
        assert_eq!(snap.nodes["a"].label, "kept");
        assert_eq!(snap.nodes["b"].label, "B");
        assert!(matches!(
            replica.status(&dropped.hashes),
            TicketStatus::Rejected {
                code: ErrorCode::SchemaViolation,
                ..
            }
        ));
        // The hub reset its side too; the new exchange converges.
        hub.sync.reset();
        pump(&mut hub, &mut replica, resync);
        assert_eq!(replica.doc_ref().snapshot(), hub.doc.snapshot());
    }

    /// A change Automerge 0.12 panics applying: a put into an object it never saw.
    fn change_on_missing_object(deps: Vec<ChangeHash>) -> automerge::Change {
        use automerge::legacy;
        let actor = automerge::ActorId::random();
        legacy::Change {
            operations: vec![legacy::Op {
                action: legacy::OpType::Put(automerge::ScalarValue::Str("boom".into())),
                obj: legacy::ObjectId::Id(legacy::OpId::new(999, &actor)),
                key: legacy::Key::Map("k".into()),
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

    /// The replica applies the hub's changes in place (no snapshot per apply). When
    /// Automerge panics part-way, the document cannot be trusted: the replica
    /// starts over from empty, fails its unacknowledged edits and resyncs.
    #[test]
    fn a_panicking_apply_resyncs_from_empty() {
        let (mut hub, _) = hub_with_two_nodes();
        let mut replica = Replica::new();
        let first = replica.outgoing();
        pump(&mut hub, &mut replica, first);
        assert_eq!(replica.doc_ref().snapshot(), hub.doc.snapshot());

        let unsent = replica.edit(|doc| doc.relabel_node("a", "unsent"));
        let bad = change_on_missing_object(replica.doc().heads());
        let received = replica
            .receive_changes(bad.raw_bytes())
            .expect("recovered, not an error");
        assert_eq!(received.applied, 0);
        assert!(!received.replies.is_empty(), "a resync starts");
        assert!(!replica.doc_ref().is_poisoned());
        let hub_heads = hub.doc.heads();
        assert!(!replica.contains_all(&hub_heads), "started over from empty");
        assert!(matches!(
            replica.status(&unsent.hashes),
            TicketStatus::Rejected {
                code: ErrorCode::Internal,
                ..
            }
        ));
        pump(&mut hub, &mut replica, received.replies);
        assert_eq!(replica.doc_ref().snapshot(), hub.doc.snapshot());
        assert_eq!(replica.doc_ref().snapshot().nodes["a"].label, "A");

        // An apply that fails without a panic is undone in place: same document.
        let heads = replica.doc().heads();
        let mut not_a_change = bad.raw_bytes().to_vec();
        not_a_change.truncate(10);
        assert!(replica.receive_changes(&not_a_change).is_err());
        assert_eq!(replica.doc().heads(), heads);
    }

    #[test]
    fn endless_refusals_stop_resyncing() {
        let mut replica = Replica::new();
        for _ in 0..MAX_REFUSALS_IN_A_ROW {
            assert!(!replica
                .reject(ErrorCode::BadRequest, "not subscribed")
                .is_empty());
        }
        assert!(replica
            .reject(ErrorCode::BadRequest, "not subscribed")
            .is_empty());
        // A message from the hub re-arms the resync.
        let mut hub = FlowDoc::new();
        let mut hub_sync = SyncState::new();
        let msg = hub.generate_sync_message(&mut hub_sync).unwrap();
        replica.receive(&msg).unwrap();
        assert!(!replica.reject(ErrorCode::BadRequest, "again").is_empty());
        // Local edits are always sent.
        for _ in 0..=MAX_REFUSALS_IN_A_ROW {
            replica.reject(ErrorCode::BadRequest, "x");
        }
        assert!(!replica.edit(|doc| doc.set_name("n")).messages.is_empty());
    }

    #[test]
    fn garbage_from_the_hub_is_an_error_not_a_panic() {
        let mut replica = Replica::new();
        assert!(replica.receive(b"\x42garbage").is_err());
        assert!(replica.receive(&[]).is_err());
        assert!(replica.outgoing().len() <= 1);
    }
}

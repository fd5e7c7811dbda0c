//! [`FlowHandle`]: one subscribed flow, its local replica and the waits built on it.
//!
//! The replica lives in a [`FlowShared`] behind a `std::sync::Mutex` shared by every
//! handle clone and by the connection's reader task. The lock is only ever held for
//! synchronous work (an edit, applying a sync message, queueing the resulting frames)
//! and never across an `.await`. Waits are driven by two `tokio::sync::watch` counters:
//! `version` (bumped when remote changes are applied or the replica is rolled back) and
//! `acks` (bumped when an `ack` or a refusal arrives).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use automerge::ChangeHash;
use flowhub_crdt::{CrdtError, FlowDoc, FlowSnapshot};
use flowhub_protocol::{ClientMessage, ErrorCode, Role};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::connection::ClientInner;
use crate::dispatch::{lock, Shared};
use crate::replica::{Received, Replica};
use crate::ticket::{EditTicket, TicketStatus};
use crate::ClientError;

/// The state one subscribed flow shares between its handles and the reader task.
pub(crate) struct FlowShared {
    pub(crate) flow_id: String,
    role: OnceLock<Role>,
    /// Hex heads named by `flow_state`: the replica is caught up once it has them all.
    initial_heads: OnceLock<Vec<String>>,
    replica: Mutex<Replica>,
    /// Bumped when remote changes were applied or the replica was rolled back.
    version: watch::Sender<u64>,
    /// Bumped when an `ack` or a refusal arrived, and when the flow is unsubscribed.
    acks: watch::Sender<u64>,
    /// Set when the subscribe failed or the flow was unsubscribed.
    gone: AtomicBool,
    /// A resubscribe after an `internal` error is under way.
    resubscribing: AtomicBool,
}

impl FlowShared {
    pub(crate) fn new(flow_id: &str) -> Self {
        FlowShared {
            flow_id: flow_id.to_owned(),
            role: OnceLock::new(),
            initial_heads: OnceLock::new(),
            replica: Mutex::new(Replica::new()),
            version: watch::Sender::new(0),
            acks: watch::Sender::new(0),
            gone: AtomicBool::new(false),
            resubscribing: AtomicBool::new(false),
        }
    }

    /// Tells the replica whether the hub streams, and which heads mean caught up.
    pub(crate) fn set_link(&self, stream: bool, heads_hex: &[String]) {
        let heads = flowhub_crdt::parse_heads(heads_hex).unwrap_or_default();
        lock(&self.replica).subscribed(stream, heads);
    }

    /// Records the hub's `flow_state` answer.
    pub(crate) fn set_subscribed(&self, role: Role, heads: Vec<String>) {
        let _ = self.role.set(role);
        let _ = self.initial_heads.set(heads);
        // Anyone waiting for a concurrent subscribe of the same flow looks again.
        self.acks.send_modify(|v| *v += 1);
    }

    /// Claims the one resubscribe slot; `false` if a resubscribe is already running.
    pub(crate) fn begin_resubscribe(&self) -> bool {
        !self.resubscribing.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn end_resubscribe(&self) {
        self.resubscribing.store(false, Ordering::Release);
    }

    /// Starts the sync over for a new subscription; returns the pending hashes to
    /// report in `subscribe_flow`.
    pub(crate) fn restart_sync(&self) -> Vec<String> {
        lock(&self.replica).restart_sync()
    }

    /// How many of this client's changes await an ack.
    pub(crate) fn pending_len(&self) -> usize {
        lock(&self.replica).pending_len()
    }

    pub(crate) fn is_subscribed(&self) -> bool {
        self.role.get().is_some()
    }

    pub(crate) fn initial_heads(&self) -> Vec<String> {
        self.initial_heads.get().cloned().unwrap_or_default()
    }

    pub(crate) fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// The flow is no longer subscribed: wake every waiter so it can fail.
    pub(crate) fn mark_gone(&self) {
        self.gone.store(true, Ordering::Release);
        self.acks.send_modify(|v| *v += 1);
        self.version.send_modify(|v| *v += 1);
    }

    #[cfg(test)]
    pub(crate) fn version_rx(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> FlowSnapshot {
        lock(&self.replica).doc_ref().snapshot()
    }

    /// Runs an edit the way [`FlowHandle::edit`] does; returns the new hashes.
    #[cfg(test)]
    pub(crate) fn edit_for_test<R>(
        &self,
        conn: &Shared,
        f: impl FnOnce(&mut FlowDoc) -> Result<R, CrdtError>,
    ) -> Vec<String> {
        let mut replica = lock(&self.replica);
        let edited = replica.edit(f);
        edited.result.expect("test edit");
        conn.send_sync(&self.flow_id, edited.messages)
            .expect("send");
        edited.hashes
    }

    #[cfg(test)]
    pub(crate) fn status_for_test(&self, hashes: &[String]) -> TicketStatus {
        lock(&self.replica).status(hashes)
    }

    /// Sends whatever sync messages the replica has for the hub now.
    pub(crate) fn sync_now(&self, conn: &Shared) -> Result<(), ClientError> {
        let mut replica = lock(&self.replica);
        let messages = replica.outgoing();
        conn.send_sync(&self.flow_id, messages)
    }

    /// A binary sync frame from the hub: apply it and answer it.
    pub(crate) fn on_sync(&self, conn: &Shared, payload: &[u8]) {
        self.on_frame(conn, "sync message", |replica| replica.receive(payload));
    }

    /// A change frame from the hub (this client subscribed with `stream`): apply it.
    /// No answer, unless the changes lacked dependencies and a sync round must fetch
    /// them.
    pub(crate) fn on_changes(&self, conn: &Shared, payload: &[u8]) {
        self.on_frame(conn, "change frame", |replica| {
            replica.receive_changes(payload)
        });
    }

    /// Applies a frame from the hub with `receive`, sends the replies, and wakes the
    /// waiters when remote changes arrived.
    fn on_frame(
        &self,
        conn: &Shared,
        what: &str,
        receive: impl FnOnce(&mut Replica) -> Result<Received, CrdtError>,
    ) {
        let applied = {
            let mut replica = lock(&self.replica);
            match receive(&mut replica) {
                Ok(received) => {
                    if let Err(e) = conn.send_sync(&self.flow_id, received.replies) {
                        tracing::debug!(session_id = %conn.session_id, flow_id = %self.flow_id, error = %e, "reply to the hub not sent");
                    }
                    received.applied
                }
                Err(e) => {
                    tracing::warn!(session_id = %conn.session_id, flow_id = %self.flow_id, error = %e, "undecodable {what} from the hub ignored");
                    0
                }
            }
        };
        if applied > 0 {
            tracing::trace!(session_id = %conn.session_id, flow_id = %self.flow_id, applied, "remote changes applied");
            self.version.send_modify(|v| *v += 1);
        }
    }

    /// An `ack` from the hub: these changes are stored durably.
    pub(crate) fn on_ack(&self, changes: &[String]) {
        lock(&self.replica).ack(changes);
        self.acks.send_modify(|v| *v += 1);
    }

    /// An `error` naming this flow: the hub refused a sync frame, stored nothing from
    /// it and reset its sync state. Pending edits fail and the replica resyncs.
    pub(crate) fn on_refused(&self, conn: &Shared, code: ErrorCode, message: &str) {
        {
            let mut replica = lock(&self.replica);
            let pending = replica.pending_len();
            tracing::info!(session_id = %conn.session_id, flow_id = %self.flow_id, %code, message, pending, "hub refused a sync frame; rolling back and resyncing");
            let messages = replica.reject(code, message);
            if let Err(e) = conn.send_sync(&self.flow_id, messages) {
                tracing::debug!(session_id = %conn.session_id, flow_id = %self.flow_id, error = %e, "resync not sent");
            }
        }
        self.acks.send_modify(|v| *v += 1);
        self.version.send_modify(|v| *v += 1);
    }
}

/// One subscribed flow. Cheap to clone; every clone shares the same replica, which the
/// connection keeps in sync with the hub in the background.
///
/// Local edits go through [`FlowHandle::edit`], which applies them to the replica at
/// once, sends them to the hub and returns an [`EditTicket`];
/// [`FlowHandle::wait_acked`] then says whether the hub stored them.
///
/// A refused edit is rolled back locally by resyncing from the hub: when the hub
/// answers a sync frame with an `error` (a viewer's edit is `forbidden`, an edit that
/// breaks the schema is a `schema_violation`, ...), every pending ticket of the flow
/// fails with [`ClientError::Rejected`], the replica drops this session's
/// unacknowledged changes, and a fresh sync exchange brings it back to the hub's state.
#[derive(Clone)]
pub struct FlowHandle {
    flow: Arc<FlowShared>,
    client: Arc<ClientInner>,
}

impl std::fmt::Debug for FlowHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowHandle")
            .field("flow_id", &self.flow.flow_id)
            .field("role", &self.flow.role.get())
            .finish_non_exhaustive()
    }
}

impl FlowHandle {
    pub(crate) fn new(flow: Arc<FlowShared>, client: Arc<ClientInner>) -> Self {
        FlowHandle { flow, client }
    }

    fn conn(&self) -> &Shared {
        &self.client.shared
    }

    pub fn flow_id(&self) -> &str {
        &self.flow.flow_id
    }

    /// The role the hub granted on this flow (from `flow_state`).
    pub fn role(&self) -> Role {
        self.flow.role.get().copied().unwrap_or(Role::Viewer)
    }

    /// Applies an edit to the local replica and sends it to the hub.
    ///
    /// `f` runs under the replica's lock (keep it short and synchronous); every change
    /// it commits is recorded as pending and named by the returned ticket. The role is
    /// not checked here: a viewer's edit is sent, refused by the hub with `forbidden`,
    /// and rolled back (see [`FlowHandle::wait_acked`]).
    ///
    /// If `f` fails after some typed edits inside it already committed, those changes
    /// stay in the replica and are sent like any other; the error is returned.
    pub async fn edit<R>(
        &self,
        f: impl FnOnce(&mut FlowDoc) -> Result<R, CrdtError>,
    ) -> Result<(R, EditTicket), ClientError> {
        self.usable()?;
        let (result, hashes, sent) = {
            let mut replica = lock(&self.flow.replica);
            let edited = replica.edit(f);
            let sent = self.conn().send_sync(&self.flow.flow_id, edited.messages);
            (edited.result, edited.hashes, sent)
        };
        if !hashes.is_empty() {
            tracing::debug!(session_id = %self.conn().session_id, flow_id = %self.flow.flow_id, changes = hashes.len(), "local edit sent");
        }
        let value = result?;
        match sent {
            // The change is in the replica and pending: the resubscribe after the
            // reconnect sends it.
            Err(ClientError::Closed { .. }) if self.conn().reconnects() => {}
            sent => sent?,
        }
        Ok((value, EditTicket { hashes }))
    }

    /// Waits until the hub acknowledged every change of `ticket` (it stored them).
    ///
    /// Fails with [`ClientError::Rejected`] if the hub refused a sync frame while any of
    /// them was pending (the changes were then rolled back). When `timeout` passes
    /// first the outcome is [`ClientError::AckUnknown`]: not a failure, the edit stays
    /// pending and may well be stored; wait again later. A connection that closes ends
    /// the wait with [`ClientError::Closed`] (the edits stay pending and
    /// [`crate::Client::reconnect`] settles them), except on a client that reconnects
    /// by itself ([`crate::Client::connect_with_failover`]), where the wait goes on
    /// across the reconnect. An empty ticket is acked at once.
    pub async fn wait_acked(
        &self,
        ticket: &EditTicket,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let mut rx = self.flow.acks.subscribe();
        let outcome = self
            .wait_on(&mut rx, timeout, "ack", || {
                match lock(&self.flow.replica).status(&ticket.hashes) {
                    TicketStatus::Acked => Some(Ok(())),
                    TicketStatus::Rejected { code, message } => {
                        Some(Err(ClientError::Rejected { code, message }))
                    }
                    TicketStatus::Pending => None,
                }
            })
            .await;
        match outcome {
            Err(ClientError::Timeout(_)) => Err(ClientError::AckUnknown {
                flow_id: self.flow.flow_id.clone(),
            }),
            outcome => outcome,
        }
    }

    /// How many of this client's changes on this flow the hub has not acknowledged
    /// (nor refused) yet.
    pub fn pending_edits(&self) -> usize {
        self.flow.pending_len()
    }

    /// The flow as plain data.
    pub fn snapshot(&self) -> FlowSnapshot {
        lock(&self.flow.replica).doc_ref().snapshot()
    }

    /// The flow as JSON (`FlowDoc::to_json`: name, heads, nodes, edges).
    pub fn to_json(&self) -> serde_json::Value {
        lock(&self.flow.replica).doc().to_json()
    }

    /// The replica's heads as sorted hex.
    pub fn heads_hex(&self) -> Vec<String> {
        lock(&self.flow.replica).doc().heads_hex()
    }

    /// Runs `f` on the replica under its lock. Changes made here are sent to the hub
    /// but not tracked (no ticket); prefer [`FlowHandle::edit`] for edits.
    pub fn with_doc<R>(&self, f: impl FnOnce(&mut FlowDoc) -> R) -> R {
        let mut replica = lock(&self.flow.replica);
        let (result, messages) = replica.with_doc(f);
        if let Err(e) = self.conn().send_sync(&self.flow.flow_id, messages) {
            tracing::debug!(session_id = %self.conn().session_id, flow_id = %self.flow.flow_id, error = %e, "sync after with_doc not sent");
        }
        result
    }

    /// Resolves after the next remote change is applied to the replica (or the replica
    /// was rolled back). Also resolves when the connection closes or the flow is
    /// unsubscribed, so a loop around it should check [`crate::Client::is_closed`].
    pub async fn changed(&self) {
        let mut version = self.flow.version.subscribe();
        let mut closed = self.conn().closed_rx();
        if closed.borrow_and_update().is_some() || self.flow.is_gone() {
            return;
        }
        tokio::select! {
            _ = version.changed() => {}
            _ = closed.changed() => {}
        }
    }

    /// Waits until `pred` holds for the replica's snapshot (checked at once, then after
    /// every remote change).
    pub async fn wait_until(
        &self,
        pred: impl Fn(&FlowSnapshot) -> bool,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let mut rx = self.flow.version.subscribe();
        self.wait_on(&mut rx, timeout, "flow condition", || {
            pred(&lock(&self.flow.replica).doc_ref().snapshot()).then_some(Ok(()))
        })
        .await
    }

    /// Waits until the replica contains every one of these changes (hex hashes, as in
    /// `flow_state.heads`, `ack.changes` or [`FlowHandle::heads_hex`]).
    pub async fn wait_for_heads(
        &self,
        heads_hex: &[String],
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let heads = parse_heads(heads_hex)?;
        let mut rx = self.flow.version.subscribe();
        self.wait_on(&mut rx, timeout, "heads", || {
            lock(&self.flow.replica)
                .contains_all(&heads)
                .then_some(Ok(()))
        })
        .await
    }

    /// Leaves the flow (`unsubscribe_flow`). Every clone of this handle stops working
    /// (even if the hub answers with an error): edits and waits fail with
    /// [`ClientError::NotSubscribed`]. Calling it again does nothing.
    pub async fn unsubscribe(&self) -> Result<(), ClientError> {
        if self.flow.is_gone() {
            return Ok(());
        }
        // Forget the flow first: sync frames still in flight may be answered with
        // `not subscribed` errors, which must not trigger a resync.
        self.conn().forget_flow(&self.flow);
        let msg = ClientMessage::UnsubscribeFlow {
            id: None,
            flow_id: self.flow.flow_id.clone(),
        };
        self.conn().request(msg).await?;
        tracing::debug!(session_id = %self.conn().session_id, flow_id = %self.flow.flow_id, "unsubscribed");
        Ok(())
    }

    fn usable(&self) -> Result<(), ClientError> {
        if let Some(info) = self
            .conn()
            .close_info()
            .filter(|_| !self.conn().reconnects())
        {
            return Err(ClientError::closed(Some(&info)));
        }
        if self.flow.is_gone() {
            return Err(self.not_subscribed());
        }
        Ok(())
    }

    fn not_subscribed(&self) -> ClientError {
        ClientError::NotSubscribed {
            flow_id: self.flow.flow_id.clone(),
        }
    }

    /// Re-runs `check` whenever `rx` changes, until it returns `Some`, the connection
    /// closes, the flow is unsubscribed or `timeout` passes.
    async fn wait_on<T>(
        &self,
        rx: &mut watch::Receiver<u64>,
        timeout: Duration,
        what: &'static str,
        mut check: impl FnMut() -> Option<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut closed = self.conn().closed_rx();
        loop {
            rx.borrow_and_update();
            if let Some(done) = check() {
                return done;
            }
            if self.flow.is_gone() {
                return Err(self.not_subscribed());
            }
            if let Some(info) = closed.borrow_and_update().clone() {
                if !self.conn().reconnects() {
                    return Err(ClientError::closed(Some(&info)));
                }
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Err(self.not_subscribed());
                    }
                }
                _ = closed.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Err(ClientError::Timeout(what)),
            }
        }
    }
}

/// Parses hex change hashes; a malformed one is a protocol error (it can never be
/// satisfied).
pub(crate) fn parse_heads(heads_hex: &[String]) -> Result<Vec<ChangeHash>, ClientError> {
    heads_hex
        .iter()
        .map(|h| {
            h.parse::<ChangeHash>()
                .map_err(|e| ClientError::Protocol(format!("invalid change hash `{h}`: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_or_fail_cleanly() {
        let genesis = flowhub_crdt::genesis_hash().to_string();
        assert_eq!(
            parse_heads(std::slice::from_ref(&genesis)).unwrap().len(),
            1
        );
        assert!(parse_heads(&[]).unwrap().is_empty());
        assert!(matches!(
            parse_heads(&["zz".into()]),
            Err(ClientError::Protocol(_))
        ));
    }
}

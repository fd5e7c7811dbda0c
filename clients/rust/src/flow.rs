//! [`FlowHandle`]: one subscribed flow, its local replica and the waits built on it.
//!
//! The replica lives in a [`FlowShared`] (see `flow_state`) shared by every handle
//! clone and by the connection's reader task.

use std::sync::Arc;
use std::time::Duration;

use automerge::ChangeHash;
use flowhub_crdt::{CrdtError, FlowDoc, FlowSnapshot};
use flowhub_protocol::{ClientMessage, Role};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::dispatch::Shared;
use crate::flow_state::{lock, FlowShared};

use crate::ticket::{EditTicket, TicketStatus};
use crate::ClientError;

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
    conn: Arc<Shared>,
    /// Keeps the client (and so the connection) alive while a handle exists.
    _client: Arc<dyn std::any::Any + Send + Sync>,
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
    pub(crate) fn new(
        flow: Arc<FlowShared>,
        conn: Arc<Shared>,
        client: Arc<dyn std::any::Any + Send + Sync>,
    ) -> Self {
        FlowHandle {
            flow,
            conn,
            _client: client,
        }
    }

    fn conn(&self) -> &Shared {
        &self.conn
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
            let sent = self.conn().send_frames(&self.flow.flow_id, edited.messages);
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
        if let Err(e) = self.conn().send_frames(&self.flow.flow_id, messages) {
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

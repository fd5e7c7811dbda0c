//! [`FlowShared`]: the state of one subscribed flow that its handles and the
//! connection's reader task share (the replica, the role, the wake-up counters).
//!
//! It sits below both the connection's dispatch (which routes frames to it) and
//! [`FlowHandle`](crate::FlowHandle) (which edits through it): it sends only through
//! the small [`FrameSink`] trait, so it depends on neither.
//!
//! The replica is behind a `std::sync::Mutex`, only ever held for synchronous work
//! (an edit, applying a sync message, queueing the resulting frames) and never across
//! an `.await`. Waits are driven by two `tokio::sync::watch` counters: `version`
//! (bumped when remote changes are applied or the replica is rolled back) and `acks`
//! (bumped when an `ack` or a refusal arrives).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use flowhub_crdt::{CrdtError, Outgoing};
#[cfg(test)]
use flowhub_crdt::{FlowDoc, FlowSnapshot};
use flowhub_protocol::{ErrorCode, Role};
use tokio::sync::watch;

use crate::replica::{Received, Replica};
#[cfg(test)]
use crate::ticket::TicketStatus;
use crate::ClientError;

/// Locks a std mutex, recovering from poisoning (a panic in user code passed to
/// `edit` or `with_doc` must not take the connection down).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where a flow's frames go: the connection (its writer task).
pub(crate) trait FrameSink {
    /// Queues one binary frame per message, in order.
    fn send_sync(&self, flow_id: &str, messages: Vec<Outgoing>) -> Result<(), ClientError>;
    /// A stable label of the session for logs.
    fn session_label(&self) -> &str;
}

/// The state one subscribed flow shares between its handles and the reader task.
pub(crate) struct FlowShared {
    pub(crate) flow_id: String,
    pub(crate) role: OnceLock<Role>,
    /// Hex heads named by `flow_state`: the replica is caught up once it has them all.
    initial_heads: OnceLock<Vec<String>>,
    pub(crate) replica: Mutex<Replica>,
    /// Bumped when remote changes were applied or the replica was rolled back.
    pub(crate) version: watch::Sender<u64>,
    /// Bumped when an `ack` or a refusal arrived, and when the flow is unsubscribed.
    pub(crate) acks: watch::Sender<u64>,
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
        conn: &dyn FrameSink,
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
    pub(crate) fn sync_now(&self, conn: &dyn FrameSink) -> Result<(), ClientError> {
        let mut replica = lock(&self.replica);
        let messages = replica.outgoing();
        conn.send_sync(&self.flow_id, messages)
    }

    /// A binary sync frame from the hub: apply it and answer it.
    pub(crate) fn on_sync(&self, conn: &dyn FrameSink, payload: &[u8]) {
        self.on_frame(conn, "sync message", |replica| replica.receive(payload));
    }

    /// A change frame from the hub (this client subscribed with `stream`): apply it.
    /// No answer, unless the changes lacked dependencies and a sync round must fetch
    /// them.
    pub(crate) fn on_changes(&self, conn: &dyn FrameSink, payload: &[u8]) {
        self.on_frame(conn, "change frame", |replica| {
            replica.receive_changes(payload)
        });
    }

    /// Applies a frame from the hub with `receive`, sends the replies, and wakes the
    /// waiters when remote changes arrived.
    fn on_frame(
        &self,
        conn: &dyn FrameSink,
        what: &str,
        receive: impl FnOnce(&mut Replica) -> Result<Received, CrdtError>,
    ) {
        let applied = {
            let mut replica = lock(&self.replica);
            match receive(&mut replica) {
                Ok(received) => {
                    if let Err(e) = conn.send_sync(&self.flow_id, received.replies) {
                        tracing::debug!(session_id = %conn.session_label(), flow_id = %self.flow_id, error = %e, "reply to the hub not sent");
                    }
                    received.applied
                }
                Err(e) => {
                    tracing::warn!(session_id = %conn.session_label(), flow_id = %self.flow_id, error = %e, "undecodable {what} from the hub ignored");
                    0
                }
            }
        };
        if applied > 0 {
            tracing::trace!(session_id = %conn.session_label(), flow_id = %self.flow_id, applied, "remote changes applied");
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
    pub(crate) fn on_refused(&self, conn: &dyn FrameSink, code: ErrorCode, message: &str) {
        {
            let mut replica = lock(&self.replica);
            let pending = replica.pending_len();
            tracing::info!(session_id = %conn.session_label(), flow_id = %self.flow_id, %code, message, pending, "hub refused a sync frame; rolling back and resyncing");
            let messages = replica.reject(code, message);
            if let Err(e) = conn.send_sync(&self.flow_id, messages) {
                tracing::debug!(session_id = %conn.session_label(), flow_id = %self.flow_id, error = %e, "resync not sent");
            }
        }
        self.acks.send_modify(|v| *v += 1);
        self.version.send_modify(|v| *v += 1);
    }
}

//! A session's bounded outbound queue, and what it carries.
//!
//! Actors never wait on a client: they `try_send` into this queue and act on the
//! outcome, so one slow phone never stalls a flow. The policy per message class:
//! - document sync ([`Outbound::try_send_sync`]): on overflow the frame is dropped and
//!   the caller resyncs the peer later from its own state (nothing is lost: the flow
//!   actor holds the document);
//! - control messages (acks, errors, replies; [`Outbound::send_control`]): these cannot
//!   be regenerated, so on overflow the session is beyond help and is closed with
//!   [`close::TOO_SLOW`].
//!
//! The queue carries typed messages ([`OutFrame`]), not wire bytes: the session's
//! transport (native JSON + binary frames, automerge-repo CBOR, Server-Sent Events)
//! encodes each one as it leaves. A message broadcast to many sessions is one
//! [`SharedMessage`], and its JSON is made once, by the first writer that needs it.
//!
//! Closing goes through a `watch` beside the queue, so it works even when the queue is
//! full.

use std::sync::{Arc, OnceLock};

use flowhub_protocol::{close, encode, frame::encode_flow_sync, ErrorCode, ServerMessage};
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;

/// A server message shared by every session it is sent to.
///
/// Cloning is a reference count. [`SharedMessage::json`] encodes the message the first
/// time a JSON transport asks and keeps the text, so a presence diff or run event
/// broadcast to ten thousand sessions is encoded once; a transport that does not speak
/// JSON (the automerge-repo bridge) reads the typed message and never pays for it.
#[derive(Debug, Clone)]
pub struct SharedMessage(Arc<SharedInner>);

#[derive(Debug)]
struct SharedInner {
    message: ServerMessage,
    json: OnceLock<Arc<str>>,
}

impl SharedMessage {
    pub fn new(message: ServerMessage) -> SharedMessage {
        SharedMessage(Arc::new(SharedInner {
            message,
            json: OnceLock::new(),
        }))
    }

    pub fn message(&self) -> &ServerMessage {
        &self.0.message
    }

    /// The message as protocol JSON, encoded once for all its sessions.
    pub fn json(&self) -> Arc<str> {
        Arc::clone(self.0.json.get_or_init(|| encode(&self.0.message).into()))
    }
}

impl From<ServerMessage> for SharedMessage {
    fn from(message: ServerMessage) -> Self {
        SharedMessage::new(message)
    }
}

impl From<&ServerMessage> for SharedMessage {
    fn from(message: &ServerMessage) -> Self {
        SharedMessage::new(message.clone())
    }
}

impl PartialEq for SharedMessage {
    fn eq(&self, other: &Self) -> bool {
        self.message() == other.message()
    }
}

/// One item of a session's outbound queue, typed; each transport encodes it.
#[derive(Debug, Clone, PartialEq)]
pub enum OutFrame {
    /// A server message (reply, ack, error, presence, run event, JSON patch).
    Message(SharedMessage),
    /// One Automerge sync message for a flow: the bytes the peer's sync state expects,
    /// whatever framing its transport puts around them.
    Sync { flow_id: Arc<str>, payload: Vec<u8> },
    /// A native change frame encoded once for many streaming peers (only sessions that
    /// subscribed with `stream` get these).
    SharedBinary(Arc<[u8]>),
    /// Bytes a transport made itself (a handshake reply), sent as one binary frame.
    Raw(Vec<u8>),
    /// A flow this session's transport joins implicitly (automerge-repo opens a flow
    /// by syncing it) could not be opened: `code` says why (`forbidden`, `not_found`,
    /// `too_large` for the subscription limit, `internal`).
    Unavailable { flow_id: Arc<str>, code: ErrorCode },
}

/// An [`OutFrame`] in the native protocol's wire form (`/v1/ws`): JSON text, or a
/// binary frame (`flowhub_protocol::frame`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NativeFrame {
    Text(Arc<str>),
    Binary(Vec<u8>),
    SharedBinary(Arc<[u8]>),
}

impl OutFrame {
    /// The native encoding of this frame.
    pub fn into_native(self) -> NativeFrame {
        match self {
            OutFrame::Message(m) => NativeFrame::Text(m.json()),
            OutFrame::Sync { flow_id, payload } => {
                NativeFrame::Binary(encode_flow_sync(&flow_id, &payload))
            }
            OutFrame::SharedBinary(b) => NativeFrame::SharedBinary(b),
            OutFrame::Raw(b) => NativeFrame::Binary(b),
            // Native sessions subscribe explicitly and get an `error` instead; kept
            // total so a transport mix-up is an error frame, not a panic.
            OutFrame::Unavailable { flow_id, code } => NativeFrame::Text(
                encode(
                    &ServerMessage::error(code, "the flow could not be opened")
                        .with_flow(&*flow_id),
                )
                .into(),
            ),
        }
    }
}

/// A close request: code and reason for the WebSocket close frame.
pub type CloseRequest = (u16, String);

/// The sending side, cloned into every actor that talks to this session.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::Sender<OutFrame>,
    closer: Arc<watch::Sender<Option<CloseRequest>>>,
    metrics: Arc<Metrics>,
}

/// The receiving side, owned by the socket writer task.
pub struct OutboundRx {
    pub frames: mpsc::Receiver<OutFrame>,
    pub close: watch::Receiver<Option<CloseRequest>>,
}

/// What happened to a frame offered with `try_send_sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The queue was full; the frame was dropped.
    Full,
    /// The session is gone.
    Closed,
}

impl Outbound {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> (Outbound, OutboundRx) {
        let (tx, frames) = mpsc::channel(capacity.max(1));
        let (closer, close) = watch::channel(None);
        (
            Outbound {
                tx,
                closer: Arc::new(closer),
                metrics,
            },
            OutboundRx { frames, close },
        )
    }

    /// Offers an Automerge sync message for `flow_id`.
    pub fn try_send_sync(&self, flow_id: &Arc<str>, payload: Vec<u8>) -> Delivery {
        self.offer(OutFrame::Sync {
            flow_id: Arc::clone(flow_id),
            payload,
        })
    }

    /// Offers a binary frame encoded once for many peers (a change frame, see
    /// `flowhub_crdt::PeerLink`); dropped like a sync frame when the queue is full.
    pub fn try_send_shared(&self, frame: &Arc<[u8]>) -> Delivery {
        self.offer(OutFrame::SharedBinary(Arc::clone(frame)))
    }

    /// Offers a message that may be dropped when the queue is full (presence, run
    /// events): the caller keeps what it needs to make up for the loss. A broadcast
    /// passes one [`SharedMessage`] to every session.
    pub fn try_send_message(&self, msg: impl Into<SharedMessage>) -> Delivery {
        self.offer(OutFrame::Message(msg.into()))
    }

    /// Queues a control message; closes the session if it cannot be queued.
    /// Returns whether it was queued.
    pub fn send_control(&self, msg: impl Into<SharedMessage>) -> bool {
        self.send_reliable(OutFrame::Message(msg.into()))
    }

    /// Queues a frame that cannot be made again (a control message, a transport's own
    /// reply); closes the session if it cannot be queued.
    pub fn send_reliable(&self, frame: OutFrame) -> bool {
        match self.offer(frame) {
            Delivery::Queued => true,
            Delivery::Closed => false,
            Delivery::Full => {
                Metrics::inc(&self.metrics.sessions_closed_slow);
                self.close(
                    close::TOO_SLOW,
                    "outbound queue overflowed: the client is not reading",
                );
                false
            }
        }
    }

    fn offer(&self, frame: OutFrame) -> Delivery {
        if self.is_closed() {
            return Delivery::Closed;
        }
        match self.tx.try_send(frame) {
            Ok(()) => {
                Metrics::inc(&self.metrics.frames_out);
                Delivery::Queued
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                Metrics::inc(&self.metrics.queue_drops);
                Delivery::Full
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
        }
    }

    /// Asks the writer to send a close frame and stop. The first request wins.
    pub fn close(&self, code: u16, reason: &str) {
        self.closer.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some((code, reason.to_owned()));
            true
        });
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.closer.borrow().is_some()
    }

    /// Free slots, used to decide when a lagging peer can be resynced.
    pub fn capacity(&self) -> usize {
        self.tx.capacity()
    }

    pub fn max_capacity(&self) -> usize {
        self.tx.max_capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_overflow_drops_and_control_overflow_closes() {
        let metrics = Arc::new(Metrics::default());
        let (out, mut rx) = Outbound::new(2, metrics.clone());
        let f: Arc<str> = "f".into();
        assert_eq!(out.try_send_sync(&f, b"a".to_vec()), Delivery::Queued);
        assert_eq!(out.try_send_sync(&f, b"b".to_vec()), Delivery::Queued);
        assert_eq!(out.try_send_sync(&f, b"c".to_vec()), Delivery::Full);
        assert!(!out.is_closed());
        assert!(!out.send_control(ServerMessage::Pong { id: None }));
        assert!(out.is_closed());
        assert_eq!(
            rx.close.borrow().as_ref().map(|c| c.0),
            Some(close::TOO_SLOW)
        );
        assert_eq!(
            rx.frames.try_recv().unwrap().into_native(),
            NativeFrame::Binary(encode_flow_sync("f", b"a"))
        );
        assert_eq!(metrics.queue_drops.get(), 2);
    }

    #[test]
    fn a_shared_message_is_encoded_once() {
        let msg = SharedMessage::new(ServerMessage::Pong { id: None });
        let copy = msg.clone();
        let (a, b) = (msg.json(), copy.json());
        assert!(Arc::ptr_eq(&a, &b), "one encoding for every session");
        assert_eq!(
            &*a,
            flowhub_protocol::encode(&ServerMessage::Pong { id: None })
        );
    }
}

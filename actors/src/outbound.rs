//! A session's bounded outbound queue.
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
//! Closing goes through a `watch` beside the queue, so it works even when the queue is
//! full.

use std::sync::Arc;

use flowhub_protocol::{close, encode, frame::encode_flow_sync, ServerMessage};
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;

/// One frame for the socket writer.
///
/// Text is shared: a run event or presence diff broadcast to ten thousand sessions is
/// encoded once, and each session's copy is a reference count, not an allocation and
/// a memcpy in the broadcasting actor (the socket writer hands the same bytes to the
/// WebSocket, see `Bytes::from_owner`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    Text(Arc<str>),
    Binary(Vec<u8>),
    /// A binary frame encoded once for many sessions (a flow's change frame).
    SharedBinary(Arc<[u8]>),
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

    /// Offers an Automerge sync frame for `flow_id`.
    pub fn try_send_sync(&self, flow_id: &str, payload: &[u8]) -> Delivery {
        self.offer(OutFrame::Binary(encode_flow_sync(flow_id, payload)))
    }

    /// Offers a binary frame encoded once for many peers (a change frame, see
    /// `flowhub_crdt::PeerLink`); dropped like a sync frame when the queue is full.
    pub fn try_send_shared(&self, frame: &Arc<[u8]>) -> Delivery {
        self.offer(OutFrame::SharedBinary(Arc::clone(frame)))
    }

    /// Offers a message that may be dropped when the queue is full (presence, run
    /// events): the caller keeps what it needs to make up for the loss.
    pub fn try_send_text(&self, msg: &ServerMessage) -> Delivery {
        self.offer(OutFrame::Text(encode(msg).into()))
    }

    /// [`Outbound::try_send_text`] for a message already encoded (`encode(msg)`): a
    /// broadcast to many sessions encodes once and shares the text.
    pub fn try_send_encoded(&self, text: &Arc<str>) -> Delivery {
        self.offer(OutFrame::Text(Arc::clone(text)))
    }

    /// Queues a control message; closes the session if it cannot be queued.
    /// Returns whether it was queued.
    pub fn send_control(&self, msg: &ServerMessage) -> bool {
        match self.offer(OutFrame::Text(encode(msg).into())) {
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
        assert_eq!(out.try_send_sync("f", b"a"), Delivery::Queued);
        assert_eq!(out.try_send_sync("f", b"b"), Delivery::Queued);
        assert_eq!(out.try_send_sync("f", b"c"), Delivery::Full);
        assert!(!out.is_closed());
        assert!(!out.send_control(&ServerMessage::Pong { id: None }));
        assert!(out.is_closed());
        assert_eq!(
            rx.close.borrow().as_ref().map(|c| c.0),
            Some(close::TOO_SLOW)
        );
        assert_eq!(
            rx.frames.try_recv().unwrap(),
            OutFrame::Binary(encode_flow_sync("f", b"a"))
        );
        assert_eq!(metrics.queue_drops.get(), 2);
    }
}

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
//! A close request sits beside the queue, so it works even when the queue is full.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use flowhub_protocol::{close, encode, frame::encode_flow_sync, ErrorCode, ServerMessage};
use tokio::sync::Notify;

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
///
/// The queue is a `VecDeque` behind a mutex rather than a tokio channel: a tokio
/// channel allocates its first 32-slot block (~1.5 KB for `OutFrame`) and its state
/// up front, for every session, idle or not. This one holds nothing while empty and
/// gives back what a burst grew it to once it drains, so an idle session's queue is a
/// couple of hundred bytes. Every operation is a short critical section: no await
/// happens under the lock.
pub struct Outbound {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
}

/// The receiving side, owned by the socket writer task.
pub struct OutboundRx {
    pub frames: FrameReceiver,
    pub close: CloseWatch,
}

/// The queue's frames, for the one task that writes them out.
pub struct FrameReceiver {
    shared: Arc<Shared>,
}

/// The session's close request, watched beside the frames (it works even when the
/// queue is full). Clones watch the same request.
#[derive(Clone)]
pub struct CloseWatch {
    shared: Arc<Shared>,
    /// The close version this watcher has seen (0: none yet).
    seen: u64,
}

/// What a session's writer does next ([`OutboundRx::next`]).
#[derive(Debug)]
pub enum Outgoing {
    Frame(OutFrame),
    /// Close the connection with this code and reason (after the frames queued
    /// before the request, which come first).
    Close(CloseRequest),
    /// Every sender is gone and the queue is drained.
    End,
}

/// `try_recv` found nothing: the queue is empty, or every sender is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    Empty,
    Disconnected,
}

struct Shared {
    queue: Mutex<Queue>,
    capacity: usize,
    /// Live `Outbound` clones; at zero the receiver sees the end of the queue.
    senders: AtomicUsize,
    /// Wakes the receiver: a frame was queued, a close requested, or the last sender
    /// left.
    wake_writer: Notify,
    /// Wakes every close watcher.
    close_ready: Notify,
}

struct Queue {
    frames: VecDeque<OutFrame>,
    close: Option<CloseRequest>,
    /// Bumped once, by the first close request.
    close_version: u64,
    /// The receiver was dropped: nothing will be read again.
    receiver_gone: bool,
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
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                close: None,
                close_version: 0,
                receiver_gone: false,
            }),
            capacity: capacity.max(1),
            senders: AtomicUsize::new(1),
            wake_writer: Notify::new(),
            close_ready: Notify::new(),
        });
        (
            Outbound {
                shared: Arc::clone(&shared),
                metrics,
            },
            OutboundRx {
                frames: FrameReceiver {
                    shared: Arc::clone(&shared),
                },
                close: CloseWatch { shared, seen: 0 },
            },
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
        let delivery = {
            let mut q = self.shared.lock();
            if q.receiver_gone || q.close.is_some() {
                Delivery::Closed
            } else if q.frames.len() >= self.shared.capacity {
                Delivery::Full
            } else {
                q.frames.push_back(frame);
                Delivery::Queued
            }
        };
        match delivery {
            Delivery::Queued => {
                self.shared.wake_writer.notify_one();
                Metrics::inc(&self.metrics.frames_out);
            }
            Delivery::Full => Metrics::inc(&self.metrics.queue_drops),
            Delivery::Closed => {}
        }
        delivery
    }

    /// Asks the writer to send a close frame and stop. The first request wins.
    pub fn close(&self, code: u16, reason: &str) {
        {
            let mut q = self.shared.lock();
            if q.close.is_some() {
                return;
            }
            q.close = Some((code, reason.to_owned()));
            q.close_version += 1;
        }
        self.shared.wake_writer.notify_one();
        self.shared.close_ready.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        let q = self.shared.lock();
        q.receiver_gone || q.close.is_some()
    }

    /// Free slots, used to decide when a lagging peer can be resynced.
    pub fn capacity(&self) -> usize {
        let used = self.shared.lock().frames.len();
        self.shared.capacity.saturating_sub(used)
    }

    pub fn max_capacity(&self) -> usize {
        self.shared.capacity
    }
}

impl Clone for Outbound {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Outbound {
            shared: Arc::clone(&self.shared),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The receiver drains what is queued, then sees the end.
            self.shared.wake_writer.notify_one();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic under this lock cannot leave the queue half-updated (each critical
        // section is one push, pop or assignment), so a poisoned lock is still sound.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FrameReceiver {
    /// The next frame; `None` once every sender is gone and the queue is drained.
    pub async fn recv(&mut self) -> Option<OutFrame> {
        loop {
            match self.try_recv() {
                Ok(frame) => return Some(frame),
                Err(TryRecvError::Disconnected) => return None,
                // A frame queued after this check leaves a permit: no lost wake-up.
                Err(TryRecvError::Empty) => self.shared.wake_writer.notified().await,
            }
        }
    }

    pub fn try_recv(&mut self) -> Result<OutFrame, TryRecvError> {
        let mut q = self.shared.lock();
        match q.pop() {
            Some(frame) => Ok(frame),
            None if self.shared.senders.load(Ordering::Acquire) == 0 => {
                Err(TryRecvError::Disconnected)
            }
            None => Err(TryRecvError::Empty),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.shared.lock().frames.is_empty()
    }
}

impl Queue {
    fn pop(&mut self) -> Option<OutFrame> {
        let frame = self.frames.pop_front()?;
        if self.frames.is_empty() {
            // An empty queue holds no memory (most sessions are idle most of the
            // time); the next burst allocates afresh.
            self.frames = VecDeque::new();
        }
        Some(frame)
    }
}

impl OutboundRx {
    /// The writer's one wait: the next frame, else a close request (reported once),
    /// else the end. One wait rather than a select over the frames and the close:
    /// the writer task lives as long as the session, and each pending wait is ~100
    /// bytes of it.
    pub async fn next(&mut self) -> Outgoing {
        loop {
            {
                let mut q = self.frames.shared.lock();
                if let Some(frame) = q.pop() {
                    return Outgoing::Frame(frame);
                }
                if q.close_version != self.close.seen {
                    self.close.seen = q.close_version;
                    if let Some(request) = q.close.clone() {
                        return Outgoing::Close(request);
                    }
                }
                if self.frames.shared.senders.load(Ordering::Acquire) == 0 {
                    return Outgoing::End;
                }
            }
            // A frame or close after the checks above leaves a permit.
            self.frames.shared.wake_writer.notified().await;
        }
    }
}

impl Drop for FrameReceiver {
    fn drop(&mut self) {
        let mut q = self.shared.lock();
        q.receiver_gone = true;
        q.frames = VecDeque::new();
    }
}

impl CloseWatch {
    /// The close request, if one was made.
    pub fn borrow(&self) -> Option<CloseRequest> {
        self.shared.lock().close.clone()
    }

    /// Waits until a close is requested (returns at once if one was made since this
    /// watcher last looked). Never returns otherwise.
    pub async fn changed(&mut self) {
        loop {
            let notified = self.shared.close_ready.notified();
            tokio::pin!(notified);
            // Registered before the check, so a request made in between wakes it.
            notified.as_mut().enable();
            let version = self.shared.lock().close_version;
            if version != self.seen {
                self.seen = version;
                return;
            }
            notified.await;
        }
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

    #[tokio::test]
    async fn the_writer_gets_queued_frames_then_the_close_then_the_end() {
        let metrics = Arc::new(Metrics::default());
        let (out, mut rx) = Outbound::new(8, metrics);
        let f: Arc<str> = "f".into();
        let other = out.clone();
        // A wait that starts on an empty queue is woken by a frame from another sender.
        let waiting = tokio::spawn(async move {
            let next = rx.next().await;
            (rx, next)
        });
        tokio::task::yield_now().await;
        assert_eq!(other.try_send_sync(&f, b"a".to_vec()), Delivery::Queued);
        let (mut rx, first) = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the frame woke the writer")
            .unwrap();
        assert!(matches!(first, Outgoing::Frame(OutFrame::Sync { .. })));
        assert_eq!(out.try_send_sync(&f, b"b".to_vec()), Delivery::Queued);
        out.close(close::NORMAL, "bye");
        // Refused after the close; what was queued before still comes first.
        assert_eq!(out.try_send_sync(&f, b"c".to_vec()), Delivery::Closed);
        assert!(
            matches!(rx.next().await, Outgoing::Frame(OutFrame::Sync { payload, .. }) if payload == b"b")
        );
        assert!(matches!(
            rx.next().await,
            Outgoing::Close((close::NORMAL, _))
        ));
        // The close is reported once; then, with every sender gone, the end.
        drop((out, other));
        assert!(matches!(rx.next().await, Outgoing::End));
        assert_eq!(rx.frames.try_recv(), Err(TryRecvError::Disconnected));
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

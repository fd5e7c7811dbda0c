//! [`Shared`]: the state of one connection that the reader task, the writer task and
//! every handle share, and the two tasks themselves.
//!
//! - The **writer task** owns the socket's sink and is fed by an unbounded mpsc of
//!   ready-made frames. Unbounded so that frames can be queued synchronously while a
//!   flow's replica lock is held, which keeps one flow's sync frames in the order they
//!   were generated.
//! - The **reader task** owns the stream and dispatches every frame: replies to the
//!   pending request with the same id, `ack`s and refusals to their flow, sync frames
//!   to their flow's replica, unclaimed errors to [`crate::Client::errors`]. Frames it
//!   cannot decode are logged and ignored. When the stream ends it records the close
//!   code and reason and wakes every waiter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowhub_crdt::Outgoing;
use flowhub_protocol::{
    frame::{encode_flow_sync, encode_frame},
    ClientMessage, ErrorCode, FrameKind, RequestId, ServerMessage, SyncFrame,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::flow_state::{lock, FlowShared, FrameSink};
use crate::ClientError;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How many unclaimed `error` frames [`crate::Client::errors`] buffers per receiver.
const ERRORS_CAPACITY: usize = 256;
/// How many unsolicited messages [`crate::Client::messages`] buffers per receiver
/// (run events arrive in bursts: a replay is up to a whole outbound queue).
const MESSAGES_CAPACITY: usize = 4096;

pub(crate) struct Shared {
    /// The first session's id: a stable label for logs across reconnects.
    pub(crate) session_id: String,
    /// The current connection's writer; replaced by [`Shared::attach`] on reconnect.
    out: Mutex<mpsc::UnboundedSender<Message>>,
    /// Counts connections: a reader of an older one must not mark the current closed.
    generation: AtomicU64,
    /// The application closed the client: do not reconnect.
    closed_by_client: AtomicBool,
    /// A supervisor reconnects after an unexpected close (`Client::connect_with_failover`),
    /// so waits outlive a closed connection.
    reconnects: AtomicBool,
    pending: Mutex<HashMap<u64, oneshot::Sender<ServerMessage>>>,
    next_id: AtomicU64,
    flows: Mutex<HashMap<String, Arc<FlowShared>>>,
    errors: broadcast::Sender<ServerMessage>,
    /// Unsolicited messages (`run_event`, `flow_run`, …); created by the first
    /// [`Shared::messages`] call, so clients that never ask pay nothing.
    messages: Mutex<Option<broadcast::Sender<ServerMessage>>>,
    /// `Some((code, reason))` once the connection is closed.
    closed: watch::Sender<Option<(u16, String)>>,
}

impl Shared {
    /// `first_id` is the first request id handed out (ids below it were used by the
    /// handshake).
    pub(crate) fn new(
        session_id: String,
        out: mpsc::UnboundedSender<Message>,
        first_id: u64,
    ) -> Self {
        Shared {
            session_id,
            out: Mutex::new(out),
            generation: AtomicU64::new(0),
            closed_by_client: AtomicBool::new(false),
            reconnects: AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(first_id),
            flows: Mutex::new(HashMap::new()),
            errors: broadcast::Sender::new(ERRORS_CAPACITY),
            messages: Mutex::new(None),
            closed: watch::Sender::new(None),
        }
    }

    // ---- sending ----

    pub(crate) fn close_info(&self) -> Option<(u16, String)> {
        self.closed.borrow().clone()
    }

    pub(crate) fn closed_rx(&self) -> watch::Receiver<Option<(u16, String)>> {
        self.closed.subscribe()
    }

    pub(crate) fn closed_error(&self) -> ClientError {
        ClientError::closed(self.close_info().as_ref())
    }

    /// Queues a frame for the writer task.
    pub(crate) fn send(&self, msg: Message) -> Result<(), ClientError> {
        if self.closed.borrow().is_some() {
            return Err(self.closed_error());
        }
        lock(&self.out).send(msg).map_err(|_| self.closed_error())
    }

    /// The current connection's number (see [`Shared::attach`]).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Makes a new connection (its writer's sender) the current one, and returns its
    /// number for its reader. Requests still waiting on the old one fail with `Closed`.
    pub(crate) fn attach(&self, out: mpsc::UnboundedSender<Message>) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        *lock(&self.out) = out;
        lock(&self.pending).clear();
        self.closed_by_client.store(false, Ordering::Release);
        // Waiters see the change, find the connection open again, and keep waiting.
        self.closed.send_replace(None);
        generation
    }

    pub(crate) fn mark_closed_by_client(&self) {
        self.closed_by_client.store(true, Ordering::Release);
    }

    pub(crate) fn closed_by_client(&self) -> bool {
        self.closed_by_client.load(Ordering::Acquire)
    }

    pub(crate) fn set_reconnects(&self, on: bool) {
        self.reconnects.store(on, Ordering::Release);
        // Waiters that kept waiting through a close look again.
        self.closed.send_modify(|_| {});
    }

    /// Whether waits should outlive a closed connection (a reconnect will follow).
    pub(crate) fn reconnects(&self) -> bool {
        self.reconnects.load(Ordering::Acquire) && !self.closed_by_client()
    }

    /// Queues one binary frame per message, in order: a sync frame for a sync
    /// message, a change frame for streamed changes.
    pub(crate) fn send_frames(
        &self,
        flow_id: &str,
        messages: Vec<Outgoing>,
    ) -> Result<(), ClientError> {
        for message in messages {
            let frame = match message {
                Outgoing::Sync(payload) => encode_flow_sync(flow_id, &payload),
                Outgoing::Changes(payload) => {
                    encode_frame(FrameKind::FlowChanges, flow_id, &payload)
                }
            };
            self.send(Message::binary(frame))?;
        }
        Ok(())
    }

    /// Queues a close frame (the writer stops after sending it).
    pub(crate) fn send_close(&self, code: u16, reason: &str) {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: code.into(),
            reason: reason.into(),
        };
        let _ = lock(&self.out).send(Message::Close(Some(frame)));
    }

    /// Sends `msg` with a fresh numeric id and waits for the frame echoing that id. An
    /// `error` reply becomes [`ClientError::Server`].
    pub(crate) async fn request_with_timeout(
        &self,
        msg: ClientMessage,
        timeout: Duration,
    ) -> Result<ServerMessage, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let msg = with_request_id(msg, RequestId::Num(id));
        let kind = msg.kind();
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        // The reader marks the connection closed before it drops the pending senders,
        // so either it will drop ours or we see the mark here.
        let sent = if self.closed.borrow().is_some() {
            Err(self.closed_error())
        } else {
            self.send(Message::text(flowhub_protocol::encode(&msg)))
        };
        if let Err(e) = sent {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        let reply = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(self.closed_error()),
            Err(_) => {
                lock(&self.pending).remove(&id);
                tracing::debug!(session_id = %self.session_id, kind, id, "request timed out");
                return Err(ClientError::Timeout("reply"));
            }
        };
        match reply {
            ServerMessage::Error { code, message, .. } => {
                Err(ClientError::Server { code, message })
            }
            other => Ok(other),
        }
    }

    pub(crate) async fn request(&self, msg: ClientMessage) -> Result<ServerMessage, ClientError> {
        self.request_with_timeout(msg, crate::DEFAULT_TIMEOUT).await
    }

    // ---- flows ----

    /// The registered flow for `flow_id`, registering a new one if there is none.
    /// Returns `(flow, fresh)`.
    pub(crate) fn flow_entry(&self, flow_id: &str) -> (Arc<FlowShared>, bool) {
        let mut flows = lock(&self.flows);
        if let Some(flow) = flows.get(flow_id) {
            return (flow.clone(), false);
        }
        let flow = Arc::new(FlowShared::new(flow_id));
        flows.insert(flow_id.to_owned(), flow.clone());
        (flow, true)
    }

    /// Every registered flow.
    pub(crate) fn flows(&self) -> Vec<Arc<FlowShared>> {
        lock(&self.flows).values().cloned().collect()
    }

    pub(crate) fn flow(&self, flow_id: &str) -> Option<Arc<FlowShared>> {
        lock(&self.flows).get(flow_id).cloned()
    }

    /// Unregisters this flow (if it is still the registered one) and wakes its waiters.
    pub(crate) fn forget_flow(&self, flow: &Arc<FlowShared>) {
        {
            let mut flows = lock(&self.flows);
            if flows
                .get(&flow.flow_id)
                .is_some_and(|f| Arc::ptr_eq(f, flow))
            {
                flows.remove(&flow.flow_id);
            }
        }
        flow.mark_gone();
    }

    pub(crate) fn errors(&self) -> broadcast::Receiver<ServerMessage> {
        self.errors.subscribe()
    }

    pub(crate) fn messages(&self) -> broadcast::Receiver<ServerMessage> {
        lock(&self.messages)
            .get_or_insert_with(|| broadcast::Sender::new(MESSAGES_CAPACITY))
            .subscribe()
    }

    // ---- receiving ----

    /// Subscribes to `flow` again on the current connection, reporting its pending
    /// edits: the hub acks those it already stored (their acks may have been lost with
    /// an earlier connection) and the fresh sync exchange resends the others.
    pub(crate) async fn resubscribe(&self, flow: &Arc<FlowShared>) -> Result<(), ClientError> {
        let pending = flow.restart_sync();
        let reported = pending.len();
        let request = ClientMessage::SubscribeFlow {
            id: None,
            flow_id: flow.flow_id.clone(),
            pending,
            stream: true,
            format: Default::default(),
            since_heads: Vec::new(),
        };
        match self.request(request).await {
            Ok(ServerMessage::FlowState {
                role,
                heads,
                stream,
                ..
            }) => {
                tracing::debug!(session_id = %self.session_id, flow_id = %flow.flow_id, ?role, reported, stream, "resubscribed");
                flow.set_link(stream, &heads);
                flow.sync_now(self)
            }
            Ok(other) => Err(ClientError::Protocol(format!(
                "expected flow_state in reply to subscribe_flow, got {other:?}"
            ))),
            Err(ClientError::Server { code, message }) if !code.is_retryable() => {
                // No access any more (or the flow id is refused): nothing pending can
                // be stored through this client; fail it and drop the flow.
                tracing::warn!(session_id = %self.session_id, flow_id = %flow.flow_id, %code, message, "resubscribe refused; the flow is dropped");
                flow.on_refused(self, code, &message);
                self.forget_flow(flow);
                Err(ClientError::Server { code, message })
            }
            Err(e) => Err(e),
        }
    }

    /// After an `internal` error naming a flow, the hub closed that flow for this
    /// session (or reset it): subscribe again by ourselves, with backoff, once at a
    /// time per flow. Without this, every later sync frame is answered `internal`.
    fn resubscribe_soon(self: &Arc<Self>, flow: Arc<FlowShared>) {
        if !flow.begin_resubscribe() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            flow.end_resubscribe();
            return;
        };
        let shared = self.clone();
        let generation = self.generation();
        runtime.spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                tokio::time::sleep(delay).await;
                // A reconnect resubscribes every flow itself; a forgotten flow is done.
                if flow.is_gone() || shared.generation() != generation || shared.close_info().is_some() {
                    break;
                }
                match shared.resubscribe(&flow).await {
                    Ok(()) => break,
                    Err(ClientError::Server { code, .. }) if !code.is_retryable() => break,
                    Err(e) => {
                        tracing::debug!(session_id = %shared.session_id, flow_id = %flow.flow_id, error = %e, "resubscribe failed; retrying");
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            flow.end_resubscribe();
        });
    }

    /// Dispatches one text frame from the hub.
    pub(crate) fn on_text(self: &Arc<Self>, text: &str) {
        let msg: ServerMessage = match serde_json::from_str(text) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(session_id = %self.session_id, error = %e, "undecodable text frame from the hub ignored");
                return;
            }
        };
        if let Some(id) = reply_id(&msg) {
            let waiter = match id {
                RequestId::Num(n) => lock(&self.pending).remove(n),
                RequestId::Str(_) => None,
            };
            match waiter {
                Some(tx) => {
                    // The requester may have timed out meanwhile; nothing to do then.
                    let _ = tx.send(msg);
                }
                None if matches!(msg, ServerMessage::Error { .. }) => {
                    // An error for a request this client did not make through
                    // `request` (a raw `send_text`): surface it.
                    let _ = self.errors.send(msg);
                }
                None => {
                    tracing::debug!(session_id = %self.session_id, ?id, "reply to an unknown request ignored");
                }
            }
            return;
        }
        match msg {
            ServerMessage::Ack {
                flow_id: Some(ref flow_id),
                ref changes,
                ..
            } => match self.flow(flow_id) {
                Some(flow) => flow.on_ack(changes),
                None => {
                    tracing::debug!(session_id = %self.session_id, %flow_id, "ack for an unsubscribed flow ignored")
                }
            },
            ServerMessage::Error {
                ref flow_id,
                code,
                ref message,
                ..
            } => {
                tracing::debug!(session_id = %self.session_id, ?flow_id, %code, message, "error from the hub");
                if let Some(flow) = flow_id.as_deref().and_then(|f| self.flow(f)) {
                    flow.on_refused(self.as_ref(), code, message);
                    if code == ErrorCode::Internal {
                        self.resubscribe_soon(flow);
                    }
                }
                let _ = self.errors.send(msg);
            }
            ServerMessage::Ack { .. } => {
                tracing::debug!(session_id = %self.session_id, "ack without a flow ignored");
            }
            other => match lock(&self.messages).as_ref() {
                Some(messages) => {
                    let _ = messages.send(other);
                }
                None => {
                    tracing::debug!(session_id = %self.session_id, ?other, "unexpected message from the hub ignored");
                }
            },
        }
    }

    /// Dispatches one binary frame from the hub.
    pub(crate) fn on_binary(&self, bytes: &[u8]) {
        let frame = match SyncFrame::decode(bytes) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(session_id = %self.session_id, error = %e, "undecodable binary frame from the hub ignored");
                return;
            }
        };
        match self.flow(&frame.flow_id) {
            Some(flow) => match frame.kind {
                FrameKind::FlowSync => flow.on_sync(self, &frame.payload),
                FrameKind::FlowChanges => flow.on_changes(self, &frame.payload),
            },
            None => {
                tracing::debug!(session_id = %self.session_id, flow_id = %frame.flow_id, "sync frame for an unsubscribed flow ignored");
            }
        }
    }

    /// Connection number `generation` is gone: if it is still the current one, record
    /// why and wake every waiter.
    pub(crate) fn shut_down_connection(&self, generation: u64, code: u16, reason: String) {
        if self.generation() != generation {
            return;
        }
        self.shut_down(code, reason);
    }

    /// The connection is gone: record why and wake every waiter.
    pub(crate) fn shut_down(&self, code: u16, reason: String) {
        let first = self.closed.send_if_modified(|closed| {
            if closed.is_none() {
                *closed = Some((code, reason.clone()));
                true
            } else {
                false
            }
        });
        if first {
            tracing::info!(session_id = %self.session_id, code, reason, "connection closed");
        }
        // Dropping the senders fails every pending request with `Closed`.
        lock(&self.pending).clear();
        // Wakes the writer if it is idle; it stops on a close frame or a send error.
        let _ = lock(&self.out).send(Message::Close(None));
    }
}

/// The request id a server message echoes, if any.
fn reply_id(msg: &ServerMessage) -> Option<&RequestId> {
    msg.id()
}

/// The same message carrying `new_id`.
pub(crate) fn with_request_id(mut msg: ClientMessage, new_id: RequestId) -> ClientMessage {
    msg.set_id(new_id);
    msg
}

/// Reads frames until the stream ends, then shuts the connection down.
pub(crate) async fn read_loop(shared: Arc<Shared>, mut stream: SplitStream<Ws>, generation: u64) {
    let mut close: Option<(u16, String)> = None;
    let mut lost: Option<String> = None;
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(Message::Text(text)) => shared.on_text(text.as_str()),
            Ok(Message::Binary(bytes)) => shared.on_binary(&bytes),
            Ok(Message::Close(frame)) => {
                // 1005: the close frame carried no status code.
                close = Some(match frame {
                    Some(f) => (u16::from(f.code), f.reason.as_str().to_owned()),
                    None => (1005, String::new()),
                });
                // Keep reading: tungstenite sends the close reply, then ends the stream.
            }
            Ok(_) => {} // ping/pong: tungstenite answers pings itself
            Err(e) => {
                if close.is_none() {
                    lost = Some(e.to_string());
                }
                break;
            }
        }
    }
    let (code, reason) = close.unwrap_or_else(|| {
        let reason = match lost {
            Some(e) => format!("connection lost: {e}"),
            None => "connection lost".to_owned(),
        };
        (1006, reason)
    });
    shared.shut_down_connection(generation, code, reason);
}

/// Writes queued frames until a close frame was sent, a send fails, or every sender
/// is gone.
pub(crate) async fn write_loop(
    mut sink: SplitSink<Ws, Message>,
    mut rx: mpsc::UnboundedReceiver<Message>,
    session_id: String,
) {
    'outer: while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Batch whatever is queued into one flush.
        while let Some(msg) = next.take() {
            let is_close = matches!(msg, Message::Close(_));
            if let Err(e) = sink.feed(msg).await {
                tracing::debug!(%session_id, error = %e, "websocket send failed; writer stops");
                break 'outer;
            }
            if is_close {
                let _ = sink.flush().await;
                break 'outer;
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = sink.flush().await {
            tracing::debug!(%session_id, error = %e, "websocket flush failed; writer stops");
            break;
        }
    }
}

impl FrameSink for Shared {
    fn send_sync(&self, flow_id: &str, messages: Vec<Outgoing>) -> Result<(), ClientError> {
        self.send_frames(flow_id, messages)
    }

    fn session_label(&self) -> &str {
        &self.session_id
    }
}

#[cfg(test)]
mod tests {
    use flowhub_crdt::{FlowDoc, NewNode, Position, SyncState};
    use flowhub_protocol::{ErrorCode, Role};

    use super::*;

    fn shared() -> (Arc<Shared>, mpsc::UnboundedReceiver<Message>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Arc::new(Shared::new("s1".into(), tx, 1)), rx)
    }

    fn sync_payloads(rx: &mut mpsc::UnboundedReceiver<Message>, flow_id: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            if let Message::Binary(bytes) = msg {
                let frame = SyncFrame::decode(&bytes).unwrap();
                assert_eq!(frame.flow_id, flow_id);
                out.push(frame.payload);
            }
        }
        out
    }

    #[test]
    fn request_ids_are_rewritten() {
        let msg = with_request_id(ClientMessage::Ping { id: None }, RequestId::Num(9));
        assert_eq!(msg.id(), Some(&RequestId::Num(9)));
        let msg = with_request_id(
            ClientMessage::SubscribeFlow {
                id: Some(RequestId::Str("x".into())),
                flow_id: "f".into(),
                pending: vec![],
                stream: false,
                format: Default::default(),
                since_heads: Vec::new(),
            },
            RequestId::Num(3),
        );
        assert_eq!(msg.id(), Some(&RequestId::Num(3)));
    }

    #[tokio::test]
    async fn replies_reach_their_request_and_errors_become_server_errors() {
        let (shared, mut rx) = shared();
        let s = shared.clone();
        let task = tokio::spawn(async move { s.request(ClientMessage::Ping { id: None }).await });
        let sent = loop {
            match rx.recv().await.unwrap() {
                Message::Text(t) => break t.as_str().to_owned(),
                _ => continue,
            }
        };
        assert_eq!(sent, r#"{"type":"ping","id":1}"#);
        shared.on_text(r#"{"type":"pong","id":2}"#); // someone else's: ignored
        shared.on_text(r#"{"type":"pong","id":1}"#);
        assert_eq!(
            task.await.unwrap().unwrap(),
            ServerMessage::Pong {
                id: Some(RequestId::Num(1))
            }
        );

        let s = shared.clone();
        let task = tokio::spawn(async move {
            s.request(ClientMessage::SubscribeFlow {
                id: None,
                flow_id: "nope".into(),
                pending: vec![],
                stream: false,
                format: Default::default(),
                since_heads: Vec::new(),
            })
            .await
        });
        while lock(&shared.pending).is_empty() {
            tokio::task::yield_now().await;
        }
        shared.on_text(r#"{"type":"error","id":2,"code":"not_found","message":"no flow"}"#);
        match task.await.unwrap() {
            Err(ClientError::Server { code, message }) => {
                assert_eq!(code, ErrorCode::NotFound);
                assert_eq!(message, "no flow");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn unsolicited_messages_are_broadcast_but_replies_errors_and_acks_are_not() {
        let (shared, _rx) = shared();
        // Before anyone asks, nothing is kept.
        shared.on_text(r#"{"type":"resume_from","run_id":"r","seq":1}"#);
        let mut messages = shared.messages();
        shared.on_text(r#"{"type":"resume_from","run_id":"r","seq":2}"#);
        shared.on_text(r#"{"type":"pong","id":5}"#);
        shared.on_text(r#"{"type":"ack","id":6}"#);
        shared.on_text(r#"{"type":"ack"}"#);
        shared.on_text(r#"{"type":"error","code":"bad_request","message":"x"}"#);
        shared.on_text(r#"{"type":"resume_from","run_id":"r","seq":3}"#);
        for seq in [2, 3] {
            assert_eq!(
                messages.try_recv().unwrap(),
                ServerMessage::ResumeFrom {
                    run_id: "r".into(),
                    seq
                }
            );
        }
        assert!(messages.try_recv().is_err());
    }

    #[tokio::test]
    async fn unclaimed_errors_are_broadcast_and_garbage_is_ignored() {
        let (shared, _rx) = shared();
        let mut errors = shared.errors();
        shared.on_text("not json");
        shared.on_text(r#"{"type":"mystery"}"#);
        shared.on_binary(b"\x07junk");
        shared.on_binary(&[]);
        shared.on_binary(&encode_flow_sync("unknown-flow", b"xx"));
        shared.on_text(r#"{"type":"error","code":"bad_request","message":"malformed JSON"}"#);
        shared.on_text(r#"{"type":"error","id":77,"code":"bad_request","message":"unknown type"}"#);
        let first = errors.recv().await.unwrap();
        assert!(matches!(first, ServerMessage::Error { id: None, .. }));
        let second = errors.recv().await.unwrap();
        assert!(matches!(
            second,
            ServerMessage::Error {
                id: Some(RequestId::Num(77)),
                ..
            }
        ));
        assert!(errors.try_recv().is_err());
    }

    #[tokio::test]
    async fn shut_down_fails_requests_with_the_close_reason() {
        let (shared, _rx) = shared();
        let s = shared.clone();
        let task = tokio::spawn(async move { s.request(ClientMessage::Ping { id: None }).await });
        while lock(&shared.pending).is_empty() {
            tokio::task::yield_now().await;
        }
        shared.shut_down(4001, "token expired".into());
        shared.shut_down(1006, "later".into());
        match task.await.unwrap() {
            Err(ClientError::Closed { code, reason }) => {
                assert_eq!((code, reason.as_str()), (4001, "token expired"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            shared.request(ClientMessage::Ping { id: None }).await,
            Err(ClientError::Closed { code: 4001, .. })
        ));
        assert!(shared
            .send_frames("f", vec![flowhub_crdt::Outgoing::Sync(vec![1])])
            .is_err());
    }

    /// The reader's view of a flow: sync frames in, replies out, acks and refusals.
    #[tokio::test]
    async fn flow_dispatch_syncs_acks_and_rolls_back() {
        let (shared, mut rx) = shared();
        let (flow, fresh) = shared.flow_entry("f1");
        assert!(fresh);
        assert!(!shared.flow_entry("f1").1);
        flow.set_subscribed(Role::Editor, vec![]);

        // The hub's replica, with one node.
        let mut hub = FlowDoc::new();
        hub.add_node(NewNode::new("trigger", "T", Position::new(0.0, 0.0)).with_id("t"))
            .unwrap();
        let mut hub_sync = SyncState::new();

        // Exchange until quiet.
        let pump = |hub: &mut FlowDoc,
                    hub_sync: &mut SyncState,
                    rx: &mut mpsc::UnboundedReceiver<Message>|
         -> Vec<String> {
            let mut stored = Vec::new();
            let mut to_client: Vec<Vec<u8>> =
                hub.generate_sync_message(hub_sync).into_iter().collect();
            for _ in 0..50 {
                for msg in to_client.drain(..) {
                    shared.on_binary(&encode_flow_sync("f1", &msg));
                }
                let to_hub = sync_payloads(rx, "f1");
                if to_hub.is_empty() {
                    break;
                }
                for msg in to_hub {
                    let applied = hub.receive_sync_message(hub_sync, &msg).unwrap();
                    stored.extend(applied.changes.iter().map(|c| c.hash_hex()));
                    while let Some(m) = hub.generate_sync_message(hub_sync) {
                        to_client.push(m);
                    }
                }
            }
            stored
        };

        let mut version = flow.version_rx();
        pump(&mut hub, &mut hub_sync, &mut rx);
        assert!(version.has_changed().unwrap());
        version.borrow_and_update();
        assert_eq!(flow.snapshot(), hub.snapshot());

        // A local edit is sent, stored by the hub and acked.
        let edited = flow.edit_for_test(shared.as_ref(), |doc| doc.relabel_node("t", "T2"));
        let stored = pump(&mut hub, &mut hub_sync, &mut rx);
        assert_eq!(stored, edited);
        let ack = serde_json::json!({"type": "ack", "flow_id": "f1", "changes": stored});
        shared.on_text(&ack.to_string());
        assert_eq!(
            flow.status_for_test(&edited),
            crate::ticket::TicketStatus::Acked
        );

        // A refusal fails pending edits and rolls the replica back.
        let refused = flow.edit_for_test(shared.as_ref(), |doc| doc.relabel_node("t", "refused"));
        let _ = sync_payloads(&mut rx, "f1"); // the hub "refuses" these
        hub_sync.reset();
        let mut errors = shared.errors();
        shared.on_text(
            r#"{"type":"error","flow_id":"f1","code":"forbidden","message":"viewers cannot edit"}"#,
        );
        assert!(matches!(
            flow.status_for_test(&refused),
            crate::ticket::TicketStatus::Rejected {
                code: ErrorCode::Forbidden,
                ..
            }
        ));
        assert!(errors.try_recv().is_ok());
        assert_eq!(flow.snapshot().nodes["t"].label, "T2");
        assert!(version.has_changed().unwrap());
        // The resync converges with the hub, which never saw the refused change.
        let resync = sync_payloads(&mut rx, "f1");
        assert!(!resync.is_empty());
        let mut to_client = Vec::new();
        for msg in resync {
            hub.receive_sync_message(&mut hub_sync, &msg).unwrap();
            while let Some(m) = hub.generate_sync_message(&mut hub_sync) {
                to_client.push(m);
            }
        }
        for msg in to_client {
            shared.on_binary(&encode_flow_sync("f1", &msg));
        }
        pump(&mut hub, &mut hub_sync, &mut rx);
        assert_eq!(flow.snapshot(), hub.snapshot());
        assert_eq!(hub.snapshot().nodes["t"].label, "T2");
    }
}

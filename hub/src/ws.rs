//! `GET /v1/ws`: authenticate, upgrade, and run the socket of one session.
//!
//! The socket is split: a writer task drains the session's bounded outbound queue
//! (and sends pings and the close frame), while this task reads frames and hands each
//! to the session actor, waiting for it to be handled (backpressure on floods).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use flowhub_actors::identity::Identity;
use flowhub_actors::metrics::Metrics;
use flowhub_actors::session::{
    session_span, OutFrame, Outbound, OutboundRx, SessionActor, SessionArgs, SessionMsg,
};
use flowhub_protocol::close;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use ractor::{Actor, ActorRef};
use tracing::{debug, warn, Instrument};

use crate::error::AppError;
use crate::state::{AppState, Authenticated};

/// Per-connection socket buffers. tungstenite defaults to 128 KiB each way and
/// allocates the read buffer up front, so it is most of an idle session's memory. A
/// sync message for one edit is a few hundred bytes and fits one read; a larger frame
/// grows the buffer to its size (tungstenite reserves the frame's length), so this
/// only costs big frames a few more reads. The write buffer starts empty and grows to
/// what is queued; this is only the size at which writes go out before a flush.
const READ_BUFFER: usize = 1024;
const WRITE_BUFFER: usize = 8 * 1024;
/// Most frames the writer sends before one flush, so a burst (a run event to a
/// watcher, sync to a busy editor) is one write rather than one per frame.
const WRITE_BATCH: usize = 64;

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    // Refused before upgrading: a bad token is a plain 401, never a WebSocket.
    Authenticated(claims): Authenticated,
) -> Result<Response, AppError> {
    // Admitted before upgrading: a full node answers 503, never a dead socket.
    let permit = state.admit_connection()?;
    let tasks = state.connection_tasks.clone();
    Ok(
        size_buffers(ws, state.config.hard_frame_bytes).on_upgrade(move |socket| {
            let session = run(socket, state, Identity::from(&claims));
            // Tracked: draining waits for the session to close.
            tasks.track_future(async move {
                session.await;
                drop(permit);
            })
        }),
    )
}

/// The socket buffers and frame limits every WebSocket endpoint uses (see
/// [`READ_BUFFER`]): left at tungstenite's defaults an idle connection holds ~150 KB.
pub fn size_buffers(ws: WebSocketUpgrade, hard_frame_bytes: usize) -> WebSocketUpgrade {
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(hard_frame_bytes.max(WRITE_BUFFER * 2))
        .max_message_size(hard_frame_bytes)
        .max_frame_size(hard_frame_bytes)
}

/// Sets up one connection; everything that can happen before the first await happens
/// here, in a plain function. An async fn keeps its arguments in its future for the
/// connection's whole life: the socket and the whole `AppState` would be held there
/// twice over (the split halves already own the socket).
fn run(socket: WebSocket, state: AppState, identity: Identity) -> impl Future<Output = ()> {
    let session_id = uuid::Uuid::new_v4().simple().to_string();
    let span = session_span(&session_id, &identity);
    let (out, out_rx) = Outbound::new(state.config.outbound_queue, state.metrics.clone());
    let args = SessionArgs {
        session_id,
        identity,
        out: out.clone(),
        registry: state.registry.clone(),
        limits: state.config.session.clone(),
        metrics: state.metrics.clone(),
        verifier: Arc::new(state.keys.clone()),
        runs: state.runs.clone(),
        span: span.clone(),
    };
    let link = Link {
        write_stall: state.config.write_stall_timeout,
        metrics: state.metrics.clone(),
        ping_interval: state.config.ping_interval,
        idle_timeout: state.config.idle_timeout,
        soft_limit: state.config.session.max_frame_bytes,
        shutdown: state.shutdown.clone(),
    };
    let (sink, stream) = socket.split();
    async move {
        // Boxed, like the calls in `read_loop`: an inline spawn would size this
        // connection-long future for the spawn's states.
        let session = match Box::pin(Actor::spawn(None, SessionActor, args)).await {
            Ok((session, _)) => session,
            Err(e) => {
                warn!(error = %e, "cannot start session");
                return;
            }
        };
        serve(sink, stream, session, out, out_rx, link).await
    }
    .instrument(span)
}

/// The per-connection settings `serve` keeps.
struct Link {
    write_stall: Duration,
    metrics: Arc<flowhub_actors::metrics::Metrics>,
    ping_interval: Duration,
    idle_timeout: Duration,
    soft_limit: usize,
    /// Cancelled when the node drains.
    shutdown: tokio_util::sync::CancellationToken,
}

async fn serve(
    sink: SplitSink<WebSocket, Message>,
    mut stream: SplitStream<WebSocket>,
    session: ActorRef<SessionMsg>,
    out: Outbound,
    out_rx: OutboundRx,
    link: Link,
) {
    let Link {
        write_stall,
        metrics,
        ping_interval,
        idle_timeout,
        soft_limit,
        shutdown,
    } = link;
    let mut writer = tokio::spawn(write_loop(
        sink,
        out_rx,
        ping_interval,
        write_stall,
        out.clone(),
        metrics,
    ));
    let mut writer_done = false;
    let mut drained = false;
    tokio::select! {
        _ = read_loop(&mut stream, &session, &out, soft_limit, idle_timeout) => {}
        _ = shutdown.cancelled() => drained = true,
        _ = &mut writer => writer_done = true,
    }
    // Leaving flows happens in the session's post_stop. Stopping waits for the frame
    // the session is handling: a sync frame being stored gets its ack queued first.
    let _ = Box::pin(session.stop_and_wait(None, Some(Duration::from_secs(5)))).await;
    if drained {
        // Only now: a close requested earlier would make the outbound queue refuse the
        // acks of edits stored meanwhile, and the client would never learn of them.
        out.close(close::SERVICE_RESTART, "node draining; reconnect");
    }
    // Let the writer send what is queued and the close frame, and keep reading
    // meanwhile: closing a socket with unread input makes the kernel reset the
    // connection, and the client would lose our close frame and its reason.
    out.close(close::NORMAL, "");
    let drain = async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    };
    let writer = async {
        // A finished JoinHandle must not be polled again.
        if !writer_done {
            let _ = writer.await;
        }
    };
    let _ = Box::pin(tokio::time::timeout(Duration::from_secs(2), async {
        tokio::join!(drain, writer)
    }))
    .await;
}

async fn read_loop(
    stream: &mut SplitStream<WebSocket>,
    session: &ActorRef<SessionMsg>,
    out: &Outbound,
    soft_limit: usize,
    idle_timeout: Duration,
) {
    loop {
        // Pings go out every `ping_interval`; a live client answers with a pong, so
        // silence this long means the peer is gone (dropped without a close frame,
        // or no longer reading).
        let frame = match tokio::time::timeout(idle_timeout, stream.next()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                debug!("idle timeout");
                out.close(close::IDLE_TIMEOUT, "no traffic within the idle timeout");
                break;
            }
        };
        let handled = match frame {
            Ok(Message::Text(text)) if text.len() > soft_limit => {
                session.cast(SessionMsg::Oversize(text.len())).is_ok()
            }
            Ok(Message::Binary(bytes)) if bytes.len() > soft_limit => {
                session.cast(SessionMsg::Oversize(bytes.len())).is_ok()
            }
            Ok(Message::Text(text)) => {
                Box::pin(session.call(|r| SessionMsg::Text(text.as_str().to_owned(), r), None))
                    .await
                    .is_ok()
            }
            Ok(Message::Binary(bytes)) => {
                Box::pin(session.call(|r| SessionMsg::Binary(bytes.to_vec(), r), None))
                    .await
                    .is_ok()
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => true,
            Ok(Message::Close(_)) => false,
            Err(e) => {
                debug!(error = %e, "socket read failed");
                if is_over_size_limit(&e) {
                    out.close(close::TOO_BIG, "frame exceeds the hard size limit");
                }
                false
            }
        };
        if !handled || out.is_closed() {
            break;
        }
    }
}

/// Whether a read failed because a frame or message exceeded the socket's hard size
/// limit (`max_frame_size` / `max_message_size`): tungstenite's capacity error, under
/// axum's.
fn is_over_size_limit(e: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
    std::error::Error::source(e)
        .and_then(|inner| inner.downcast_ref::<WsError>())
        .is_some_and(|inner| {
            matches!(
                inner,
                WsError::Capacity(CapacityError::MessageTooLong { .. })
            )
        })
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: OutboundRx,
    ping_interval: Duration,
    write_stall: Duration,
    out: Outbound,
    metrics: Arc<flowhub_actors::metrics::Metrics>,
) {
    let mut ping = tokio::time::interval(ping_interval);
    ping.tick().await;
    // A write that makes no progress for `write_stall` means the client stopped
    // reading: its kernel buffer is full and so would our queue be, sooner or later.
    // Closed as too slow; no close frame can get through a stalled socket, so the
    // connection is just dropped.
    let stalled = |out: &Outbound| {
        Metrics::inc(&metrics.sessions_closed_slow);
        debug!("socket stalled: closing a client that stopped reading");
        out.close(close::TOO_SLOW, "the client stopped reading");
    };
    loop {
        tokio::select! {
            // Frames queued before a close request still go out first.
            biased;
            frame = rx.frames.recv() => {
                let Some(frame) = frame else { break };
                match tokio::time::timeout(write_stall, write_burst(&mut sink, &mut rx, frame)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => return stalled(&out),
                }
            }
            _ = rx.close.changed() => {
                let request = rx.close.borrow().clone();
                if let Some((code, reason)) = request {
                    // Flush what is already queued, then close.
                    let flush = async {
                        while let Ok(frame) = rx.frames.try_recv() {
                            if code != close::TOO_SLOW && sink.send(to_message(frame)).await.is_err() {
                                return;
                            }
                        }
                        let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                    };
                    if tokio::time::timeout(write_stall, flush).await.is_err() {
                        stalled(&out);
                    }
                    break;
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(write_stall, sink.send(Message::Ping(Vec::new().into()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => return stalled(&out),
                }
            }
        }
    }
}

/// Sends `first` and whatever else is already queued (up to [`WRITE_BATCH`] frames),
/// then flushes once.
async fn write_burst(
    sink: &mut SplitSink<WebSocket, Message>,
    rx: &mut OutboundRx,
    first: OutFrame,
) -> Result<(), axum::Error> {
    sink.feed(to_message(first)).await?;
    for _ in 1..WRITE_BATCH {
        match rx.frames.try_recv() {
            Ok(frame) => sink.feed(to_message(frame)).await?,
            Err(_) => break,
        }
    }
    sink.flush().await
}

fn to_message(frame: OutFrame) -> Message {
    match frame {
        // The shared text goes to the socket without a copy; checking it is UTF-8
        // costs less than copying it, and happens here, in this session's task,
        // rather than in the actor that broadcast it.
        OutFrame::Text(t) => match Utf8Bytes::try_from(Bytes::from_owner(SharedText(t))) {
            Ok(text) => Message::Text(text),
            Err(_) => unreachable!("an Arc<str> is UTF-8"),
        },
        OutFrame::Binary(b) => Message::Binary(b.into()),
        OutFrame::SharedBinary(b) => Message::Binary(Bytes::from_owner(SharedBinary(b))),
    }
}

/// Lets `Bytes` borrow a shared binary frame.
struct SharedBinary(Arc<[u8]>);

impl AsRef<[u8]> for SharedBinary {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Lets `Bytes` borrow a shared `Arc<str>` frame.
struct SharedText(Arc<str>);

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

//! One WebSocket connection, whatever its wire format: the socket loop every
//! WebSocket transport shares.
//!
//! A transport is a [`Codec`]: a [`FrameDecoder`] that turns each client frame into
//! an [`Inbound`] for the session core ([`SessionActor`]), and a [`FrameEncoder`] that
//! turns each typed [`OutFrame`] of the session's queue into a WebSocket message.
//! Everything else is here, once: the session actor's life, the reader (frames are
//! handed over with a `call`, so a flood is slowed to the pace at which it is handled),
//! the writer (bursts, pings, stalled clients), the idle timeout, the hard size limit,
//! and the close on drain, on expiry and on abuse.
//!
//! The socket is split: a writer task drains the session's bounded outbound queue,
//! while the connection's own task reads.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::Bytes;
use flowhub_actors::identity::Identity;
use flowhub_actors::metrics::Metrics;
use flowhub_actors::session::{
    session_span, Inbound, OutFrame, Outbound, OutboundRx, Outgoing, SessionActor, SessionArgs,
    SessionMsg, TransportProfile,
};
use flowhub_protocol::close;
use flowhub_protocol::token::Claims;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use ractor::{Actor, ActorRef};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tracing::{debug, warn, Instrument};

use crate::error::AppError;
use crate::state::AppState;

/// Per-connection socket buffers. tungstenite defaults to 128 KiB each way and
/// allocates the read buffer up front, so it is most of an idle session's memory. A
/// sync message for one edit is a few hundred bytes and fits one read; a larger frame
/// grows the buffer to its size (tungstenite reserves the frame's length), so this
/// only costs big frames a few more reads. The write buffer starts empty, grows to
/// what one burst queues and is given back once written (`vendor/tungstenite`); this
/// is only the size at which writes go out before a flush.
const READ_BUFFER: usize = 512;
const WRITE_BUFFER: usize = 8 * 1024;
/// Most frames the writer sends before one flush, so a burst (a run event to a
/// watcher, sync to a busy editor) is one write rather than one per frame.
const WRITE_BATCH: usize = 64;

/// A data frame from the client.
pub enum ClientFrame {
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl ClientFrame {
    fn len(&self) -> usize {
        match self {
            ClientFrame::Text(t) => t.len(),
            ClientFrame::Binary(b) => b.len(),
        }
    }
}

/// The reading half of a transport (runs in the connection's task).
pub trait FrameDecoder: Send + 'static {
    /// What the session core is to handle for this frame; `None` when the transport
    /// handled it itself (a handshake).
    fn decode(&mut self, frame: ClientFrame) -> Option<Inbound>;

    /// A frame above the session's soft size limit. By default the session refuses
    /// it without looking inside; a transport that can say which flow it concerns
    /// decodes it instead (the session core checks sync payload sizes itself).
    fn decode_oversize(&mut self, frame: ClientFrame) -> Option<Inbound> {
        Some(Inbound::Oversize(frame.len()))
    }
}

/// What one outbound frame becomes on the wire.
pub enum Encoded {
    Send(Message),
    /// Nothing: the frame has no counterpart in this transport.
    Skip,
    /// Send this, then close with this code and reason (the transport's way to end
    /// a session it cannot go on with, e.g. a store failure for a stock peer).
    Fatal(Message, u16, String),
}

/// The writing half of a transport (runs in the writer task).
pub trait FrameEncoder: Send + 'static {
    fn encode(&mut self, frame: OutFrame) -> Encoded;
}

/// A transport's wire format, made per connection.
pub struct Codec<D, E> {
    pub decoder: D,
    pub encoder: E,
}

/// What a transport's codec may need to know of its connection.
pub struct ConnectionInfo<'a> {
    pub session_id: &'a str,
    /// The session's queue: a decoder queues its own replies here (as
    /// [`OutFrame::Raw`]), in order with the session's.
    pub out: &'a Outbound,
}

/// Accepts an authenticated WebSocket upgrade: admitted under the node's connection
/// cap first (a full node answers 503, never a dead socket), then upgraded and run
/// with the transport's codec, tracked so that draining waits for it.
///
/// axum keeps the upgrade callback in the connection's task for the connection's whole
/// life, so everything the callback needs travels in one box that the callback
/// consumes: captured directly, the `AppState`, the claims and the codec's inputs
/// would cost every session ~500 bytes more.
pub fn accept<D, E>(
    ws: WebSocketUpgrade,
    state: AppState,
    claims: Claims,
    profile: TransportProfile,
    make_codec: impl FnOnce(ConnectionInfo<'_>) -> Codec<D, E> + Send + 'static,
) -> Result<Response, AppError>
where
    D: FrameDecoder,
    E: FrameEncoder,
{
    let permit = state.admit_connection()?;
    let ws = size_buffers(ws, state.config.hard_frame_bytes);
    let setup = Box::new((state, claims, permit, make_codec));
    Ok(ws.on_upgrade(move |socket| {
        let (state, claims, permit, make_codec) = *setup;
        let session = run(
            socket,
            &state,
            Identity::from(&claims),
            profile,
            permit,
            make_codec,
        );
        state.connection_tasks.track_future(session)
    }))
}

/// The socket limits every WebSocket endpoint uses (see [`READ_BUFFER`]): left at
/// tungstenite's defaults an idle connection holds ~150 KB.
pub fn size_buffers(ws: WebSocketUpgrade, hard_frame_bytes: usize) -> WebSocketUpgrade {
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(hard_frame_bytes.max(WRITE_BUFFER * 2))
        .max_message_size(hard_frame_bytes)
        .max_frame_size(hard_frame_bytes)
}

/// Sets up one connection; everything that can happen before the first await happens
/// here, in a plain function, and the future returned is `serve`'s own. This future is
/// the connection's task for its whole life, so its size is per-session memory: an
/// async fn or block keeps every argument or capture in its state next to the state of
/// what it awaits (the compiler does not overlap them), so wrapping `serve` in another
/// async block would hold its inputs twice, and awaiting one future inside a block that
/// captured it holds it twice (both were measured: 2 KB each per session).
///
/// `permit` is the connection's slot under the node's cap, given back when it ends.
fn run<D, E>(
    socket: WebSocket,
    state: &AppState,
    identity: Identity,
    profile: TransportProfile,
    permit: OwnedSemaphorePermit,
    make_codec: impl FnOnce(ConnectionInfo<'_>) -> Codec<D, E>,
) -> impl Future<Output = ()> + Send + 'static
where
    D: FrameDecoder,
    E: FrameEncoder,
{
    let prefix = match profile.transport {
        flowhub_actors::metrics::Transport::AutomergeRepo => "am-",
        _ => "",
    };
    let session_id = format!("{prefix}{}", uuid::Uuid::new_v4().simple());
    let span = session_span(&session_id, &identity);
    let (out, out_rx) = Outbound::new(state.config.outbound_queue, state.metrics.clone());
    let codec = make_codec(ConnectionInfo {
        session_id: &session_id,
        out: &out,
    });
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
        profile,
    };
    let link = Link {
        idle_timeout: state.config.idle_timeout,
        soft_limit: state.config.session.max_frame_bytes,
        shutdown: state.shutdown.clone(),
        _permit: permit,
    };
    let (sink, stream) = socket.split();
    let Codec { decoder, encoder } = codec;
    // The writer starts here, so the connection's future never holds what only the
    // writer needs (the sink, the queue's receiving end, the encoder).
    let writer = tokio::spawn(
        write_loop(
            sink,
            out_rx,
            encoder,
            WriterLink {
                ping_interval: state.config.ping_interval,
                write_stall: state.config.write_stall_timeout,
                out: out.clone(),
                metrics: state.metrics.clone(),
            },
        )
        .instrument(span.clone()),
    );
    // The arguments travel boxed: the future keeps the box (a pointer) for its life,
    // not the arguments.
    serve(Box::new(args), stream, out, writer, decoder, link).instrument(span)
}

/// The per-connection settings `serve` keeps.
struct Link {
    idle_timeout: Duration,
    soft_limit: usize,
    /// Cancelled when the node drains.
    shutdown: tokio_util::sync::CancellationToken,
    /// The connection's slot under the node's cap.
    _permit: OwnedSemaphorePermit,
}

async fn serve<D: FrameDecoder>(
    args: Box<SessionArgs>,
    mut stream: SplitStream<WebSocket>,
    out: Outbound,
    mut writer: tokio::task::JoinHandle<()>,
    mut decoder: D,
    link: Link,
) {
    // Out of the box in a block of its own, so the box is freed now and not when the
    // connection ends.
    let args = {
        let boxed = args;
        *boxed
    };
    // Boxed, like the calls in `read_loop`: an inline spawn would size this
    // connection-long future for the spawn's states.
    let session = match Box::pin(Actor::spawn(None, SessionActor, args)).await {
        Ok((session, _)) => session,
        Err(e) => {
            warn!(error = %e, "cannot start session");
            out.close(
                close::SERVICE_RESTART,
                "the session could not start; reconnect",
            );
            return;
        }
    };
    let Link {
        idle_timeout,
        soft_limit,
        shutdown,
        _permit,
    } = link;
    let writer_abort = writer.abort_handle();
    let mut writer_done = false;
    let mut drained = false;
    tokio::select! {
        _ = read_loop(&mut stream, &session, &out, &mut decoder, soft_limit, idle_timeout) => {}
        _ = shutdown.cancelled() => drained = true,
        _ = &mut writer => writer_done = true,
    }
    // Leaving flows happens in the session's post_stop. Stopping waits for the frame
    // the session is handling, and for the acks of the edits it sent: a sync frame
    // being stored gets its ack queued first.
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
    let finished = Box::pin(tokio::time::timeout(Duration::from_secs(2), async {
        tokio::join!(drain, writer)
    }))
    .await;
    if finished.is_err() {
        // A peer that stopped reading keeps the writer in `send`: end it rather than
        // leave a task (and its socket) behind the closed session.
        writer_abort.abort();
    }
}

async fn read_loop<D: FrameDecoder>(
    stream: &mut SplitStream<WebSocket>,
    session: &ActorRef<SessionMsg>,
    out: &Outbound,
    decoder: &mut D,
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
        let frame = match frame {
            Ok(Message::Text(text)) => ClientFrame::Text(text),
            Ok(Message::Binary(bytes)) => ClientFrame::Binary(bytes),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(_)) => break,
            Err(e) => {
                let kind = ReadFailure::of(&e);
                debug!(error = %e, ?kind, "socket read failed");
                if kind == ReadFailure::TooBig {
                    out.close(close::TOO_BIG, "frame exceeds the hard size limit");
                }
                break;
            }
        };
        let inbound = if frame.len() > soft_limit {
            decoder.decode_oversize(frame)
        } else {
            decoder.decode(frame)
        };
        if let Some(inbound) = inbound {
            let handled = Box::pin(session.call(|r| SessionMsg::Frame(inbound, r), None)).await;
            if handled.is_err() {
                break;
            }
        }
        if out.is_closed() {
            break;
        }
    }
}

/// Why a socket read failed, by tungstenite's error type (under axum's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadFailure {
    /// A frame or message above the hard size limit (`max_frame_size` /
    /// `max_message_size`): closed with [`close::TOO_BIG`].
    TooBig,
    /// The peer broke the WebSocket protocol (bad framing, no close handshake).
    Protocol,
    /// The connection itself failed (reset, broken pipe).
    Io,
    Other,
}

impl ReadFailure {
    fn of(e: &axum::Error) -> ReadFailure {
        let Some(inner) =
            std::error::Error::source(e).and_then(|inner| inner.downcast_ref::<WsError>())
        else {
            return ReadFailure::Other;
        };
        match inner {
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => ReadFailure::TooBig,
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) | WsError::Io(_) => {
                ReadFailure::Io
            }
            WsError::Protocol(_) | WsError::Utf8(_) => ReadFailure::Protocol,
            _ => ReadFailure::Other,
        }
    }
}

struct WriterLink {
    ping_interval: Duration,
    write_stall: Duration,
    out: Outbound,
    metrics: Arc<Metrics>,
}

async fn write_loop<E: FrameEncoder>(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: OutboundRx,
    mut encoder: E,
    link: WriterLink,
) {
    let WriterLink {
        ping_interval,
        write_stall,
        out,
        metrics,
    } = link;
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
            biased;
            // Frames queued before a close request still go out first.
            next = rx.next() => match next {
                Outgoing::Frame(frame) => {
                    // Boxed, like every write below: one allocation per burst, and
                    // the task's idle size (per session) stays that of this select.
                    let burst = write_burst(&mut sink, &mut rx, &mut encoder, frame);
                    match Box::pin(tokio::time::timeout(write_stall, burst)).await {
                        Ok(Ok(None)) => {}
                        Ok(Ok(Some((code, reason)))) => {
                            out.close(code, &reason);
                            let close = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
                            let _ = Box::pin(tokio::time::timeout(write_stall, sink.send(close))).await;
                            return;
                        }
                        Ok(Err(_)) => return,
                        Err(_) => return stalled(&out),
                    }
                }
                Outgoing::Close((code, reason)) => {
                    // Nothing is queued any more (frames come first, and none is taken
                    // after a close request): only the close frame is left to send.
                    let close = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
                    if Box::pin(tokio::time::timeout(write_stall, sink.send(close))).await.is_err() {
                        stalled(&out);
                    }
                    break;
                }
                Outgoing::End => break,
            },
            _ = ping.tick() => {
                let ping = Box::pin(tokio::time::timeout(write_stall, sink.send(Message::Ping(Bytes::new()))));
                match ping.await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => return stalled(&out),
                }
            }
        }
    }
}

/// Sends `first` and whatever else is already queued (up to [`WRITE_BATCH`] frames),
/// then flushes once. `Some(close)` when the encoder ended the session.
async fn write_burst<E: FrameEncoder>(
    sink: &mut SplitSink<WebSocket, Message>,
    rx: &mut OutboundRx,
    encoder: &mut E,
    first: OutFrame,
) -> Result<Option<(u16, String)>, axum::Error> {
    let mut frame = first;
    for sent in 1..=WRITE_BATCH {
        match encoder.encode(frame) {
            Encoded::Send(msg) => sink.feed(msg).await?,
            Encoded::Skip => {}
            Encoded::Fatal(msg, code, reason) => {
                sink.feed(msg).await?;
                sink.flush().await?;
                return Ok(Some((code, reason)));
            }
        }
        if sent == WRITE_BATCH {
            break;
        }
        match rx.frames.try_recv() {
            Ok(queued) => frame = queued,
            Err(_) => break,
        }
    }
    sink.flush().await?;
    Ok(None)
}

/// Lets `Bytes` borrow a shared binary frame.
pub struct SharedBinary(pub Arc<[u8]>);

impl AsRef<[u8]> for SharedBinary {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Lets `Bytes` borrow a shared `Arc<str>` frame.
pub struct SharedText(pub Arc<str>);

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

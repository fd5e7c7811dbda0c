//! `GET /v1/automerge-repo?token=`: the network protocol of
//! `@automerge/automerge-repo-network-websocket`, so an unmodified automerge-repo
//! `Repo` can open flows and co-edit them with flowhub clients.
//!
//! Every WebSocket message is one CBOR map (binary frame), typed in [`wire`]. The
//! handshake: the client sends `join {senderId, peerMetadata, supportedProtocolVersions}`,
//! the hub answers `peer {senderId, targetId, peerMetadata, selectedProtocolVersion: "1"}`.
//! Then:
//!
//! | client → hub | what the hub does |
//! |---|---|
//! | `request` / `sync {documentId, data}` | maps the DocumentId to a flow ([`flow_of_document_id`]), joins the flow actor on first use (the role decides, as for `subscribe_flow`), hands `data` to it as [`FlowMsg::Sync`]; slowed down by the session's rate limit, never refused by it |
//! | `ephemeral {documentId, data}` | `data` is CBOR; a map with `cursor {x, y}`, `selection [ids]`, `color` becomes [`FlowMsg::Presence`] (exempt from the rate limit: presence is coalesced) |
//! | `join` again, `doc-unavailable`, `remote-*`, any other type | ignored, but counted by the rate limit |
//!
//! | hub → client | from |
//! |---|---|
//! | `sync {documentId, data}` | the flow actor's binary sync frames for this peer |
//! | `ephemeral {documentId, data, sessionId, count}` | `presence_state` / `presence_diff` as CBOR of the same JSON objects; the hub's notices below |
//! | `doc-unavailable {documentId}` | a DocumentId that names no flow, or a flow the token grants no role on |
//! | `error {message}` | a refusal that concerns no document (bad input, `rate_limited`); the connection stays open |
//! | `error {message}` then close | a bad handshake (1008, 4002 for an unsupported version), a store failure (`internal`, 1011: the Repo reconnects and resends), abuse (1008, as on `/v1/ws`) |
//!
//! # Refusals never lock a peer out
//!
//! A stock `Repo` cannot roll back: it keeps a change the hub refused and sends it
//! again on every sync, so closing the connection on a refusal (the Repo only logs
//! it and reconnects into the same refusal) would lock it out for good. Instead:
//!
//! | what happened to the peer's edit | the peer gets (no close) | its application sees |
//! |---|---|---|
//! | it broke the flow schema | the hub stored it with a repair change ([`OnInvalid::Repair`]); `ephemeral` with data `{type: "flowhub/repaired", change: "<hex>", problems: ["nodes/n1/label: missing", …]}`, and the repair by sync | `handle.on("ephemeral-message")` with that data; the document converges on the repaired flow |
//! | refused (`forbidden` for a viewer, `too_large`, `bad_request`) | `ephemeral` with data `{type: "flowhub/refused", code, message}`, at most one per flow per second | `handle.on("ephemeral-message")` with that data; nothing was stored or forwarded |
//! | the store failed (`internal`) | `error`, then close 1011 | the Repo reconnects and resends later |
//!
//! The hub's ephemerals carry the bridge's own `sessionId` and a `count` that grows
//! with every ephemeral it sends, presence included (automerge-repo drops a
//! `(sessionId, count)` it has seen).
//!
//! It is a translation layer over the same actors as `/v1/ws`: one bridge per
//! connection plays the part of a session (its own session id, the token's identity,
//! a bounded [`Outbound`] queue, the same [`SessionLimiter`]), so edits from a Repo
//! are validated, stored, acked and fanned out exactly like edits from flowhub
//! clients, and floods are answered and closed the same way.

pub mod wire;

use std::collections::HashMap;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use flowhub_actors::flow::{FlowMsg, OnInvalid};
use flowhub_actors::identity::Identity;
use flowhub_actors::metrics::Transport;
use flowhub_actors::session::{OutFrame, Outbound, OutboundRx, SessionLimiter};
use flowhub_protocol::{close, validate_flow_id, ErrorCode, ServerMessage, SyncFrame};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use ractor::rpc::CallResult;
use ractor::ActorRef;
use tokio::sync::mpsc;
use tracing::{debug, info, Instrument};

use crate::error::AppError;
use crate::state::{AppState, Authenticated};
use wire::{HubNotice, PeerMetadata, WireMessage};

/// The only protocol version of automerge-repo-network-websocket.
pub const PROTOCOL_V1: &str = "1";

/// At most one `flowhub/refused` ephemeral per flow in this time: a Repo resends a
/// refused change on every sync round, and its application needs to hear once, not
/// once per round.
const REFUSAL_INTERVAL: Duration = Duration::from_secs(1);

/// WebSocket close code 1011: the server failed; the client may retry.
const CLOSE_INTERNAL_ERROR: u16 = 1011;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/automerge-repo", get(upgrade))
}

// ---- flow id <-> DocumentId ---------------------------------------------------------

/// base58check, as automerge-repo encodes DocumentIds (`bs58check`).
pub fn base58check_encode(payload: &[u8]) -> String {
    bs58::encode(payload).with_check().into_string()
}

pub fn base58check_decode(s: &str) -> Option<Vec<u8>> {
    bs58::decode(s).with_check(None).into_vec().ok()
}

/// The automerge-repo DocumentId of a flow: base58check of the flow id's bytes.
pub fn flow_document_id(flow_id: &str) -> String {
    base58check_encode(flow_id.as_bytes())
}

/// The flow a DocumentId names, if any. DocumentIds made by `repo.create()` (16
/// random bytes) name no flow.
pub fn flow_of_document_id(document_id: &str) -> Option<String> {
    let bytes = base58check_decode(document_id)?;
    let flow_id = String::from_utf8(bytes).ok()?;
    validate_flow_id(&flow_id).ok()?;
    Some(flow_id)
}

// ---- the connection -------------------------------------------------------------------

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
) -> Result<Response, AppError> {
    // Admitted before upgrading: a full node answers 503, never a dead socket.
    let permit = state.admit_connection()?;
    let tasks = state.connection_tasks.clone();
    Ok(
        crate::ws::size_buffers(ws, state.config.hard_frame_bytes).on_upgrade(move |socket| {
            // Tracked: draining waits for the connection to close.
            tasks.track_future(async move {
                run(socket, state, Identity::from(&claims)).await;
                drop(permit);
            })
        }),
    )
}

/// What the reader and the writer share: the peer ids once the handshake is done.
#[derive(Default)]
struct Peers {
    client: Option<String>,
}

/// A frame the reader wants sent (handshake replies, `doc-unavailable`, errors).
enum Direct {
    Frame(Vec<u8>),
    /// Send this CBOR `error`, then close with this code.
    Fatal(Vec<u8>, u16, String),
}

struct Joined {
    flow: ActorRef<FlowMsg>,
}

struct Bridge {
    state: AppState,
    identity: Identity,
    session_id: String,
    server_peer: String,
    peers: Arc<Mutex<Peers>>,
    out: Outbound,
    direct: mpsc::UnboundedSender<Direct>,
    joined: HashMap<String, Joined>,
    /// The session's rate limit and bad-input count, as on `/v1/ws`.
    limiter: SessionLimiter,
}

async fn run(socket: WebSocket, state: AppState, identity: Identity) {
    let session_id = format!("am-{}", uuid::Uuid::new_v4().simple());
    let span = tracing::info_span!("automerge_repo", session_id = %session_id, user_id = %identity.user_id);
    async move {
        state.metrics.session_opened(Transport::AutomergeRepo);
        let (out, out_rx) = Outbound::new(state.config.outbound_queue, state.metrics.clone());
        let (direct, direct_rx) = mpsc::unbounded_channel();
        let peers = Arc::new(Mutex::new(Peers::default()));
        let server_peer = format!("flowhub-{}", state.node_id);
        let expires_at = identity.expires_at;
        let mut bridge = Bridge {
            limiter: SessionLimiter::new(&state.config.session),
            state: state.clone(),
            identity,
            session_id: session_id.clone(),
            server_peer: server_peer.clone(),
            peers: peers.clone(),
            out: out.clone(),
            direct,
            joined: HashMap::new(),
        };
        let (sink, mut stream) = socket.split();
        let mut writer = tokio::spawn(write_loop(
            sink,
            out_rx,
            direct_rx,
            WriterCtx {
                server_peer,
                peers,
                session_id,
                ping_interval: state.config.ping_interval,
                count: 0,
                last_refused: HashMap::new(),
            },
        ));
        let mut writer_done = false;
        let writer_abort = writer.abort_handle();
        let shutdown = state.shutdown.clone();
        let expiry = async move {
            match expires_at {
                Some(exp) => {
                    let secs = exp.saturating_sub(crate::auth::now_secs());
                    tokio::time::sleep(Duration::from_secs(secs)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = bridge.read_loop(&mut stream) => {}
            _ = shutdown.cancelled() => out.close(close::SERVICE_RESTART, "node draining; reconnect"),
            _ = expiry => out.close(close::TOKEN_EXPIRED, "token expired"),
            _ = &mut writer => writer_done = true,
        }
        for (_, joined) in bridge.joined.drain() {
            let _ = joined.flow.cast(FlowMsg::Leave {
                session_id: bridge.session_id.clone(),
            });
        }
        out.close(close::NORMAL, "");
        drop(bridge);
        // Let the writer send what is queued and the close frame, and keep reading
        // meanwhile (as `ws::serve` does): closing a socket with unread input makes the
        // kernel reset the connection, and a flooding peer would never see our close
        // frame and its code.
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
        if tokio::time::timeout(Duration::from_secs(2), async { tokio::join!(drain, writer) })
            .await
            .is_err()
        {
            // A peer that stopped reading keeps the writer in `send`: end it rather
            // than leave a task (and its socket) behind the closed session.
            writer_abort.abort();
        }
        state.metrics.session_closed(Transport::AutomergeRepo);
        info!("automerge-repo connection closed");
    }
    .instrument(span)
    .await
}

impl Bridge {
    fn client_peer(&self) -> Option<String> {
        self.peers.lock().ok().and_then(|p| p.client.clone())
    }

    /// Sends a CBOR `error`, then closes: for a peer that does not speak the protocol.
    fn fatal(&self, message: &str, code: u16) {
        let frame = wire::encode(&WireMessage::Error {
            sender_id: Some(self.server_peer.clone()),
            target_id: self.client_peer(),
            message: message.to_owned(),
        });
        let _ = self.direct.send(Direct::Fatal(
            frame,
            code,
            message.chars().take(100).collect(),
        ));
    }

    /// Refuses one message of the peer's own making. Before the handshake the peer
    /// does not speak the protocol and the connection ends; after it, the peer is told
    /// (a `flowhub/refused` ephemeral when the refusal concerns a flow, else an
    /// `error`, see `translate`) and the refusal counts toward the abuse limit, which
    /// closes the connection as on `/v1/ws`.
    fn refuse(&mut self, flow_id: Option<&str>, code: ErrorCode, message: String) {
        if self.client_peer().is_none() {
            return self.fatal(&format!("{code}: {message}"), close::POLICY);
        }
        debug!(%code, message, "message refused");
        let mut err = ServerMessage::error(code, message);
        if let Some(flow_id) = flow_id {
            err = err.with_flow(flow_id);
        }
        self.out.send_control(&err);
        self.limiter.count_refusal(code, &self.out);
    }

    fn doc_unavailable(&self, document_id: &str) {
        let Some(client) = self.client_peer() else {
            return;
        };
        let _ = self
            .direct
            .send(Direct::Frame(wire::encode(&WireMessage::DocUnavailable {
                sender_id: self.server_peer.clone(),
                target_id: client,
                document_id: document_id.to_owned(),
            })));
    }

    async fn read_loop(&mut self, stream: &mut SplitStream<WebSocket>) {
        let idle = self.state.config.idle_timeout;
        loop {
            let frame = match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(e))) => {
                    debug!(error = %e, "socket read failed");
                    return;
                }
                Ok(None) => return,
                Err(_) => {
                    self.out
                        .close(close::IDLE_TIMEOUT, "no traffic within the idle timeout");
                    return;
                }
            };
            match frame {
                Message::Binary(bytes) => self.on_frame(&bytes).await,
                Message::Text(_) => self.refuse(
                    None,
                    ErrorCode::BadRequest,
                    "messages are CBOR in binary frames".into(),
                ),
                Message::Close(_) => return,
                Message::Ping(_) | Message::Pong(_) => {}
            }
            if self.out.is_closed() || self.direct.is_closed() {
                return;
            }
        }
    }

    async fn on_frame(&mut self, bytes: &[u8]) {
        let msg = match wire::decode(bytes) {
            Ok(msg) => msg,
            Err(e) => return self.refuse(None, ErrorCode::BadRequest, e.to_string()),
        };
        if let WireMessage::Join {
            sender_id,
            supported_protocol_versions,
            ..
        } = &msg
        {
            if self.client_peer().is_some() {
                if let Err(message) = self.limiter.check() {
                    return self.refuse(None, ErrorCode::RateLimited, message);
                }
            }
            return self.on_join(sender_id, supported_protocol_versions.as_deref());
        }
        if self.client_peer().is_none() {
            return self.fatal("bad_request: send join first", close::POLICY);
        }
        match msg {
            WireMessage::Request {
                document_id, data, ..
            }
            | WireMessage::Sync {
                document_id, data, ..
            } => {
                // Slowed down, never refused, as sync frames on `/v1/ws`.
                self.limiter.until_ready().await;
                let max = self.state.config.session.max_frame_bytes;
                if data.len() > max {
                    let flow_id = flow_of_document_id(&document_id);
                    let message = format!(
                        "sync message of {} bytes exceeds the limit of {max}",
                        data.len()
                    );
                    return self.refuse(flow_id.as_deref(), ErrorCode::TooLarge, message);
                }
                self.on_sync(&document_id, data).await;
            }
            WireMessage::Ephemeral {
                document_id, data, ..
            } => {
                if bytes.len() > self.state.config.session.max_frame_bytes {
                    let flow_id = flow_of_document_id(&document_id);
                    let message = format!("ephemeral message of {} bytes", bytes.len());
                    return self.refuse(flow_id.as_deref(), ErrorCode::TooLarge, message);
                }
                self.on_ephemeral(&document_id, &data);
            }
            // doc-unavailable, remote-subscription-change, remote-heads-changed and
            // types this hub does not know: the hub always has every flow and keeps
            // no remote-heads subscriptions. Ignored, but a flood of them is a flood.
            _ => {
                if let Err(message) = self.limiter.check() {
                    return self.refuse(None, ErrorCode::RateLimited, message);
                }
                if bytes.len() > self.state.config.session.max_frame_bytes {
                    let message = format!("message of {} bytes", bytes.len());
                    self.refuse(None, ErrorCode::TooLarge, message);
                }
            }
        }
    }

    fn on_join(&mut self, sender: &str, versions: Option<&[String]>) {
        let supported = versions.is_none_or(|v| v.iter().any(|v| v == PROTOCOL_V1));
        if let Ok(mut peers) = self.peers.lock() {
            peers.client = Some(sender.to_owned());
        }
        if !supported {
            return self.fatal("unsupported protocol version", close::UNSUPPORTED_VERSION);
        }
        debug!(peer = sender, "automerge-repo peer joined");
        let _ = self
            .direct
            .send(Direct::Frame(wire::encode(&WireMessage::Peer {
                sender_id: self.server_peer.clone(),
                target_id: sender.to_owned(),
                peer_metadata: PeerMetadata {
                    storage_id: None,
                    is_ephemeral: Some(false),
                },
                selected_protocol_version: PROTOCOL_V1.to_owned(),
            })));
    }

    /// The flow actor for `flow_id`, joining it on first use; `None` when the token
    /// grants no role on it or it cannot be opened.
    async fn join(&mut self, flow_id: &str) -> Option<ActorRef<FlowMsg>> {
        if let Some(j) = self.joined.get(flow_id) {
            return Some(j.flow.clone());
        }
        if self.joined.len() >= self.state.config.session.max_subscriptions {
            return None;
        }
        let access = self
            .identity
            .flow_access(&*self.state.store, flow_id)
            .await
            .ok()?;
        let (token_role, role) = (access.token_role, access.role?);
        for _ in 0..3 {
            let flow = self.state.registry.get_or_spawn(flow_id).await.ok()?;
            let joined = flow
                .call(
                    |reply| FlowMsg::Join {
                        session_id: self.session_id.clone(),
                        user_id: self.identity.user_id.clone(),
                        name: self.identity.name.clone(),
                        token_role,
                        role,
                        out: self.out.clone(),
                        request_id: None,
                        pending: Vec::new(),
                        stream: false,
                        // A Repo cannot roll back a refused change (module doc).
                        on_invalid: OnInvalid::Repair,
                        reply,
                    },
                    None,
                )
                .await;
            if matches!(joined, Ok(CallResult::Success(()))) {
                debug!(flow_id, ?role, "automerge-repo peer joined flow");
                self.joined
                    .insert(flow_id.to_owned(), Joined { flow: flow.clone() });
                return Some(flow);
            }
        }
        None
    }

    async fn on_sync(&mut self, document_id: &str, payload: Vec<u8>) {
        let Some(flow_id) = flow_of_document_id(document_id) else {
            return self.doc_unavailable(document_id);
        };
        let Some(flow) = self.join(&flow_id).await else {
            return self.doc_unavailable(document_id);
        };
        let result = flow
            .call(
                |reply| FlowMsg::Sync {
                    session_id: self.session_id.clone(),
                    payload,
                    reply,
                },
                None,
            )
            .await;
        if !matches!(result, Ok(CallResult::Success(true))) {
            // Revoked, or the flow actor stopped: the next message joins afresh.
            self.joined.remove(&flow_id);
            if matches!(result, Ok(CallResult::Success(false))) {
                self.doc_unavailable(document_id);
            }
        }
    }

    fn on_ephemeral(&self, document_id: &str, data: &[u8]) {
        let Some(flow_id) = flow_of_document_id(document_id) else {
            return;
        };
        let Some(joined) = self.joined.get(&flow_id) else {
            return;
        };
        if let Some(presence) = wire::presence_of(data) {
            let _ = joined.flow.cast(FlowMsg::Presence {
                session_id: self.session_id.clone(),
                cursor: presence.cursor.map(Into::into),
                selection: presence.selection,
                color: presence.color,
            });
        }
    }
}

struct WriterCtx {
    server_peer: String,
    peers: Arc<Mutex<Peers>>,
    session_id: String,
    ping_interval: Duration,
    /// The `count` of the last ephemeral sent (presence and notices alike).
    count: u64,
    /// When each flow's last `flowhub/refused` went out (see [`REFUSAL_INTERVAL`]).
    last_refused: HashMap<String, Instant>,
}

impl WriterCtx {
    fn client(&self) -> Option<String> {
        self.peers.lock().ok().and_then(|p| p.client.clone())
    }

    fn ephemeral(&mut self, client: String, flow_id: &str, data: Vec<u8>) -> Translated {
        self.count += 1;
        Translated::Send(wire::encode(&WireMessage::Ephemeral {
            sender_id: self.server_peer.clone(),
            target_id: client,
            document_id: flow_document_id(flow_id),
            session_id: self.session_id.clone(),
            count: self.count,
            data,
        }))
    }

    /// Whether a refusal for `flow_id` may be told now (one per flow per interval).
    fn refusal_due(&mut self, flow_id: &str) -> bool {
        let now = Instant::now();
        if self.last_refused.len() >= 64 {
            self.last_refused
                .retain(|_, at| now.duration_since(*at) < REFUSAL_INTERVAL);
        }
        match self.last_refused.get(flow_id) {
            Some(at) if now.duration_since(*at) < REFUSAL_INTERVAL => false,
            _ => {
                self.last_refused.insert(flow_id.to_owned(), now);
                true
            }
        }
    }
}

/// What one frame of the session's outbound queue becomes.
enum Translated {
    Send(Vec<u8>),
    Fatal(Vec<u8>, u16, String),
    Skip,
}

fn translate(frame: OutFrame, ctx: &mut WriterCtx) -> Translated {
    let Some(client) = ctx.client() else {
        return Translated::Skip;
    };
    match frame {
        OutFrame::Binary(bytes) => match SyncFrame::decode(&bytes) {
            Ok(frame) => Translated::Send(wire::encode(&WireMessage::Sync {
                sender_id: ctx.server_peer.clone(),
                target_id: client,
                document_id: flow_document_id(&frame.flow_id),
                data: frame.payload,
            })),
            Err(_) => Translated::Skip,
        },
        // Change frames go only to sessions that subscribed with `stream`, which an
        // automerge-repo peer never does: its document travels by the sync protocol.
        OutFrame::SharedBinary(_) => Translated::Skip,
        OutFrame::Text(json) => {
            let Ok(msg) = serde_json::from_str::<ServerMessage>(&json) else {
                return Translated::Skip;
            };
            match msg {
                ServerMessage::PresenceState { ref flow_id, .. }
                | ServerMessage::PresenceDiff { ref flow_id, .. } => {
                    let flow_id = flow_id.clone();
                    ctx.ephemeral(client, &flow_id, wire::encode(&msg))
                }
                ServerMessage::Repaired {
                    flow_id,
                    change,
                    problems,
                } => {
                    let notice = HubNotice::Repaired { change, problems };
                    ctx.ephemeral(client, &flow_id, wire::encode(&notice))
                }
                // The store failed: the Repo reconnects and resends later.
                ServerMessage::Error {
                    code: ErrorCode::Internal,
                    message,
                    ..
                } => {
                    let text = format!("{}: {message}", ErrorCode::Internal);
                    Translated::Fatal(
                        wire::encode(&WireMessage::Error {
                            sender_id: Some(ctx.server_peer.clone()),
                            target_id: Some(client),
                            message: text.clone(),
                        }),
                        CLOSE_INTERNAL_ERROR,
                        text.chars().take(100).collect(),
                    )
                }
                // Any other refusal concerning a flow: told where the application can
                // see it, never by closing (module doc).
                ServerMessage::Error {
                    flow_id: Some(flow_id),
                    code,
                    message,
                    ..
                } => {
                    if !ctx.refusal_due(&flow_id) {
                        return Translated::Skip;
                    }
                    let notice = HubNotice::Refused { code, message };
                    ctx.ephemeral(client, &flow_id, wire::encode(&notice))
                }
                ServerMessage::Error { code, message, .. } => {
                    Translated::Send(wire::encode(&WireMessage::Error {
                        sender_id: Some(ctx.server_peer.clone()),
                        target_id: Some(client),
                        message: format!("{code}: {message}"),
                    }))
                }
                // flow_state, acks and replies have no automerge-repo counterpart.
                _ => Translated::Skip,
            }
        }
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: OutboundRx,
    mut direct: mpsc::UnboundedReceiver<Direct>,
    mut ctx: WriterCtx,
) {
    let mut ping = tokio::time::interval(ctx.ping_interval);
    ping.tick().await;
    let fatal = |mut sink: SplitSink<WebSocket, Message>,
                 bytes: Vec<u8>,
                 code: u16,
                 reason: String| async move {
        let _ = sink.send(Message::Binary(bytes.into())).await;
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    };
    // Once the reader is gone its sender is dropped and `recv` answers `None` at once,
    // every time: polling it again in a `biased` select would starve the other
    // branches and spin a core forever. After `None` the branch is switched off.
    let mut direct_open = true;
    loop {
        tokio::select! {
            biased;
            d = direct.recv(), if direct_open => match d {
                Some(Direct::Frame(bytes)) => {
                    let sent = sink.send(Message::Binary(bytes.into())).await;
                    if sent.is_err() {
                        return;
                    }
                }
                Some(Direct::Fatal(bytes, code, reason)) => return fatal(sink, bytes, code, reason).await,
                None => direct_open = false,
            },
            frame = rx.frames.recv() => {
                let Some(frame) = frame else { break };
                match translate(frame, &mut ctx) {
                    Translated::Send(bytes) => {
                        if sink.send(Message::Binary(bytes.into())).await.is_err() {
                            return;
                        }
                    }
                    Translated::Fatal(bytes, code, reason) => return fatal(sink, bytes, code, reason).await,
                    Translated::Skip => {}
                }
            }
            _ = rx.close.changed() => {
                let request = rx.close.borrow().clone();
                if let Some((code, reason)) = request {
                    while let Ok(frame) = rx.frames.try_recv() {
                        if code == close::TOO_SLOW {
                            break;
                        }
                        if let Translated::Send(bytes) = translate(frame, &mut ctx) {
                            if sink.send(Message::Binary(bytes.into())).await.is_err() {
                                return;
                            }
                        }
                    }
                    let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                    break;
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_ids_match_bs58check() {
        // Vectors from the `bs58check` npm package automerge-repo uses.
        assert_eq!(flow_document_id("demo"), "HnyCRLDpoJx");
        assert_eq!(flow_document_id("flow-1"), "6kkcGYqhk4c772");
        assert_eq!(base58check_encode(&[0u8; 16]), "11111111111111114Ki9Gx");
        assert_eq!(flow_of_document_id("HnyCRLDpoJx").as_deref(), Some("demo"));
        assert_eq!(
            base58check_decode("11111111111111114Ki9Gx"),
            Some(vec![0u8; 16])
        );
    }

    #[test]
    fn random_and_corrupt_document_ids_name_no_flow() {
        // A repo.create() id: 16 bytes that are not a valid flow id.
        let random =
            base58check_encode(&[0x9c, 0x01, 0xff, 0x10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(flow_of_document_id(&random), None);
        assert_eq!(flow_of_document_id("HnyCRLDpoJy"), None); // bad checksum
        assert_eq!(flow_of_document_id("0OIl"), None); // not base58
        assert_eq!(flow_of_document_id(""), None);
    }

    fn ctx() -> WriterCtx {
        WriterCtx {
            server_peer: "flowhub-n".into(),
            peers: Arc::new(Mutex::new(Peers {
                client: Some("peer".into()),
            })),
            session_id: "am-1".into(),
            ping_interval: Duration::from_secs(30),
            count: 0,
            last_refused: HashMap::new(),
        }
    }

    fn text_frame(msg: &ServerMessage) -> OutFrame {
        OutFrame::Text(flowhub_protocol::encode(msg).into())
    }

    fn sent(t: Translated) -> WireMessage {
        match t {
            Translated::Send(bytes) => wire::decode(&bytes).unwrap(),
            Translated::Fatal(..) => panic!("closed"),
            Translated::Skip => panic!("skipped"),
        }
    }

    #[test]
    fn refusals_become_coalesced_ephemerals_and_store_failures_close() {
        let mut ctx = ctx();
        let refused =
            ServerMessage::error(ErrorCode::Forbidden, "role viewer cannot edit").with_flow("f");
        let WireMessage::Ephemeral {
            document_id,
            session_id,
            count,
            data,
            ..
        } = sent(translate(text_frame(&refused), &mut ctx))
        else {
            panic!("an ephemeral")
        };
        assert_eq!(document_id, flow_document_id("f"));
        assert_eq!((session_id.as_str(), count), ("am-1", 1));
        let notice: HubNotice = ciborium::de::from_reader(&data[..]).unwrap();
        assert_eq!(
            notice,
            HubNotice::Refused {
                code: ErrorCode::Forbidden,
                message: "role viewer cannot edit".into()
            }
        );
        // A second refusal for the same flow within the second is dropped; another
        // flow's is not, and counts go on increasing.
        assert!(matches!(
            translate(text_frame(&refused), &mut ctx),
            Translated::Skip
        ));
        let other = ServerMessage::error(ErrorCode::TooLarge, "big").with_flow("g");
        assert!(matches!(
            sent(translate(text_frame(&other), &mut ctx)),
            WireMessage::Ephemeral { count: 2, .. }
        ));
        let repaired = ServerMessage::Repaired {
            flow_id: "f".into(),
            change: "abcd".into(),
            problems: vec!["nodes/n1/label: missing".into()],
        };
        let WireMessage::Ephemeral { count, data, .. } =
            sent(translate(text_frame(&repaired), &mut ctx))
        else {
            panic!("an ephemeral")
        };
        assert_eq!(count, 3);
        assert!(matches!(
            ciborium::de::from_reader::<HubNotice, _>(&data[..]).unwrap(),
            HubNotice::Repaired { change, .. } if change == "abcd"
        ));
        // No flow: a plain `error`, no close.
        let unflowed = ServerMessage::error(ErrorCode::RateLimited, "too fast");
        assert!(matches!(
            sent(translate(text_frame(&unflowed), &mut ctx)),
            WireMessage::Error { message, .. } if message == "rate_limited: too fast"
        ));
        let internal = ServerMessage::error(ErrorCode::Internal, "store down").with_flow("f");
        assert!(matches!(
            translate(text_frame(&internal), &mut ctx),
            Translated::Fatal(_, 1011, _)
        ));
    }
}

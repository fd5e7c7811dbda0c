//! `GET /v1/automerge-repo?token=`: the network protocol of
//! `@automerge/automerge-repo-network-websocket`, so an unmodified automerge-repo
//! `Repo` can open flows and co-edit them with flowhub clients.
//!
//! Every WebSocket message is one CBOR map (binary frame). The handshake: the client
//! sends `join {senderId, peerMetadata, supportedProtocolVersions}`, the hub answers
//! `peer {senderId, targetId, peerMetadata, selectedProtocolVersion: "1"}`. Then:
//!
//! | client → hub | what the hub does |
//! |---|---|
//! | `request` / `sync {documentId, data}` | maps the DocumentId to a flow ([`flow_of_document_id`]), joins the flow actor on first use (the role decides, as for `subscribe_flow`), hands `data` to it as [`FlowMsg::Sync`] |
//! | `ephemeral {documentId, data}` | `data` is CBOR; a map with `cursor {x, y}`, `selection [ids]`, `color` becomes [`FlowMsg::Presence`] |
//! | `doc-unavailable`, `remote-*` | ignored |
//!
//! | hub → client | from |
//! |---|---|
//! | `sync {documentId, data}` | the flow actor's binary sync frames for this peer |
//! | `ephemeral {documentId, data, sessionId, count}` | `presence_state` / `presence_diff`, as CBOR of the same JSON objects |
//! | `doc-unavailable {documentId}` | a DocumentId that names no flow, or a flow the token grants no role on |
//! | `error {message}` then close | a refused edit (viewer, schema violation, too large: code 1008; store failure: 1011), a bad handshake |
//!
//! It is a translation layer over the same actors as `/v1/ws`: one bridge per
//! connection plays the part of a session (its own session id, the token's identity,
//! a bounded [`Outbound`] queue), so edits from a Repo are validated, stored, acked and
//! fanned out exactly like edits from flowhub clients.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use ciborium::Value;
use flowhub_actors::flow::FlowMsg;
use flowhub_actors::identity::Identity;
use flowhub_actors::session::{OutFrame, Outbound, OutboundRx};
use flowhub_protocol::{close, validate_flow_id, Cursor, ErrorCode, ServerMessage, SyncFrame};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use ractor::rpc::CallResult;
use ractor::ActorRef;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, info, Instrument};

use crate::error::AppError;
use crate::http::{authenticate, TokenQuery};
use crate::server::AppState;

/// The only protocol version of automerge-repo-network-websocket.
pub const PROTOCOL_V1: &str = "1";

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/automerge-repo", get(upgrade))
}

// ---- flow id <-> DocumentId ---------------------------------------------------------

const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

fn base58_encode(bytes: &[u8]) -> String {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    let mut digits: Vec<u8> = Vec::new();
    for &b in &bytes[zeros..] {
        let mut carry = u32::from(b);
        for d in digits.iter_mut() {
            carry += u32::from(*d) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let mut out = "1".repeat(zeros);
    out.extend(digits.iter().rev().map(|d| ALPHABET[*d as usize] as char));
    out
}

fn base58_decode(s: &str) -> Option<Vec<u8>> {
    let zeros = s.bytes().take_while(|b| *b == b'1').count();
    let mut bytes: Vec<u8> = Vec::new();
    for c in s.bytes().skip(zeros) {
        let mut carry = ALPHABET.iter().position(|a| *a == c)? as u32;
        for b in bytes.iter_mut() {
            carry += u32::from(*b) * 58;
            *b = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            bytes.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let mut out = vec![0u8; zeros];
    out.extend(bytes.iter().rev());
    Some(out)
}

fn checksum(payload: &[u8]) -> [u8; 4] {
    let twice = Sha256::digest(Sha256::digest(payload));
    [twice[0], twice[1], twice[2], twice[3]]
}

/// base58check, as automerge-repo encodes DocumentIds (`bs58check`).
pub fn base58check_encode(payload: &[u8]) -> String {
    let mut raw = payload.to_vec();
    raw.extend_from_slice(&checksum(payload));
    base58_encode(&raw)
}

pub fn base58check_decode(s: &str) -> Option<Vec<u8>> {
    let raw = base58_decode(s)?;
    if raw.len() < 4 {
        return None;
    }
    let (payload, sum) = raw.split_at(raw.len() - 4);
    (checksum(payload) == sum).then(|| payload.to_vec())
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

// ---- CBOR helpers ---------------------------------------------------------------------

fn text(s: impl Into<String>) -> Value {
    Value::Text(s.into())
}

fn encode(fields: Vec<(&str, Value)>) -> Vec<u8> {
    let map = Value::Map(fields.into_iter().map(|(k, v)| (text(k), v)).collect());
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = ciborium::ser::into_writer(&map, &mut out);
    out
}

fn field<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| matches!(k, Value::Text(t) if t == key))
        .map(|(_, v)| v)
}

fn get_text<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a str> {
    match field(map, key)? {
        Value::Text(t) => Some(t),
        _ => None,
    }
}

/// Byte strings, also when tagged (some CBOR encoders tag typed arrays).
fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Bytes(b) => Some(b),
        Value::Tag(_, inner) => as_bytes(inner),
        _ => None,
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Float(f) => Some(*f),
        Value::Integer(i) => Some(i128::from(*i) as f64),
        _ => None,
    }
}

/// Cursor, selection and colour, each optional (fields left out keep their value).
type PresenceFields = (Option<Cursor>, Option<Vec<String>>, Option<String>);

/// A presence update carried by an ephemeral message: `{cursor: {x, y}, selection:
/// [node ids], color}`, any field optional. `None` when nothing in it is presence.
fn presence_of(data: &[u8]) -> Option<PresenceFields> {
    let Ok(Value::Map(map)) = ciborium::de::from_reader::<Value, _>(data) else {
        return None;
    };
    let cursor = match field(&map, "cursor") {
        Some(Value::Map(c)) => match (
            field(c, "x").and_then(as_f64),
            field(c, "y").and_then(as_f64),
        ) {
            (Some(x), Some(y)) => Some(Cursor { x, y }),
            _ => None,
        },
        _ => None,
    };
    let selection = match field(&map, "selection") {
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(|v| match v {
                    Value::Text(t) => Some(t.clone()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    };
    let color = get_text(&map, "color").map(str::to_owned);
    if cursor.is_none() && selection.is_none() && color.is_none() {
        return None;
    }
    Some((cursor, selection, color))
}

fn json_to_cbor(v: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = ciborium::ser::into_writer(v, &mut out);
    out
}

// ---- the connection -------------------------------------------------------------------

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let claims = authenticate(&state, &headers, &query).await?;
    // Admitted before upgrading: a full node answers 503, never a dead socket.
    let permit = state.admit_connection()?;
    Ok(
        crate::ws::size_buffers(ws, state.config.hard_frame_bytes).on_upgrade(
            move |socket| async move {
                run(socket, state, Identity::from(&claims)).await;
                drop(permit);
            },
        ),
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
}

async fn run(socket: WebSocket, state: AppState, identity: Identity) {
    let session_id = format!("am-{}", uuid::Uuid::new_v4().simple());
    let span = tracing::info_span!("automerge_repo", session_id = %session_id, user_id = %identity.user_id);
    async move {
        state.metrics.sessions_open.fetch_add(1, Ordering::Relaxed);
        let (out, out_rx) = Outbound::new(state.config.outbound_queue, state.metrics.clone());
        let (direct, direct_rx) = mpsc::unbounded_channel();
        let peers = Arc::new(Mutex::new(Peers::default()));
        let server_peer = format!("flowhub-{}", state.node_id);
        let expires_at = identity.expires_at;
        let mut bridge = Bridge {
            state: state.clone(),
            identity,
            session_id: session_id.clone(),
            server_peer: server_peer.clone(),
            peers: peers.clone(),
            out: out.clone(),
            direct,
            joined: HashMap::new(),
        };
        let (sink, stream) = socket.split();
        let mut writer = tokio::spawn(write_loop(
            sink,
            out_rx,
            direct_rx,
            WriterCtx {
                server_peer,
                peers,
                session_id,
                ping_interval: state.config.ping_interval,
            },
        ));
        let mut writer_done = false;
        let writer_abort = writer.abort_handle();
        let mut draining = state.draining.clone();
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
            _ = bridge.read_loop(stream) => {}
            _ = draining.wait_for(|d| *d) => out.close(close::SERVICE_RESTART, "node draining; reconnect"),
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
        if !writer_done && tokio::time::timeout(Duration::from_secs(2), writer).await.is_err() {
            // A peer that stopped reading keeps the writer in `send`: end it rather
            // than leave a task (and its socket) behind the closed session.
            writer_abort.abort();
        }
        state.metrics.sessions_open.fetch_sub(1, Ordering::Relaxed);
        info!("automerge-repo connection closed");
    }
    .instrument(span)
    .await
}

impl Bridge {
    fn client_peer(&self) -> Option<String> {
        self.peers.lock().ok().and_then(|p| p.client.clone())
    }

    fn error_frame(&self, message: &str) -> Vec<u8> {
        let mut fields = vec![
            ("type", text("error")),
            ("senderId", text(self.server_peer.clone())),
            ("message", text(message)),
        ];
        if let Some(client) = self.client_peer() {
            fields.push(("targetId", text(client)));
        }
        encode(fields)
    }

    fn fatal(&self, message: &str, code: u16) {
        let _ = self.direct.send(Direct::Fatal(
            self.error_frame(message),
            code,
            message.chars().take(100).collect(),
        ));
    }

    fn doc_unavailable(&self, document_id: &str) {
        let Some(client) = self.client_peer() else {
            return;
        };
        let _ = self.direct.send(Direct::Frame(encode(vec![
            ("type", text("doc-unavailable")),
            ("senderId", text(self.server_peer.clone())),
            ("targetId", text(client)),
            ("documentId", text(document_id)),
        ])));
    }

    async fn read_loop(&mut self, mut stream: SplitStream<WebSocket>) {
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
                Message::Binary(bytes) => {
                    if !self.on_message(&bytes).await {
                        return;
                    }
                }
                Message::Text(_) => {
                    self.fatal(
                        "bad_request: messages are CBOR in binary frames",
                        close::POLICY,
                    );
                    return;
                }
                Message::Close(_) => return,
                Message::Ping(_) | Message::Pong(_) => {}
            }
            if self.out.is_closed() {
                return;
            }
        }
    }

    /// Handles one message; `false` ends the connection.
    async fn on_message(&mut self, bytes: &[u8]) -> bool {
        let Ok(Value::Map(map)) = ciborium::de::from_reader::<Value, _>(bytes) else {
            self.fatal("bad_request: not a CBOR map", close::POLICY);
            return false;
        };
        let Some(kind) = get_text(&map, "type") else {
            self.fatal("bad_request: message without a type", close::POLICY);
            return false;
        };
        if kind == "join" {
            return self.on_join(&map);
        }
        if self.client_peer().is_none() {
            self.fatal("bad_request: send join first", close::POLICY);
            return false;
        }
        match kind {
            "request" | "sync" => {
                let (Some(doc), Some(data)) = (
                    get_text(&map, "documentId"),
                    field(&map, "data").and_then(as_bytes),
                ) else {
                    self.fatal("bad_request: sync needs documentId and data", close::POLICY);
                    return false;
                };
                if data.len() > self.state.config.session.max_frame_bytes {
                    self.fatal(
                        "too_large: sync message above max_frame_bytes",
                        close::POLICY,
                    );
                    return false;
                }
                self.on_sync(doc, data.to_vec()).await;
                true
            }
            "ephemeral" => {
                if let (Some(doc), Some(data)) = (
                    get_text(&map, "documentId"),
                    field(&map, "data").and_then(as_bytes),
                ) {
                    self.on_ephemeral(doc, data);
                }
                true
            }
            // doc-unavailable, remote-subscription-change, remote-heads-changed: the hub
            // always has every flow and keeps no remote-heads subscriptions.
            _ => true,
        }
    }

    fn on_join(&mut self, map: &[(Value, Value)]) -> bool {
        let Some(sender) = get_text(map, "senderId") else {
            self.fatal("bad_request: join without senderId", close::POLICY);
            return false;
        };
        let supported = match field(map, "supportedProtocolVersions") {
            None => true,
            Some(Value::Array(versions)) => versions
                .iter()
                .any(|v| matches!(v, Value::Text(t) if t == PROTOCOL_V1)),
            Some(_) => false,
        };
        if let Ok(mut peers) = self.peers.lock() {
            peers.client = Some(sender.to_owned());
        }
        if !supported {
            self.fatal("unsupported protocol version", close::UNSUPPORTED_VERSION);
            return false;
        }
        debug!(peer = sender, "automerge-repo peer joined");
        let _ = self.direct.send(Direct::Frame(encode(vec![
            ("type", text("peer")),
            ("senderId", text(self.server_peer.clone())),
            ("targetId", text(sender)),
            (
                "peerMetadata",
                Value::Map(vec![(text("isEphemeral"), Value::Bool(false))]),
            ),
            ("selectedProtocolVersion", text(PROTOCOL_V1)),
        ])));
        true
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
                        on_invalid: flowhub_actors::flow::OnInvalid::Repair,
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
        if let Some((cursor, selection, color)) = presence_of(data) {
            let _ = joined.flow.cast(FlowMsg::Presence {
                session_id: self.session_id.clone(),
                cursor,
                selection,
                color,
            });
        }
    }
}

struct WriterCtx {
    server_peer: String,
    peers: Arc<Mutex<Peers>>,
    session_id: String,
    ping_interval: Duration,
}

impl WriterCtx {
    fn client(&self) -> Option<String> {
        self.peers.lock().ok().and_then(|p| p.client.clone())
    }
}

/// What one frame of the session's outbound queue becomes.
enum Translated {
    Send(Vec<u8>),
    Fatal(Vec<u8>, u16, String),
    Skip,
}

fn translate(frame: OutFrame, ctx: &WriterCtx, count: &mut u64) -> Translated {
    let Some(client) = ctx.client() else {
        return Translated::Skip;
    };
    match frame {
        OutFrame::Binary(bytes) => match SyncFrame::decode(&bytes) {
            Ok(frame) => Translated::Send(encode(vec![
                ("type", text("sync")),
                ("senderId", text(ctx.server_peer.clone())),
                ("targetId", text(client)),
                ("documentId", text(flow_document_id(&frame.flow_id))),
                ("data", Value::Bytes(frame.payload)),
            ])),
            Err(_) => Translated::Skip,
        },
        // Change frames go only to sessions that subscribed with `stream`, which an
        // automerge-repo peer never does: its document travels by the sync protocol.
        OutFrame::SharedBinary(_) => Translated::Skip,
        OutFrame::Text(json) => {
            let Ok(msg) = serde_json::from_str::<ServerMessage>(&json) else {
                return Translated::Skip;
            };
            match &msg {
                ServerMessage::PresenceState { flow_id, .. }
                | ServerMessage::PresenceDiff { flow_id, .. } => {
                    let Ok(value) = serde_json::to_value(&msg) else {
                        return Translated::Skip;
                    };
                    *count += 1;
                    Translated::Send(encode(vec![
                        ("type", text("ephemeral")),
                        ("senderId", text(ctx.server_peer.clone())),
                        ("targetId", text(client)),
                        ("documentId", text(flow_document_id(flow_id))),
                        ("sessionId", text(ctx.session_id.clone())),
                        ("count", Value::Integer((*count).into())),
                        ("data", Value::Bytes(json_to_cbor(&value))),
                    ]))
                }
                // A refused edit: the Repo still holds the refused changes and would
                // send them again on every sync, so the protocol's answer is an
                // `error` and a close (the adapter reconnects on its own).
                ServerMessage::Error {
                    flow_id: Some(_),
                    code,
                    message,
                    ..
                } => {
                    let text_msg = format!("{code}: {message}");
                    let close_code = if *code == ErrorCode::Internal {
                        1011
                    } else {
                        close::POLICY
                    };
                    Translated::Fatal(
                        encode(vec![
                            ("type", text("error")),
                            ("senderId", text(ctx.server_peer.clone())),
                            ("targetId", text(client)),
                            ("message", text(text_msg.clone())),
                        ]),
                        close_code,
                        text_msg.chars().take(100).collect(),
                    )
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
    ctx: WriterCtx,
) {
    let mut ping = tokio::time::interval(ctx.ping_interval);
    ping.tick().await;
    let mut count = 0u64;
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
                match translate(frame, &ctx, &mut count) {
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
                        if let Translated::Send(bytes) = translate(frame, &ctx, &mut count) {
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

    #[test]
    fn presence_from_ephemeral_data() {
        let data = encode(vec![
            (
                "cursor",
                Value::Map(vec![
                    (text("x"), Value::Float(1.5)),
                    (text("y"), Value::Integer(2.into())),
                ]),
            ),
            ("selection", Value::Array(vec![text("n1")])),
            ("color", text("#ff0000")),
        ]);
        let (cursor, selection, color) = presence_of(&data).unwrap();
        assert_eq!(cursor, Some(Cursor { x: 1.5, y: 2.0 }));
        assert_eq!(selection, Some(vec!["n1".to_string()]));
        assert_eq!(color.as_deref(), Some("#ff0000"));
        assert!(presence_of(&encode(vec![("hello", text("world"))])).is_none());
    }
}

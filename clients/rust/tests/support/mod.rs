//! A small in-process stand-in for the hub, speaking the flowhub protocol over a real
//! WebSocket (and answering `GET /v1/flows/{id}` on the same port), so the client can
//! be tested end to end without the real hub.
//!
//! Tokens: `bad` is refused with 401; a token starting with `viewer` gets the viewer
//! role; any other token is an editor. The user id is the token.

#![allow(dead_code, clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowhub_crdt::{CrdtError, FlowDoc, FlowSnapshot, SyncState};
use flowhub_protocol::{
    decode_client_text, encode, ClientMessage, ErrorCode, Limits, Role, ServerMessage, SyncFrame,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Debug)]
enum Control {
    Close(u16, String),
}

struct HubState {
    flows: Mutex<HashMap<String, Arc<Mutex<FlowDoc>>>>,
    changed: broadcast::Sender<String>,
    control: broadcast::Sender<Control>,
    acks: AtomicBool,
    sessions: AtomicU64,
    active: AtomicU64,
}

pub struct FakeHub {
    pub url: String,
    state: Arc<HubState>,
}

impl FakeHub {
    pub async fn start() -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(HubState {
            flows: Mutex::new(HashMap::new()),
            changed: broadcast::Sender::new(1024),
            control: broadcast::Sender::new(16),
            acks: AtomicBool::new(true),
            sessions: AtomicU64::new(0),
            active: AtomicU64::new(0),
        });
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(st.clone(), stream));
            }
        });
        FakeHub {
            url: format!("ws://{addr}"),
            state,
        }
    }

    pub fn create_flow(&self, id: &str, f: impl FnOnce(&mut FlowDoc)) {
        let mut doc = FlowDoc::new();
        f(&mut doc);
        self.state
            .flows
            .lock()
            .unwrap()
            .insert(id.into(), Arc::new(Mutex::new(doc)));
    }

    fn doc(&self, id: &str) -> Arc<Mutex<FlowDoc>> {
        self.state.flows.lock().unwrap()[id].clone()
    }

    pub fn snapshot(&self, id: &str) -> FlowSnapshot {
        self.doc(id).lock().unwrap().snapshot()
    }

    pub fn heads_hex(&self, id: &str) -> Vec<String> {
        self.doc(id).lock().unwrap().heads_hex()
    }

    /// Edits the hub's copy directly (as if another node did) and tells the sessions.
    pub fn edit(&self, id: &str, f: impl FnOnce(&mut FlowDoc)) {
        f(&mut self.doc(id).lock().unwrap());
        let _ = self.state.changed.send(id.into());
    }

    /// Closes every session with this code and reason.
    pub fn kick(&self, code: u16, reason: &str) {
        let _ = self.state.control.send(Control::Close(code, reason.into()));
    }

    /// How many WebSocket sessions are open.
    pub fn active_sessions(&self) -> u64 {
        self.state.active.load(Ordering::SeqCst)
    }

    /// Whether the hub sends `ack`s for stored changes.
    pub fn set_acks(&self, on: bool) {
        self.state.acks.store(on, Ordering::SeqCst);
    }
}

async fn serve(state: Arc<HubState>, stream: TcpStream) {
    // Peek at the request head to tell a WebSocket upgrade from a plain HTTP GET.
    let mut buf = vec![0u8; 8192];
    let head = loop {
        let n = match stream.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return,
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.contains("\r\n\r\n") || n == buf.len() {
            break text;
        }
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    if head.to_ascii_lowercase().contains("upgrade: websocket") {
        state.active.fetch_add(1, Ordering::SeqCst);
        session(state.clone(), stream).await;
        state.active.fetch_sub(1, Ordering::SeqCst);
    } else {
        http(state, stream, &head).await;
    }
}

async fn http(state: Arc<HubState>, mut stream: TcpStream, head: &str) {
    // Consume the request we peeked at.
    let mut sink = vec![0u8; head.len()];
    let _ = tokio::io::AsyncReadExt::read_exact(&mut stream, &mut sink).await;
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let auth = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("authorization: ")
                .or_else(|| l.strip_prefix("Authorization: "))
        })
        .unwrap_or("")
        .to_owned();
    let (status, body) = if auth != "Bearer good" && !auth.starts_with("Bearer viewer") {
        (
            401,
            serde_json::json!({"error": {"code": "unauthorized", "message": "bad token"}}),
        )
    } else {
        let id = path.strip_prefix("/v1/flows/").unwrap_or("");
        let doc = state.flows.lock().unwrap().get(id).cloned();
        match doc {
            Some(doc) => {
                let mut json = doc.lock().unwrap().to_json();
                json["id"] = id.into();
                (200, json)
            }
            None => (
                404,
                serde_json::json!({"error": {"code": "not_found", "message": format!("no flow `{id}`")}}),
            ),
        }
    };
    let body = body.to_string();
    let reply = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn text(msg: &ServerMessage) -> Message {
    Message::text(encode(msg))
}

fn error(flow_id: Option<&str>, code: ErrorCode, message: &str) -> Message {
    let mut msg = ServerMessage::error(code, message);
    if let Some(f) = flow_id {
        msg = msg.with_flow(f);
    }
    text(&msg)
}

async fn session(state: Arc<HubState>, stream: TcpStream) {
    let mut token = String::new();
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let query = req.uri().query().unwrap_or("");
        token = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .unwrap_or("")
            .to_owned();
        if token == "bad" || token.is_empty() {
            let mut refused = ErrorResponse::new(Some("unauthorized".into()));
            *refused.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
            return Err(refused);
        }
        Ok(resp)
    };
    let ws = match tokio_tungstenite::accept_hdr_async(stream, callback).await {
        Ok(ws) => ws,
        Err(_) => return,
    };
    let role = if token.starts_with("viewer") {
        Role::Viewer
    } else {
        Role::Editor
    };
    let n = state.sessions.fetch_add(1, Ordering::SeqCst);
    let welcome = |id| ServerMessage::Welcome {
        id,
        protocol: 1,
        session_id: format!("sess-{n}"),
        user_id: token.clone(),
        name: format!("User {token}"),
        node_id: "fake-node".into(),
        limits: Limits {
            max_frame_bytes: 1 << 20,
            max_subscriptions: 16,
        },
    };
    let (mut sink, mut stream) = ws.split();
    if sink.send(text(&welcome(None))).await.is_err() {
        return;
    }
    let mut subs: HashMap<String, SyncState> = HashMap::new();
    let mut changed = state.changed.subscribe();
    let mut control = state.control.subscribe();
    loop {
        let mut out: Vec<Message> = Vec::new();
        tokio::select! {
            frame = stream.next() => match frame {
                None | Some(Err(_)) => break,
                Some(Ok(Message::Text(t))) => match decode_client_text(t.as_str()) {
                    Err(failure) => {
                        out.push(text(&ServerMessage::error(failure.error.code(), failure.error.to_string()).with_id(failure.id)));
                    }
                    Ok(ClientMessage::Hello { id, .. }) => out.push(text(&welcome(id))),
                    Ok(ClientMessage::Ping { id }) => out.push(text(&ServerMessage::Pong { id })),
                    Ok(ClientMessage::UnsubscribeFlow { id, flow_id }) => {
                        subs.remove(&flow_id);
                        out.push(text(&ServerMessage::Ack { id, flow_id: None, changes: vec![] }));
                    }
                    Ok(ClientMessage::SubscribeFlow { id, flow_id, .. }) => {
                        let doc = state.flows.lock().unwrap().get(&flow_id).cloned();
                        match doc {
                            None => out.push(text(&ServerMessage::error(ErrorCode::NotFound, "no such flow").with_id(id))),
                            Some(doc) => {
                                let mut doc = doc.lock().unwrap();
                                out.push(text(&ServerMessage::FlowState { id, flow_id: flow_id.clone(), role, heads: doc.heads_hex(), stream: false }));
                                let mut sync = SyncState::new();
                                while let Some(m) = doc.generate_sync_message(&mut sync) {
                                    out.push(Message::binary(SyncFrame::flow_sync(&flow_id, m).encode()));
                                }
                                subs.insert(flow_id, sync);
                            }
                        }
                    }
                    Ok(other) => {
                        let err = ServerMessage::error(ErrorCode::NotFound, format!("the fake hub does not serve `{}`", other.kind()));
                        out.push(text(&err.with_id(other.id().cloned())));
                    }
                },
                Some(Ok(Message::Binary(bytes))) => {
                    on_binary(&state, role, &mut subs, &bytes, &mut out);
                }
                Some(Ok(_)) => {}
            },
            Ok(flow_id) = changed.recv() => {
                if let Some(sync) = subs.get_mut(&flow_id) {
                    let doc = state.flows.lock().unwrap()[&flow_id].clone();
                    let mut doc = doc.lock().unwrap();
                    while let Some(m) = doc.generate_sync_message(sync) {
                        out.push(Message::binary(SyncFrame::flow_sync(&flow_id, m).encode()));
                    }
                }
            }
            Ok(Control::Close(code, reason)) = control.recv() => {
                out.push(Message::Close(Some(CloseFrame { code: code.into(), reason: reason.into() })));
            }
        }
        for msg in out {
            if sink.send(msg).await.is_err() {
                return;
            }
        }
    }
}

fn on_binary(
    state: &HubState,
    role: Role,
    subs: &mut HashMap<String, SyncState>,
    bytes: &[u8],
    out: &mut Vec<Message>,
) {
    let frame = match SyncFrame::decode(bytes) {
        Ok(f) => f,
        Err(e) => {
            out.push(error(None, ErrorCode::BadRequest, &e.to_string()));
            return;
        }
    };
    let flow_id = frame.flow_id.as_str();
    let Some(sync) = subs.get_mut(flow_id) else {
        out.push(error(
            Some(flow_id),
            ErrorCode::BadRequest,
            "not subscribed",
        ));
        return;
    };
    let doc = state.flows.lock().unwrap()[flow_id].clone();
    let mut doc = doc.lock().unwrap();
    if role == Role::Viewer {
        match doc.sync_message_has_new_changes(&frame.payload) {
            Ok(false) => {}
            Ok(true) => {
                sync.reset();
                out.push(error(
                    Some(flow_id),
                    ErrorCode::Forbidden,
                    "viewers cannot edit",
                ));
                return;
            }
            Err(e) => {
                sync.reset();
                out.push(error(Some(flow_id), ErrorCode::BadRequest, &e.to_string()));
                return;
            }
        }
    }
    match doc.receive_sync_message_validated(sync, &frame.payload) {
        Ok(applied) => {
            if !applied.is_empty() {
                if state.acks.load(Ordering::SeqCst) {
                    out.push(text(&ServerMessage::Ack {
                        id: None,
                        flow_id: Some(flow_id.into()),
                        changes: applied.changes.iter().map(|c| c.hash_hex()).collect(),
                    }));
                }
                let _ = state.changed.send(flow_id.into());
            }
            while let Some(m) = doc.generate_sync_message(sync) {
                out.push(Message::binary(SyncFrame::flow_sync(flow_id, m).encode()));
            }
        }
        Err(CrdtError::Schema(e)) => {
            out.push(error(
                Some(flow_id),
                ErrorCode::SchemaViolation,
                &e.to_string(),
            ));
        }
        Err(e) => {
            sync.reset();
            out.push(error(Some(flow_id), ErrorCode::BadRequest, &e.to_string()));
        }
    }
}

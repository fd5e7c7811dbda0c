//! [`Client`]: one WebSocket session with a hub, and its handshake.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use flowhub_protocol::{
    close, validate_flow_id, ClientMessage, ErrorCode, Limits, RequestId, ServerMessage,
    PROTOCOL_VERSION,
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::Instrument;

use crate::dispatch::{read_loop, write_loop, Shared, Ws};
use crate::endpoint::ws_url;
use crate::flow::FlowHandle;
use crate::flow_state::lock;
use crate::{ClientError, DEFAULT_TIMEOUT};

/// How long [`Client::close`] waits for the hub to answer the close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The hub's `welcome`: who this session is and the limits it must respect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The protocol version the hub will speak.
    pub protocol: u32,
    pub session_id: String,
    pub user_id: String,
    /// The user's display name.
    pub name: String,
    /// The hub node serving this session.
    pub node_id: String,
    pub limits: Limits,
}

/// What every [`Client`] and [`FlowHandle`] clone shares. When the last of them is
/// dropped the connection is closed (close code 1000).
pub(crate) struct ClientInner {
    pub(crate) shared: Arc<Shared>,
    /// The current connection's `welcome` (a reconnect brings a new session).
    welcome: Mutex<Welcome>,
    /// Kept for reconnecting.
    token: String,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.shared.mark_closed_by_client();
        if self.shared.close_info().is_none() {
            self.shared.send_close(close::NORMAL, "client dropped");
        }
    }
}

/// A session with a hub. Cheap to clone: clones share one connection, served by a
/// reader task (which decodes and dispatches frames) and a writer task (which owns
/// the socket's sink, fed by an mpsc).
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let welcome = lock(&self.inner.welcome);
        f.debug_struct("Client")
            .field("session_id", &welcome.session_id)
            .field("user_id", &welcome.user_id)
            .field("closed", &self.close_reason())
            .finish()
    }
}

impl Client {
    /// Connects to `{base_url}/v1/ws?token=...` (`base_url` like `ws://127.0.0.1:7878`;
    /// `http://` works too), sends `hello` and waits for the matching `welcome`, all
    /// within 10 s.
    ///
    /// A 401 at the upgrade (or an `unauthorized` error / 4001 close during the
    /// handshake) is [`ClientError::Unauthorized`].
    pub async fn connect(base_url: &str, token: &str) -> Result<Client, ClientError> {
        let (ws, welcome) = open(base_url, token).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(welcome.session_id.clone(), tx, HELLO_ID + 1));
        let reader = start_tasks(&shared, ws, rx, &welcome, 0);
        Ok(Client {
            inner: Arc::new(ClientInner {
                shared,
                welcome: Mutex::new(welcome),
                token: token.to_owned(),
                reader: Mutex::new(Some(reader)),
            }),
        })
    }

    /// Like [`Client::connect`] to the first of `base_urls` that answers, and the
    /// client then **reconnects by itself**: when the connection closes for any reason
    /// but [`Client::close`], dropping the client, an expired token (4001) or a close
    /// that reconnecting cannot cure (1008, 1009, 4002), it connects to the next URL of
    /// the list (round robin; at once, then with backoff up to 5 s) and resumes as
    /// [`Client::reconnect`] does. Meanwhile edits still apply locally and
    /// [`FlowHandle::wait_acked`] keeps waiting; requests fail with
    /// [`ClientError::Closed`].
    pub async fn connect_with_failover(
        base_urls: &[&str],
        token: &str,
    ) -> Result<Client, ClientError> {
        let mut last = ClientError::Connect("no URL given".into());
        for (index, url) in base_urls.iter().enumerate() {
            match Client::connect(url, token).await {
                Ok(client) => {
                    client.inner.shared.set_reconnects(true);
                    let urls = base_urls.iter().map(|u| u.to_string()).collect();
                    tokio::spawn(supervise(Arc::downgrade(&client.inner), urls, index));
                    return Ok(client);
                }
                Err(ClientError::Unauthorized) => return Err(ClientError::Unauthorized),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Replaces the connection by a new one to `base_url` (this hub node or any
    /// other), with the same token, and resumes every subscribed flow: each is
    /// subscribed again with a fresh sync state, reporting its edits not acknowledged
    /// yet (`subscribe_flow.pending`). The hub acks right away those it already
    /// stored, which settles edits whose ack was lost with the old connection (a node
    /// killed or drained between storing and acking); the sync exchange sends it the
    /// others again, and they are acked once stored. [`FlowHandle`]s and their clones
    /// keep working; a still-open old connection is closed.
    ///
    /// A flow the hub now refuses (`forbidden`, …) fails its pending edits with
    /// [`ClientError::Rejected`] and is dropped; run subscriptions are not resumed.
    pub async fn reconnect(&self, base_url: &str) -> Result<(), ClientError> {
        self.inner.reconnect(base_url).await
    }

    /// The current session's id (a new one after every reconnect).
    pub fn session_id(&self) -> String {
        lock(&self.inner.welcome).session_id.clone()
    }

    pub fn user_id(&self) -> String {
        lock(&self.inner.welcome).user_id.clone()
    }

    /// The hub's answer to `hello` on the current connection.
    pub fn welcome(&self) -> Welcome {
        lock(&self.inner.welcome).clone()
    }

    /// Sends `msg` with a fresh numeric id (replacing any id it had) and waits (10 s)
    /// for the frame echoing that id. An `error` reply is [`ClientError::Server`].
    pub async fn request(&self, msg: ClientMessage) -> Result<ServerMessage, ClientError> {
        self.inner.shared.request(msg).await
    }

    /// Subscribes to a flow and waits (10 s) until the local replica has caught up with
    /// the heads the hub named in `flow_state`.
    ///
    /// Subscribing to a flow this client is already subscribed to returns a handle to
    /// the same replica without asking the hub again.
    pub async fn subscribe(&self, flow_id: &str) -> Result<FlowHandle, ClientError> {
        self.subscribe_with_timeout(flow_id, DEFAULT_TIMEOUT).await
    }

    /// [`Client::subscribe`] with a custom catch-up timeout.
    pub async fn subscribe_with_timeout(
        &self,
        flow_id: &str,
        timeout: Duration,
    ) -> Result<FlowHandle, ClientError> {
        let shared = &self.inner.shared;
        let request = ClientMessage::SubscribeFlow {
            id: None,
            flow_id: flow_id.to_owned(),
            pending: Vec::new(),
            stream: true,
            format: Default::default(),
            since_heads: Vec::new(),
        };
        if validate_flow_id(flow_id).is_err() {
            // Frames cannot name this flow; let the hub say what is wrong with it.
            let reply = shared.request(request).await?;
            return Err(ClientError::Protocol(format!(
                "hub accepted invalid flow id `{flow_id}`: {reply:?}"
            )));
        }
        let (flow, fresh) = shared.flow_entry(flow_id);
        let handle = FlowHandle::new(flow.clone(), self.inner.shared.clone(), self.inner.clone());
        if !fresh {
            // Subscribed already, or a concurrent subscribe is under way.
            wait_subscribed(&handle, &flow, timeout).await?;
            handle
                .wait_for_heads(&flow.initial_heads(), timeout)
                .await
                .map_err(catch_up_timeout)?;
            return Ok(handle);
        }
        let reply = match shared.request(request).await {
            Ok(reply) => reply,
            Err(e) => {
                shared.forget_flow(&flow);
                return Err(e);
            }
        };
        let ServerMessage::FlowState {
            role,
            heads,
            stream,
            ..
        } = reply
        else {
            shared.forget_flow(&flow);
            return Err(ClientError::Protocol(format!(
                "expected flow_state in reply to subscribe_flow, got {reply:?}"
            )));
        };
        tracing::debug!(session_id = %shared.session_id, %flow_id, ?role, heads = heads.len(), "subscribed");
        flow.set_link(stream, &heads);
        flow.set_subscribed(role, heads.clone());
        // The hub starts the sync; say what we have too, in case it waits for us.
        flow.sync_now(shared.as_ref())?;
        handle
            .wait_for_heads(&heads, timeout)
            .await
            .map_err(catch_up_timeout)?;
        Ok(handle)
    }

    /// Round-trip time of an application-level `ping`.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let start = Instant::now();
        match self.request(ClientMessage::Ping { id: None }).await? {
            ServerMessage::Pong { .. } => Ok(start.elapsed()),
            other => Err(ClientError::Protocol(format!(
                "expected pong, got {other:?}"
            ))),
        }
    }

    /// Sends a raw text frame (for tests of bad input). Replies that echo an id no
    /// [`Client::request`] is waiting for are dropped, except errors, which go to
    /// [`Client::errors`].
    pub async fn send_text(&self, raw: String) -> Result<(), ClientError> {
        self.inner.shared.send(Message::text(raw))
    }

    /// Sends a raw binary frame (for tests of bad input).
    pub async fn send_binary(&self, raw: Vec<u8>) -> Result<(), ClientError> {
        self.inner.shared.send(Message::binary(raw))
    }

    /// Every `error` frame that no [`Client::request`] claimed: errors without a request
    /// id (refused sync frames, which also carry `flow_id`; undecodable frames) and
    /// errors echoing an id this client did not send through `request`. Refusals
    /// are delivered after the flow's pending edits failed and its rollback started.
    pub fn errors(&self) -> broadcast::Receiver<ServerMessage> {
        self.inner.shared.errors()
    }

    /// Every text message the hub sends unprompted, other than errors and acks:
    /// `run_event`, `resume_from`, `flow_run`, presence. Only messages received after
    /// this call are delivered, so call it before the request that starts them (say
    /// `subscribe_run`, whose `run_state` reply [`Client::request`] returns). A
    /// receiver that falls more than 4096 messages behind gets `Lagged`.
    pub fn messages(&self) -> broadcast::Receiver<ServerMessage> {
        self.inner.shared.messages()
    }

    pub fn is_closed(&self) -> bool {
        self.inner.shared.close_info().is_some()
    }

    /// The close code and reason once the connection is closed: what the hub's close
    /// frame said, or 1006 if the connection was lost without one.
    pub fn close_reason(&self) -> Option<(u16, String)> {
        self.inner.shared.close_info()
    }

    /// Closes the connection (code 1000) and waits (5 s) for the hub to answer.
    pub async fn close(&self) {
        let shared = &self.inner.shared;
        shared.mark_closed_by_client();
        if shared.close_info().is_some() {
            return;
        }
        shared.send_close(close::NORMAL, "client closing");
        let mut closed = shared.closed_rx();
        let answered = tokio::time::timeout(CLOSE_TIMEOUT, closed.wait_for(|c| c.is_some()))
            .await
            .is_ok();
        if !answered {
            if let Some(reader) = lock(&self.inner.reader).take() {
                reader.abort();
            }
            shared.shut_down(close::NORMAL, "closed by client".into());
        }
    }
}

/// The request id of `hello`; later requests count on from it.
const HELLO_ID: u64 = 1;

/// Opens the WebSocket and runs the handshake, within [`DEFAULT_TIMEOUT`].
async fn open(base_url: &str, token: &str) -> Result<(Ws, Welcome), ClientError> {
    let url = ws_url(base_url, token)?;
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    let (mut ws, _response) =
        // Nagle off: edits and acks are small frames that must leave at once, not wait
        // for the peer's delayed ACK of the previous one (tens of milliseconds).
        tokio::time::timeout_at(
            deadline,
            tokio_tungstenite::connect_async_with_config(url.as_str(), None, true),
        )
            .await
            .map_err(|_| ClientError::Timeout("connect"))?
            .map_err(connect_error)?;
    let welcome = tokio::time::timeout_at(deadline, handshake(&mut ws, HELLO_ID))
        .await
        .map_err(|_| ClientError::Timeout("welcome"))??;
    Ok((ws, welcome))
}

/// Spawns the writer and the reader of connection number `generation`; returns the
/// reader.
fn start_tasks(
    shared: &Arc<Shared>,
    ws: Ws,
    rx: mpsc::UnboundedReceiver<Message>,
    welcome: &Welcome,
    generation: u64,
) -> JoinHandle<()> {
    let (sink, stream) = ws.split();
    let span = tracing::info_span!("flowhub_client", session_id = %welcome.session_id);
    tokio::spawn(write_loop(sink, rx, welcome.session_id.clone()).instrument(span.clone()));
    tracing::debug!(session_id = %welcome.session_id, user_id = %welcome.user_id, node_id = %welcome.node_id, "connected");
    tokio::spawn(read_loop(shared.clone(), stream, generation).instrument(span))
}

impl ClientInner {
    async fn reconnect(&self, base_url: &str) -> Result<(), ClientError> {
        let (ws, welcome) = open(base_url, &self.token).await?;
        let shared = &self.shared;
        if shared.close_info().is_none() {
            shared.send_close(close::NORMAL, "reconnecting");
        }
        if let Some(old) = lock(&self.reader).take() {
            // Whatever the old connection still brings is settled by the resubscribe.
            old.abort();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let generation = shared.attach(tx);
        let reader = start_tasks(shared, ws, rx, &welcome, generation);
        *lock(&self.reader) = Some(reader);
        tracing::info!(session_id = %shared.session_id, new_session_id = %welcome.session_id, node_id = %welcome.node_id, "reconnected");
        *lock(&self.welcome) = welcome;
        let flows = shared.flows();
        let resumed =
            futures_util::future::join_all(flows.iter().map(|f| shared.resubscribe(f))).await;
        for (flow, outcome) in flows.iter().zip(resumed) {
            match outcome {
                Ok(()) => {}
                // Refused flows were dropped by `resubscribe`.
                Err(ClientError::Server { .. }) => {}
                Err(e) => {
                    tracing::debug!(session_id = %shared.session_id, flow_id = %flow.flow_id, error = %e, "resubscribe after reconnect failed");
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Close codes after which reconnecting cannot help (docs/PROTOCOL.md "Close codes").
fn reconnect_futile(code: u16) -> bool {
    matches!(
        code,
        close::POLICY | close::TOO_BIG | close::UNSUPPORTED_VERSION | close::TOKEN_EXPIRED
    )
}

/// Reconnects a [`Client::connect_with_failover`] client whenever its connection
/// closes, until the client is closed or dropped or a close says reconnecting is
/// futile.
async fn supervise(client: Weak<ClientInner>, urls: Vec<String>, mut index: usize) {
    let Some(shared) = client.upgrade().map(|c| c.shared.clone()) else {
        return;
    };
    let mut closed = shared.closed_rx();
    loop {
        let code = match closed.wait_for(|c| c.is_some()).await {
            Ok(info) => info.as_ref().map_or(1006, |(code, _)| *code),
            Err(_) => return,
        };
        if shared.closed_by_client() || reconnect_futile(code) {
            shared.set_reconnects(false);
            return;
        }
        let mut delay = Duration::ZERO;
        loop {
            tokio::time::sleep(delay).await;
            let Some(inner) = client.upgrade() else {
                return;
            };
            if inner.shared.closed_by_client() {
                shared.set_reconnects(false);
                return;
            }
            index = (index + 1) % urls.len();
            match inner.reconnect(&urls[index]).await {
                Ok(()) => break,
                Err(ClientError::Unauthorized) => {
                    tracing::warn!(session_id = %shared.session_id, "reconnect refused: unauthorized; giving up");
                    shared.set_reconnects(false);
                    return;
                }
                Err(e) => {
                    tracing::debug!(session_id = %shared.session_id, url = %urls[index], error = %e, "reconnect failed");
                    // A connection that came up but could not resume is retried too.
                    if inner.shared.close_info().is_none() {
                        break;
                    }
                    delay = (delay * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
                }
            }
        }
    }
}

fn catch_up_timeout(e: ClientError) -> ClientError {
    match e {
        ClientError::Timeout(_) => ClientError::Timeout("catch up"),
        e => e,
    }
}

/// Waits until a concurrent subscribe of the same flow got its `flow_state`.
async fn wait_subscribed(
    handle: &FlowHandle,
    flow: &crate::flow_state::FlowShared,
    timeout: Duration,
) -> Result<(), ClientError> {
    let deadline = Instant::now() + timeout;
    while !flow.is_subscribed() {
        if flow.is_gone() {
            return Err(ClientError::NotSubscribed {
                flow_id: handle.flow_id().to_owned(),
            });
        }
        if Instant::now() >= deadline {
            return Err(ClientError::Timeout("flow_state"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Maps a failed upgrade: 401 is [`ClientError::Unauthorized`].
fn connect_error(e: tungstenite::Error) -> ClientError {
    match e {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            if status == tungstenite::http::StatusCode::UNAUTHORIZED {
                return ClientError::Unauthorized;
            }
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned())
                .unwrap_or_default();
            ClientError::Connect(format!("upgrade refused: HTTP {status} {body}"))
        }
        e => ClientError::Connect(e.to_string()),
    }
}

/// Sends `hello` and reads frames until the `welcome` answering it.
///
/// The hub sends one `welcome` unprompted on connect and another, echoing the id, in
/// reply to `hello`; the reply is the one that counts (a second `welcome` is accepted
/// even without the id).
async fn handshake(ws: &mut Ws, hello_id: u64) -> Result<Welcome, ClientError> {
    let hello = ClientMessage::Hello {
        id: Some(RequestId::Num(hello_id)),
        protocol: PROTOCOL_VERSION,
        client: Some(format!("flowhub-client-rust/{}", env!("CARGO_PKG_VERSION"))),
    };
    ws.send(Message::text(flowhub_protocol::encode(&hello)))
        .await
        .map_err(|e| ClientError::Connect(format!("sending hello: {e}")))?;
    let ours = Some(RequestId::Num(hello_id));
    let mut welcomes = 0;
    while let Some(frame) = ws.next().await {
        let text = match frame {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(frame)) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                    .unwrap_or((1005, String::new()));
                if code == close::TOKEN_EXPIRED {
                    return Err(ClientError::Unauthorized);
                }
                return Err(ClientError::Closed { code, reason });
            }
            Ok(_) => continue,
            Err(e) => {
                return Err(ClientError::Connect(format!(
                    "connection lost during handshake: {e}"
                )))
            }
        };
        let msg = match serde_json::from_str::<ServerMessage>(text.as_str()) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable frame during handshake ignored");
                continue;
            }
        };
        match msg {
            ServerMessage::Welcome {
                id,
                protocol,
                session_id,
                user_id,
                name,
                node_id,
                limits,
            } => {
                welcomes += 1;
                if id == ours || welcomes >= 2 {
                    return Ok(Welcome {
                        protocol,
                        session_id,
                        user_id,
                        name,
                        node_id,
                        limits,
                    });
                }
            }
            ServerMessage::Error {
                code: ErrorCode::Unauthorized,
                ..
            } => return Err(ClientError::Unauthorized),
            ServerMessage::Error {
                id, code, message, ..
            } if id == ours => return Err(ClientError::Server { code, message }),
            other => tracing::debug!(?other, "message before welcome ignored"),
        }
    }
    Err(ClientError::Closed {
        code: 1006,
        reason: "connection closed during the handshake".into(),
    })
}

//! Raw WebSocket sessions: connecting (optionally from a chosen loopback source
//! address), small buffers, and reading and writing JSON control frames.
//!
//! Scenarios that must see every frame (presence diffs, run events) or hold tens of
//! thousands of sessions use these instead of `flowhub_client::Client`.
//!
//! One loopback source address gives about 28,000 ephemeral ports towards one hub
//! port; binding sockets to 127.0.0.2, 127.0.0.3, … (all of 127.0.0.0/8 is local on
//! Linux) multiplies that.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flowhub_protocol::{ClientMessage, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{http::Uri, Message};
use tokio_tungstenite::WebSocketStream;

use crate::error::{Error, Result};

pub type RawWs = WebSocketStream<TcpStream>;

/// Sessions per source address when the count is chosen automatically.
const SESSIONS_PER_SOURCE: usize = 20_000;

/// Loopback source addresses handed out round-robin; empty: the OS picks.
#[derive(Debug, Default)]
pub struct SourcePool {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl SourcePool {
    /// `count` addresses 127.0.0.2, 127.0.0.3, …; with `count == 0`, one per 20,000
    /// sessions when `sessions` needs more than one (else none).
    pub fn new(count: usize, sessions: usize) -> Self {
        let count = if count == 0 && sessions > SESSIONS_PER_SOURCE {
            sessions.div_ceil(SESSIONS_PER_SOURCE)
        } else {
            count
        };
        let addrs = (0..count.min(250))
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
            .collect();
        SourcePool {
            addrs,
            next: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    pub fn next(&self) -> Option<IpAddr> {
        if self.addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.addrs[i % self.addrs.len()])
    }
}

/// Small socket buffers: tungstenite's default read buffer (128 KiB, allocated
/// eagerly) would make 50,000 sessions cost 6 GiB in the harness alone.
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
}

/// Raises this process's open-file limit towards `wanted`; returns the new limit.
pub fn raise_nofile_limit(wanted: u64) -> u64 {
    match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            0
        }
    }
}

/// Opens `{base}/v1/ws?token=…` from `source` (if given) within `timeout`.
pub async fn connect(
    base: &str,
    token: &str,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<RawWs> {
    let url = format!("{base}/v1/ws?token={token}");
    tokio::time::timeout(timeout, connect_url(&url, source))
        .await
        .map_err(|_| Error::hub(format!("connecting to {base} timed out")))?
}

/// Opens a WebSocket to a full URL (any path) from `source` (if given).
pub async fn connect_url(url: &str, source: Option<IpAddr>) -> Result<RawWs> {
    let uri: Uri = url
        .parse()
        .map_err(|e| Error::usage(format!("bad url `{url}`: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| Error::usage(format!("no host in `{url}`")))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let addr = resolve(&host, port).await?;
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| Error::io("creating a socket", e))?;
    if let Some(src) = source {
        socket
            .bind(SocketAddr::new(src, 0))
            .map_err(|e| Error::io(format!("binding a client socket to {src}"), e))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| Error::io(format!("connecting to {addr}"), e))?;
    let _ = stream.set_nodelay(true);
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(client_config()))
            .await
            .map_err(|e| Error::hub(format!("WebSocket upgrade at {host}:{port}: {e}")))?;
    Ok(ws)
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::io(format!("resolving {host}"), e))?;
    addrs
        .next()
        .ok_or_else(|| Error::hub(format!("{host} resolves to nothing")))
}

pub async fn send(ws: &mut RawWs, msg: &ClientMessage) -> Result<()> {
    send_text(ws, flowhub_protocol::encode(msg)).await
}

pub async fn send_text(ws: &mut RawWs, text: String) -> Result<()> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| Error::hub(format!("sending: {e}")))
}

/// The next text frame before `deadline` (binary frames and pings are skipped;
/// tungstenite answers pings itself). `None` when the connection closed.
pub async fn next_text(ws: &mut RawWs, deadline: Instant) -> Result<Option<String>> {
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(Error::hub("timed out waiting for the hub")),
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return Ok(None),
            Ok(Some(Err(e))) => return Err(Error::hub(format!("connection lost: {e}"))),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(Some(t.as_str().to_owned())),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Reads control messages until `pred` picks one; an `error` frame fails.
pub async fn wait_for(
    ws: &mut RawWs,
    deadline: Instant,
    what: &str,
    mut pred: impl FnMut(&ServerMessage) -> bool,
) -> Result<ServerMessage> {
    loop {
        let Some(text) = next_text(ws, deadline).await? else {
            return Err(Error::hub(format!("closed while waiting for {what}")));
        };
        let Ok(msg) = serde_json::from_str::<ServerMessage>(&text) else {
            continue;
        };
        if pred(&msg) {
            return Ok(msg);
        }
        if let ServerMessage::Error { code, message, .. } = &msg {
            return Err(Error::hub(format!(
                "{code} while waiting for {what}: {message}"
            )));
        }
    }
}

/// Waits for the hub's unprompted `welcome`; returns the session id and node id.
pub async fn welcome(ws: &mut RawWs, deadline: Instant) -> Result<(String, String)> {
    match wait_for(ws, deadline, "welcome", |m| {
        matches!(m, ServerMessage::Welcome { .. })
    })
    .await?
    {
        ServerMessage::Welcome {
            session_id,
            node_id,
            ..
        } => Ok((session_id, node_id)),
        _ => unreachable!("wait_for returned what the predicate accepted"),
    }
}

/// Subscribes to a flow and waits for `flow_state`.
pub async fn subscribe_flow(ws: &mut RawWs, flow_id: &str, deadline: Instant) -> Result<()> {
    send(
        ws,
        &ClientMessage::SubscribeFlow {
            id: Some(1.into()),
            flow_id: flow_id.to_owned(),
            pending: vec![],
            stream: false,
            format: Default::default(),
            since_heads: Vec::new(),
        },
    )
    .await?;
    wait_for(ws, deadline, "flow_state", |m| {
        matches!(m, ServerMessage::FlowState { .. })
    })
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_pool_sizes_itself() {
        assert!(SourcePool::new(0, 1000).is_empty());
        assert_eq!(SourcePool::new(0, 50_000).len(), 3);
        let pool = SourcePool::new(2, 0);
        let a = pool.next().unwrap();
        let b = pool.next().unwrap();
        assert_eq!(a, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(b, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(pool.next(), Some(a));
    }
}

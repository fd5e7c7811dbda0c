//! The baseline: a bare tokio-tungstenite broadcast server, started in-process on
//! 127.0.0.1:0, that fans the same `run_event` frames out to every connection.
//!
//! It does only what any WebSocket fan-out must do — one `tokio::sync::broadcast`
//! channel, one task per connection writing each frame — with no actors, no
//! sequencing, no store and no resume, so its throughput is what this machine can
//! deliver at all. A connection that falls more than the channel's capacity behind
//! loses frames (counted as lagged). It answers `subscribe_run` with a stub
//! `run_state`, so the same watcher code drives both.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flowhub_protocol::{RunEvent, RunEventInput, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::error::{Error, Result};

/// Frames a connection may fall behind before it loses some.
const CHANNEL_CAPACITY: usize = 4096;

/// A running broadcast server.
pub struct BroadcastServer {
    addr: SocketAddr,
    run_id: String,
    tx: broadcast::Sender<Utf8Bytes>,
    seq: AtomicU64,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
    lagged: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
}

impl BroadcastServer {
    /// Listens on 127.0.0.1:0 and serves `run_id`'s frames.
    pub async fn start(run_id: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::io("binding the baseline server", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("baseline server address", e))?;
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        let stop = watch::Sender::new(false);
        let lagged = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn(accept_loop(
            listener,
            tx.clone(),
            stop.subscribe(),
            lagged.clone(),
            connections.clone(),
        ));
        Ok(BroadcastServer {
            addr,
            run_id: run_id.to_owned(),
            tx,
            seq: AtomicU64::new(0),
            stop,
            accept,
            lagged,
            connections,
        })
    }

    /// `ws://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Numbers and broadcasts events exactly as the hub's `run_event` frames;
    /// returns the last sequence number.
    pub fn publish(&self, events: Vec<RunEventInput>) -> u64 {
        let mut last = self.seq.load(Ordering::Relaxed);
        for event in events {
            last = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
            let frame = ServerMessage::RunEvent {
                run_id: self.run_id.clone(),
                event: RunEvent { seq: last, event },
            };
            // No receiver is not an error here: nobody may be connected yet.
            let _ = self
                .tx
                .send(Utf8Bytes::from(flowhub_protocol::encode(&frame)));
        }
        last
    }

    /// Frames lost by connections that fell too far behind.
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Closes every connection and stops accepting.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.accept).await;
    }
}

/// The same socket buffers as the hub's sessions.
fn server_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
}

async fn accept_loop(
    listener: TcpListener,
    tx: broadcast::Sender<Utf8Bytes>,
    mut stop: watch::Receiver<bool>,
    lagged: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(stream, tx.subscribe(), stop.clone(), lagged.clone()));
            }
            _ = crate::stop::stopped(&mut stop) => break,
        }
    }
}

async fn serve(
    stream: TcpStream,
    mut rx: broadcast::Receiver<Utf8Bytes>,
    mut stop: watch::Receiver<bool>,
    lagged: Arc<AtomicU64>,
) {
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(server_config())).await
    else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Ok(text) => {
                    if sink.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    lagged.fetch_add(n, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            frame = source.next() => match frame {
                Some(Ok(Message::Text(t))) if t.as_str().contains("subscribe_run") => {
                    if sink.send(Message::text(r#"{"type":"run_state"}"#)).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = crate::stop::stopped(&mut stop) => {
                let _ = sink.close().await;
                break;
            }
        }
    }
}

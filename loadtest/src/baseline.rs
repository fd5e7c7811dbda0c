//! The baseline: a bare tokio-tungstenite broadcast server on 127.0.0.1:0 that fans
//! the same `run_event` frames out to every connection.
//!
//! It does only what any WebSocket fan-out must do — one `tokio::sync::broadcast`
//! channel, one task per connection writing each frame — with no actors, no
//! sequencing, no store and no resume, so its throughput is what this machine can
//! deliver at all. A connection that falls more than the channel's capacity behind
//! loses frames (counted as lagged). It answers `subscribe_run` with a stub
//! `run_state`, so the same watcher code drives both it and a hub.
//!
//! [`Baseline`] runs the server either in this process (tests) or, from the
//! command line, in a child process (`flowhub-loadtest baseline-server`, hidden):
//! like the hub, it then has its own runtime and its own open-file limit, so 10,000
//! watchers do not need 20,000 descriptors in one process. The engine publishes
//! over a WebSocket to `/publish` (one text frame per batch: a JSON array of run
//! events; the answer is `{"last_seq", "lagged"}`), a network hop like the hub's
//! `POST`.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowhub_protocol::{RunEvent, RunEventInput, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch, Mutex};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::error::{Error, Result};
use crate::net::{self, RawWs};

/// Frames a connection may fall behind before it loses some.
const CHANNEL_CAPACITY: usize = 4096;
/// The path of the publisher's connection.
const PUBLISH_PATH: &str = "/publish";

/// A running broadcast server (in this process).
pub struct BroadcastServer {
    addr: SocketAddr,
    shared: Arc<ServerShared>,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

struct ServerShared {
    run_id: String,
    tx: broadcast::Sender<Utf8Bytes>,
    seq: AtomicU64,
    lagged: AtomicU64,
    connections: AtomicU64,
}

impl ServerShared {
    fn publish(&self, events: Vec<RunEventInput>) -> u64 {
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
        let shared = Arc::new(ServerShared {
            run_id: run_id.to_owned(),
            tx,
            seq: AtomicU64::new(0),
            lagged: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let stop = watch::Sender::new(false);
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), stop.subscribe()));
        Ok(BroadcastServer {
            addr,
            shared,
            stop,
            accept,
        })
    }

    /// `ws://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Numbers and broadcasts events exactly as the hub's `run_event` frames;
    /// returns the last sequence number.
    pub fn publish(&self, events: Vec<RunEventInput>) -> u64 {
        self.shared.publish(events)
    }

    /// Frames lost by connections that fell too far behind.
    pub fn lagged(&self) -> u64 {
        self.shared.lagged.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Closes every connection and stops accepting.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.accept).await;
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
    shared: Arc<ServerShared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                shared.connections.fetch_add(1, Ordering::Relaxed);
                // Subscribe at accept time: nothing published after this is missed.
                let rx = shared.tx.subscribe();
                tokio::spawn(serve(stream, rx, shared.clone(), stop.clone()));
            }
            _ = crate::stop::stopped(&mut stop) => break,
        }
    }
}

async fn serve(
    stream: TcpStream,
    mut rx: broadcast::Receiver<Utf8Bytes>,
    shared: Arc<ServerShared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut path = String::new();
    #[allow(clippy::result_large_err)] // the signature tungstenite's callback requires
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        path = req.uri().path().to_owned();
        Ok(resp)
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(server_config()))
            .await
    else {
        return;
    };
    if path == PUBLISH_PATH {
        drop(rx);
        return publisher(ws, &shared, stop).await;
    }
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
                    shared.lagged.fetch_add(n, Ordering::Relaxed);
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

/// The engine's connection: each text frame is a batch to publish.
async fn publisher(
    mut ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    shared: &ServerShared,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let frame = tokio::select! {
            frame = ws.next() => frame,
            _ = crate::stop::stopped(&mut stop) => break,
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        };
        let reply = match serde_json::from_str::<Vec<RunEventInput>>(text.as_str()) {
            Ok(events) => serde_json::json!({
                "last_seq": shared.publish(events),
                "lagged": shared.lagged.load(Ordering::Relaxed),
            }),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        if ws.send(Message::text(reply.to_string())).await.is_err() {
            break;
        }
    }
}

/// The hidden `baseline-server` subcommand: serve, print the URL on stdout, and
/// stop when stdin closes (the parent exited) or after `run_for`.
pub async fn serve_child(run_id: &str, run_for: Duration) -> Result<()> {
    let _ = net::raise_nofile_limit(1 << 20);
    let server = BroadcastServer::start(run_id).await?;
    println!("{}", server.url());
    // A blocking read of stdin on its own thread: it returns on EOF or error.
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    });
    let _ = tokio::time::timeout(run_for, stdin_closed).await;
    server.shutdown().await;
    Ok(())
}

/// The baseline server as the `watch` workload uses it: in this process, or in a
/// child process reached over a publisher WebSocket.
pub enum Baseline {
    InProcess(BroadcastServer),
    Child(Box<ChildServer>),
}

/// The server in a child process.
pub struct ChildServer {
    child: tokio::process::Child,
    url: String,
    publisher: Mutex<RawWs>,
    lagged: AtomicU64,
}

impl Baseline {
    /// Starts the server: in a child process running `exe baseline-server` when
    /// `exe` is given, else in this process.
    pub async fn start(run_id: &str, exe: Option<&Path>) -> Result<Self> {
        let Some(exe) = exe else {
            return Ok(Baseline::InProcess(BroadcastServer::start(run_id).await?));
        };
        let mut child = tokio::process::Command::new(exe)
            .args(["baseline-server", "--run-id", run_id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io(format!("starting {} baseline-server", exe.display()), e))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::hub("baseline-server has no stdout"))?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .map_err(|_| Error::hub("baseline-server did not start within 30 s"))?
        .map_err(|e| Error::io("reading the baseline-server's address", e))?;
        let url = line.trim().to_owned();
        if !url.starts_with("ws://") {
            return Err(Error::hub(format!(
                "baseline-server printed `{url}`, not its URL"
            )));
        }
        let publisher = net::connect_url(&format!("{url}{PUBLISH_PATH}"), None).await?;
        Ok(Baseline::Child(Box::new(ChildServer {
            child,
            url,
            publisher: Mutex::new(publisher),
            lagged: AtomicU64::new(0),
        })))
    }

    pub fn url(&self) -> String {
        match self {
            Baseline::InProcess(s) => s.url(),
            Baseline::Child(c) => c.url.clone(),
        }
    }

    /// Publishes a batch; the run's last sequence number.
    pub async fn publish(&self, events: Vec<RunEventInput>) -> Result<u64> {
        match self {
            Baseline::InProcess(s) => Ok(s.publish(events)),
            Baseline::Child(c) => {
                let ChildServer {
                    publisher, lagged, ..
                } = &**c;
                let text = serde_json::to_string(&events)
                    .map_err(|e| Error::Report(format!("encoding events: {e}")))?;
                let mut ws = publisher.lock().await;
                net::send_text(&mut ws, text).await?;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                let reply = net::next_text(&mut ws, deadline)
                    .await?
                    .ok_or_else(|| Error::hub("baseline-server closed the publisher"))?;
                let v: serde_json::Value = serde_json::from_str(&reply)
                    .map_err(|e| Error::hub(format!("baseline-server answered `{reply}`: {e}")))?;
                if let Some(e) = v["error"].as_str() {
                    return Err(Error::hub(format!("baseline-server: {e}")));
                }
                lagged.store(v["lagged"].as_u64().unwrap_or(0), Ordering::Relaxed);
                Ok(v["last_seq"].as_u64().unwrap_or(0))
            }
        }
    }

    /// Frames lost by connections that fell behind (as of the last publish, for a
    /// child).
    pub fn lagged(&self) -> u64 {
        match self {
            Baseline::InProcess(s) => s.lagged(),
            Baseline::Child(c) => c.lagged.load(Ordering::Relaxed),
        }
    }

    pub async fn shutdown(self) {
        match self {
            Baseline::InProcess(s) => s.shutdown().await,
            Baseline::Child(c) => {
                let ChildServer {
                    mut child,
                    publisher,
                    ..
                } = *c;
                let _ = publisher.into_inner().close(None).await;
                // Closing stdin tells the child to stop.
                drop(child.stdin.take());
                if tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
    }
}

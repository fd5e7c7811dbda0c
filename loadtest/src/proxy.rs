//! [`ChaosProxy`]: a WebSocket proxy in front of a hub that can discard a client's
//! edits, to prove that the convergence check catches a hub that loses them.
//!
//! It forwards text, binary and close frames both ways (each hop answers its own
//! pings). For the first `victims` sessions it accepts, it inspects client → hub
//! binary frames: a change frame, or a frame whose Automerge sync message carries
//! changes (judged against a fresh document, which has only the shared genesis), is an
//! edit; after
//! the first `keep_first` of those (the editor's setup), every `drop_every`-th is
//! discarded. The victim's replica keeps its edits; the hub never sees them.
//!
//! Plain HTTP requests (e.g. `GET /v1/flows/{id}`) are passed through unchanged at
//! the TCP level, so the proxy can stand in for the hub in `--targets`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowhub_crdt::FlowDoc;
use flowhub_protocol::{FrameKind, SyncFrame};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info};

use crate::cli::ProxyArgs;
use crate::error::{Error, Result};
use crate::net;
use crate::targets::ws_base;

/// What to break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChaosConfig {
    /// Drop every N-th change-carrying frame of a victim (0: drop nothing).
    pub drop_every: u64,
    /// Sessions, in accept order, that are victims.
    pub victims: usize,
    /// Change-carrying frames forwarded before dropping starts.
    pub keep_first: u64,
}

/// Counters, for tests and logs.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub sessions: AtomicU64,
    pub http_requests: AtomicU64,
    /// Change-carrying frames seen from victims.
    pub change_frames: AtomicU64,
    pub dropped: AtomicU64,
}

pub struct ChaosProxy {
    addr: SocketAddr,
    stats: Arc<ProxyStats>,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

struct Upstream {
    ws_base: String,
    addr: SocketAddr,
}

impl ChaosProxy {
    /// Listens on `listen` (port 0 picks one) in front of the hub at `upstream`.
    pub async fn start(listen: SocketAddr, upstream: &str, config: ChaosConfig) -> Result<Self> {
        let ws_base = ws_base(upstream)?;
        let uri: Uri = ws_base
            .parse()
            .map_err(|e| Error::usage(format!("bad upstream `{upstream}`: {e}")))?;
        let host = uri.host().unwrap_or("127.0.0.1").to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| Error::io(format!("resolving {host}"), e))?
            .next()
            .ok_or_else(|| Error::usage(format!("{host} resolves to nothing")))?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| Error::io(format!("binding the proxy to {listen}"), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("proxy address", e))?;
        let stats = Arc::new(ProxyStats::default());
        let stop = watch::Sender::new(false);
        let upstream = Arc::new(Upstream { ws_base, addr });
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            config,
            stats.clone(),
            stop.subscribe(),
        ));
        info!(%local, upstream = %addr, ?config, "chaos proxy listening");
        Ok(ChaosProxy {
            addr: local,
            stats,
            stop,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://addr`, usable as a target.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn stats(&self) -> &ProxyStats {
        &self.stats
    }

    /// Closes every proxied session and stops accepting.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.accept).await;
    }
}

/// The hidden `proxy` subcommand: serve until `--for` elapses or Ctrl-C.
pub async fn serve(args: &ProxyArgs) -> Result<()> {
    let proxy = ChaosProxy::start(
        args.listen,
        &args.upstream,
        ChaosConfig {
            drop_every: args.chaos_drop_binary_every,
            victims: args.chaos_victims,
            keep_first: args.chaos_keep_first,
        },
    )
    .await?;
    println!("{}", proxy.url());
    tokio::select! {
        _ = tokio::time::sleep(args.run_for) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let s = proxy.stats();
    info!(
        sessions = s.sessions.load(Ordering::Relaxed),
        dropped = s.dropped.load(Ordering::Relaxed),
        "chaos proxy stopping"
    );
    proxy.stop().await;
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    upstream: Arc<Upstream>,
    config: ChaosConfig,
    stats: Arc<ProxyStats>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(stream, upstream.clone(), config, stats.clone(), stop.clone()));
            }
            _ = crate::stop::stopped(&mut stop) => break,
        }
    }
}

/// Reads (without consuming) the HTTP request head; `None` if it never completes.
async fn peek_head(stream: &TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || n == buf.len() {
            return Some(String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn handle(
    mut client: TcpStream,
    upstream: Arc<Upstream>,
    config: ChaosConfig,
    stats: Arc<ProxyStats>,
    stop: watch::Receiver<bool>,
) {
    let Some(head) = peek_head(&client).await else {
        return;
    };
    if head.contains("upgrade: websocket") {
        if let Err(e) = websocket(client, &upstream, config, &stats, stop).await {
            debug!(error = %e, "proxied session ended");
        }
    } else {
        stats.http_requests.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut up) = TcpStream::connect(upstream.addr).await {
            let _ = tokio::time::timeout(
                Duration::from_secs(60),
                tokio::io::copy_bidirectional(&mut client, &mut up),
            )
            .await;
        }
    }
}

/// Whether a client → hub binary frame carries changes a fresh document lacks: a sync
/// message with changes, or a change frame (a streaming client's edit).
fn carries_changes(fresh: &mut FlowDoc, bytes: &[u8]) -> bool {
    SyncFrame::decode(bytes)
        .ok()
        .and_then(|f| match f.kind {
            FrameKind::FlowSync => fresh.sync_message_has_new_changes(&f.payload).ok(),
            FrameKind::FlowChanges => fresh.change_frame_has_new_changes(&f.payload).ok(),
        })
        .unwrap_or(false)
}

async fn websocket(
    client: TcpStream,
    upstream: &Upstream,
    config: ChaosConfig,
    stats: &ProxyStats,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let mut path = String::from("/");
    #[allow(clippy::result_large_err)] // the signature tungstenite's callback requires
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if let Some(pq) = req.uri().path_and_query() {
            path = pq.to_string();
        }
        Ok(resp)
    };
    let client_ws = tokio_tungstenite::accept_hdr_async(client, callback)
        .await
        .map_err(|e| Error::hub(format!("proxy handshake: {e}")))?;
    let upstream_ws = net::connect_url(&format!("{}{path}", upstream.ws_base), None).await?;
    let index = stats.sessions.fetch_add(1, Ordering::Relaxed) as usize;
    let victim = config.drop_every > 0 && index < config.victims;
    let mut fresh = victim.then(FlowDoc::new);
    let mut change_frames = 0u64;
    let (mut c_sink, mut c_stream) = client_ws.split();
    let (mut u_sink, mut u_stream) = upstream_ws.split();
    loop {
        tokio::select! {
            m = c_stream.next() => {
                let msg = match m {
                    Some(Ok(msg)) => msg,
                    _ => break,
                };
                if let (Message::Binary(bytes), Some(doc)) = (&msg, fresh.as_mut()) {
                    if carries_changes(doc, bytes) {
                        change_frames += 1;
                        stats.change_frames.fetch_add(1, Ordering::Relaxed);
                        let counted = change_frames.saturating_sub(config.keep_first);
                        if counted > 0 && counted.checked_rem(config.drop_every) == Some(0) {
                            stats.dropped.fetch_add(1, Ordering::Relaxed);
                            debug!(session = index, change_frames, "dropping an edit");
                            continue;
                        }
                    }
                }
                if !forward(&mut u_sink, msg).await {
                    break;
                }
            }
            m = u_stream.next() => {
                let msg = match m {
                    Some(Ok(msg)) => msg,
                    _ => break,
                };
                if !forward(&mut c_sink, msg).await {
                    break;
                }
            }
            _ = crate::stop::stopped(&mut stop) => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), c_sink.close()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), u_sink.close()).await;
    Ok(())
}

/// Forwards data and close frames; `false` when the session is over.
async fn forward<S>(sink: &mut S, msg: Message) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    match msg {
        Message::Text(_) | Message::Binary(_) => sink.send(msg).await.is_ok(),
        Message::Close(_) => {
            let _ = sink.send(msg).await;
            false
        }
        // Each hop answers its own pings.
        _ => true,
    }
}

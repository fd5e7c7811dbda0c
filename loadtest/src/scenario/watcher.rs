//! One run watcher over a raw WebSocket, shared by the `watch` workload on a hub
//! and on the baseline broadcast server (which speaks the same frames).
//!
//! It sends `subscribe_run {since_seq: 0}`, waits for `run_state`, then reads
//! `run_event`s, checking that sequence numbers arrive once each, in order, with no
//! gap. A `resume_from` (the hub dropped it for lagging) is answered by subscribing
//! again after the last seq seen. Log events carry `event_id = "e{k}"`; the engine's
//! send time of `k` gives the delivery latency.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowhub_protocol::ClientMessage;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::Failures;
use crate::clock::{Clock, SendLog};
use crate::net;
use crate::stats::{Latency, Timeline};

/// What all watchers of one fan-out run share.
pub struct WatchShared {
    pub clock: Clock,
    /// Send time of log event `k` (`event_id = "e{k}"`).
    pub engine_log: SendLog,
    pub ready: AtomicU64,
    pub failures: Failures,
    pub finished: AtomicU64,
    /// Log events received, over all watchers.
    pub deliveries: AtomicU64,
    pub deliveries_tl: Timeline,
    pub last_delivery_us: AtomicU64,
    pub stop: watch::Sender<bool>,
}

/// What one watcher saw.
#[derive(Debug, Default)]
pub struct WatcherResult {
    pub latency: Latency,
    /// Events received (every kind).
    pub received: u64,
    pub last_seq: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub resumes: u64,
    pub errors: u64,
    pub finished: bool,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    event: Option<EventFrame<'a>>,
}

#[derive(Deserialize)]
struct EventFrame<'a> {
    seq: u64,
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

fn subscribe(run_id: &str, since_seq: u64) -> String {
    flowhub_protocol::encode(&ClientMessage::SubscribeRun {
        id: Some(1.into()),
        run_id: run_id.to_owned(),
        since_seq: Some(since_seq),
    })
}

/// Connects to `url`, subscribes to `run_id`, and reads until `run.finished`, the
/// stop signal or `hard_stop`. `None` if it never got `run_state`.
pub async fn watch_run(
    shared: Arc<WatchShared>,
    i: usize,
    url: String,
    run_id: String,
    source: Option<IpAddr>,
    setup_timeout: Duration,
    hard_stop: Instant,
) -> Option<WatcherResult> {
    let setup = async {
        let mut ws = net::connect_url(&url, source).await?;
        net::send_text(&mut ws, subscribe(&run_id, 0)).await?;
        let deadline = Instant::now() + setup_timeout;
        loop {
            let Some(text) = net::next_text(&mut ws, deadline).await? else {
                return Err(crate::Error::hub("closed before run_state"));
            };
            match serde_json::from_str::<Frame>(&text) {
                Ok(f) if f.kind == "run_state" => return Ok(ws),
                Ok(f) if f.kind == "error" => {
                    return Err(crate::Error::hub(format!("subscribe_run refused: {text}")))
                }
                _ => {}
            }
        }
    };
    let ws = match tokio::time::timeout(setup_timeout, setup).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            shared.failures.add(format!("watcher {i}: {e}"));
            return None;
        }
        Err(_) => {
            shared.failures.add(format!("watcher {i}: setup timed out"));
            return None;
        }
    };
    shared.ready.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = ws.split();
    let mut out = WatcherResult::default();
    let mut stop = shared.stop.subscribe();
    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            _ = crate::stop::stopped(&mut stop) => break,
            _ = tokio::time::sleep_until(hard_stop) => break,
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        };
        let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) else {
            continue;
        };
        match (frame.kind.as_ref(), frame.event) {
            ("run_event", Some(ev)) => {
                let now = shared.clock.now_us();
                out.received += 1;
                if ev.seq <= out.last_seq {
                    out.duplicates += 1;
                    continue;
                }
                out.gaps += ev.seq - out.last_seq - 1;
                out.last_seq = ev.seq;
                if let Some(k) = ev
                    .event_id
                    .strip_prefix('e')
                    .and_then(|k| k.parse::<u64>().ok())
                {
                    if let Some(sent) = shared.engine_log.get(k) {
                        out.latency.record(now.saturating_sub(sent));
                    }
                    shared.deliveries.fetch_add(1, Ordering::Relaxed);
                    shared.deliveries_tl.add(now, 1);
                    shared.last_delivery_us.fetch_max(now, Ordering::Relaxed);
                }
                if ev.kind == "run.finished" {
                    out.finished = true;
                    shared.finished.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            ("resume_from", _) => {
                out.resumes += 1;
                // Everything up to the hub's `seq` was queued to us and still arrives;
                // continue after what we have seen.
                tracing::debug!(watcher = i, hub_seq = ?frame.seq, seen = out.last_seq, "resume_from");
                if sink
                    .send(Message::text(subscribe(&run_id, out.last_seq)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            ("error", _) => out.errors += 1,
            _ => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
    Some(out)
}

//! `presence`: cursor storms. N sessions spread over F flows each send M cursor
//! updates per second for D seconds over raw WebSockets.
//!
//! Session `i` sends `cursor = {x: seq, y: i}`, recording the send time of `seq`
//! in-process. Every `presence_diff` a session receives names other sessions'
//! latest cursors; for each entry newer than what it saw before, the session records
//! arrival − send of that `seq` (the **presence delay**) and counts the updates the
//! hub coalesced away in between (last value wins). When the load stops, the check
//! waits (bounded) until every session has seen every peer's final cursor.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowhub_protocol::{Role, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tracing::info;

use super::{round1, Ctx, Failures, Outcome};
use crate::cli::PresenceArgs;
use crate::clock::SendLog;
use crate::error::{Error, Result};
use crate::net::{self, SourcePool};
use crate::report::{Check, Section};
use crate::stats::{Latency, Timeline};

const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
pub const DELAY: &str = "cursor → peer received";

struct Slot {
    flow: usize,
    /// Position among the members of its flow.
    rank: usize,
    target: usize,
    log: SendLog,
    /// Last sequence number sent.
    sent: AtomicU64,
    ready: AtomicBool,
    /// Per member of the same flow (by rank): the last sequence number seen.
    seen: Vec<AtomicU64>,
}

struct Shared {
    ctx: Arc<Ctx>,
    flow_ids: Vec<String>,
    slots: Vec<Slot>,
    members: Vec<Vec<usize>>,
    rate: f64,
    start: watch::Sender<Option<Instant>>,
    stop: watch::Sender<bool>,
    sources: SourcePool,
    connected: AtomicU64,
    failures: Failures,
    updates_sent: AtomicU64,
    diffs_received: AtomicU64,
    entries_received: AtomicU64,
    /// Updates a receiver never saw because a newer one replaced them first.
    superseded: AtomicU64,
    closed_early: Failures,
    sent_tl: Timeline,
    diffs_tl: Timeline,
}

pub fn validate(args: &PresenceArgs) -> Result<()> {
    if args.sessions < 2 || args.presence_flows == 0 {
        return Err(Error::usage(
            "presence needs --sessions ≥ 2 and --presence-flows ≥ 1",
        ));
    }
    if !(args.presence_rate > 0.0 && args.presence_rate <= 1000.0) {
        return Err(Error::usage(
            "--presence-rate must be in (0, 1000] updates/s",
        ));
    }
    Ok(())
}

pub async fn run(ctx: Arc<Ctx>, args: &PresenceArgs) -> Result<Outcome> {
    validate(args)?;
    let n = args.sessions;
    let flows = args.presence_flows.min(n / 2).max(1);
    let targets = ctx.targets.len();
    let capacity = (args.presence_rate * ctx.duration.as_secs_f64() * 1.25) as usize + 16;
    let flow_ids: Vec<String> = (0..flows).map(|k| ctx.id(&format!("p{k}"))).collect();
    let mut members = vec![Vec::new(); flows];
    for i in 0..n {
        members[i % flows].push(i);
    }
    let slots: Vec<Slot> = (0..n)
        .map(|i| {
            let flow = i % flows;
            let rank = i / flows;
            Slot {
                flow,
                rank,
                target: (flow + rank) % targets,
                log: SendLog::with_capacity(capacity),
                sent: AtomicU64::new(0),
                ready: AtomicBool::new(false),
                seen: (0..members[flow].len())
                    .map(|_| AtomicU64::new(0))
                    .collect(),
            }
        })
        .collect();
    let shared = Arc::new(Shared {
        flow_ids,
        slots,
        members,
        rate: args.presence_rate,
        start: watch::Sender::new(None),
        stop: watch::Sender::new(false),
        sources: SourcePool::new(ctx.source_addrs, n),
        connected: AtomicU64::new(0),
        failures: Failures::default(),
        updates_sent: AtomicU64::new(0),
        diffs_received: AtomicU64::new(0),
        entries_received: AtomicU64::new(0),
        superseded: AtomicU64::new(0),
        closed_early: Failures::default(),
        sent_tl: ctx.timeline(),
        diffs_tl: ctx.timeline(),
        ctx: ctx.clone(),
    });
    info!(
        sessions = n,
        flows,
        rate = args.presence_rate,
        "presence: connecting"
    );

    let bar = ctx.progress.bar("presence");
    bar.phase("connect", n as u64);
    let ramp_start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(session(shared.clone(), i, ramp_start)))
        .collect();
    let connect_deadline = ramp_start + ctx.ramp_up + SETUP_TIMEOUT + Duration::from_secs(5);
    loop {
        let done = shared.connected.load(Ordering::Relaxed) + shared.failures.count();
        bar.set(done);
        if done >= n as u64 || Instant::now() >= connect_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected = shared.connected.load(Ordering::Relaxed);
    // Let the joins' presence diffs go out before the storm.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let start = Instant::now() + Duration::from_millis(100);
    let load_start_s = ctx.clock.at_us(start.into_std()) as f64 / 1e6;
    shared.start.send_replace(Some(start));
    let end = start + ctx.duration;
    bar.phase("load", ctx.duration.as_secs().max(1));
    while Instant::now() < end {
        bar.set(start.elapsed().as_secs());
        bar.message(format!(
            "{} updates, {} diffs",
            shared.updates_sent.load(Ordering::Relaxed),
            shared.diffs_received.load(Ordering::Relaxed)
        ));
        tokio::time::sleep(Duration::from_millis(250).min(end - Instant::now())).await;
    }

    // Settle: every session sees every peer's final cursor.
    bar.phase("settle", 1);
    let settle_start = Instant::now();
    let deadline = settle_start + ctx.settle_timeout;
    let missing = loop {
        let missing = missing_finals(&shared);
        if missing == 0 || Instant::now() >= deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let settle_ms = settle_start.elapsed().as_millis() as u64;
    shared.stop.send_replace(true);
    let mut delay = Latency::new();
    for t in tasks {
        if let Ok(Ok(Some(l))) = tokio::time::timeout(Duration::from_secs(10), t).await {
            delay.merge(&l);
        }
    }
    bar.finish(format!(
        "{} updates",
        shared.updates_sent.load(Ordering::Relaxed)
    ));

    let secs = ctx.duration.as_secs_f64();
    let sent = shared.updates_sent.load(Ordering::Relaxed);
    let diffs = shared.diffs_received.load(Ordering::Relaxed);
    let entries = shared.entries_received.load(Ordering::Relaxed);
    // What each receiver would get without coalescing: every update of every peer.
    let uncoalesced: u64 = shared
        .slots
        .iter()
        .filter(|s| s.ready.load(Ordering::Relaxed))
        .map(|s| {
            let peers = shared.members[s.flow]
                .iter()
                .filter(|&&j| shared.slots[j].ready.load(Ordering::Relaxed))
                .count() as u64;
            s.sent.load(Ordering::Relaxed) * peers.saturating_sub(1)
        })
        .sum();
    let mut section = Section::new("presence");
    section.value("sessions connected", connected as f64, format!("of {n}"));
    section.value("flows", flows as f64, "");
    section.value("cursor updates sent", sent as f64, "");
    section.value(
        "cursor update rate",
        round1(sent as f64 / secs),
        "updates/s",
    );
    section.value(
        "updates a peer would get uncoalesced",
        uncoalesced as f64,
        "",
    );
    section.value("presence_diff frames received", diffs as f64, "");
    section.value(
        "presence_diff frames per session",
        round1(diffs as f64 / connected.max(1) as f64 / secs),
        "frames/s",
    );
    section.value("cursor entries received", entries as f64, "");
    section.value(
        "updates superseded before delivery",
        shared.superseded.load(Ordering::Relaxed) as f64,
        "",
    );
    section.value(
        "coalescing factor",
        round1(uncoalesced as f64 / entries.max(1) as f64),
        "updates per delivered entry",
    );
    section.value(
        "frames saved by coalescing",
        round1(100.0 * (1.0 - diffs as f64 / uncoalesced.max(1) as f64)),
        "%",
    );
    section.value("final cursors settled in", settle_ms as f64, "ms");
    section.latencies.push(delay.summary(DELAY));
    section.series.push(shared.sent_tl.series(
        "cursor updates sent",
        "per second",
        load_start_s as usize,
    ));
    section.series.push(shared.diffs_tl.series(
        "presence_diff frames received",
        "per second",
        load_start_s as usize,
    ));
    let checks = vec![
        Check::new(
            "presence: sessions connected",
            connected == n as u64 && shared.closed_early.count() == 0,
            format!(
                "{connected}/{n} connected; failures: {}; closed early: {}",
                shared.failures.describe(),
                shared.closed_early.describe()
            ),
        ),
        Check::new(
            "presence: final cursors delivered",
            missing == 0 && entries <= uncoalesced,
            format!(
                "{missing} (receiver, peer) pairs missing the peer's last cursor after {settle_ms} ms; {entries} entries received ≤ {uncoalesced} sent to peers"
            ),
        ),
    ];
    Ok(Outcome {
        sections: vec![section],
        checks,
    })
}

/// (receiver, peer) pairs where the receiver has not seen the peer's last cursor.
fn missing_finals(shared: &Shared) -> u64 {
    let mut missing = 0;
    for s in shared
        .slots
        .iter()
        .filter(|s| s.ready.load(Ordering::Acquire))
    {
        for (rank, &peer) in shared.members[s.flow].iter().enumerate() {
            let p = &shared.slots[peer];
            if rank == s.rank || !p.ready.load(Ordering::Acquire) {
                continue;
            }
            if s.seen[rank].load(Ordering::Acquire) < p.sent.load(Ordering::Acquire) {
                missing += 1;
            }
        }
    }
    missing
}

/// One session: connect, subscribe, then send cursor updates at the rate while
/// reading every frame. Returns its presence delay histogram.
async fn session(shared: Arc<Shared>, i: usize, ramp_start: Instant) -> Option<Latency> {
    let ctx = &shared.ctx;
    let slot = &shared.slots[i];
    let n = shared.slots.len();
    tokio::time::sleep_until(ramp_start + ctx.ramp_slot(i, n)).await;
    let flow_id = shared.flow_ids[slot.flow].clone();
    let token = ctx
        .tokens
        .user(&ctx.id(&format!("pr{i}")), &[(&flow_id, Role::Editor)]);
    let setup = async {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let mut ws = net::connect(
            ctx.targets.url(slot.target),
            &token,
            shared.sources.next(),
            SETUP_TIMEOUT,
        )
        .await?;
        net::welcome(&mut ws, deadline).await?;
        net::subscribe_flow(&mut ws, &flow_id, deadline).await?;
        Ok::<_, Error>(ws)
    };
    let ws = match setup.await {
        Ok(ws) => ws,
        Err(e) => {
            shared.failures.add(format!("session {i}: {e}"));
            return None;
        }
    };
    slot.ready.store(true, Ordering::Release);
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = ws.split();

    let mut start_rx = shared.start.subscribe();
    let wait = ctx.ramp_up + SETUP_TIMEOUT * 2;
    let start = match tokio::time::timeout(wait, start_rx.wait_for(|s| s.is_some())).await {
        Ok(Ok(s)) => s.unwrap_or_else(Instant::now),
        _ => Instant::now(),
    };
    let end = start + ctx.duration;
    let hard_stop = end + ctx.settle_timeout + Duration::from_secs(30);

    // Writer.
    let writer_shared = shared.clone();
    let writer = tokio::spawn(async move {
        let shared = writer_shared;
        let ctx = &shared.ctx;
        let slot = &shared.slots[i];
        let period = Duration::from_secs_f64(1.0 / shared.rate);
        let first = start + period.mul_f64(i as f64 / n as f64);
        let mut ticks = tokio::time::interval_at(first, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut seq = 0u64;
        loop {
            ticks.tick().await;
            if Instant::now() >= end || seq >= slot.log.capacity() {
                break;
            }
            let next = seq + 1;
            let t = ctx.clock.now_us();
            slot.log.record(next, t);
            let text = format!(
                r#"{{"type":"presence","flow_id":"{flow_id}","cursor":{{"x":{next},"y":{i}}}}}"#
            );
            if sink.send(Message::text(text)).await.is_err() {
                break;
            }
            seq = next;
            slot.sent.store(seq, Ordering::Release);
            shared.updates_sent.fetch_add(1, Ordering::Relaxed);
            shared.sent_tl.add(t, 1);
        }
        sink
    });

    // Reader.
    let mut delay = Latency::new();
    let mut stop = shared.stop.subscribe();
    let my_flow = &shared.members[slot.flow];
    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            _ = crate::stop::stopped(&mut stop) => break,
            _ = tokio::time::sleep_until(hard_stop) => break,
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                shared
                    .closed_early
                    .add(format!("session {i}: connection closed"));
                break;
            }
            Some(Ok(_)) => continue,
        };
        if !text.as_str().contains("\"presence_diff\"") {
            continue;
        }
        let Ok(ServerMessage::PresenceDiff {
            joined, updated, ..
        }) = serde_json::from_str::<ServerMessage>(text.as_str())
        else {
            continue;
        };
        let now = ctx.clock.now_us();
        shared.diffs_received.fetch_add(1, Ordering::Relaxed);
        shared.diffs_tl.add(now, 1);
        for entry in joined.iter().chain(&updated) {
            let Some(cursor) = entry.cursor else { continue };
            if !(cursor.x >= 1.0 && cursor.y >= 0.0 && cursor.y.is_finite()) {
                continue;
            }
            let sender = cursor.y as usize;
            let Some(peer) = shared.slots.get(sender).filter(|p| p.flow == slot.flow) else {
                continue;
            };
            if sender == i || my_flow.get(peer.rank) != Some(&sender) {
                continue;
            }
            shared.entries_received.fetch_add(1, Ordering::Relaxed);
            let seq = (cursor.x as u64).min(peer.log.capacity());
            let seen = &slot.seen[peer.rank];
            let before = seen.load(Ordering::Relaxed);
            if seq > before {
                if let Some(sent) = peer.log.get(seq) {
                    delay.record(now.saturating_sub(sent));
                }
                shared
                    .superseded
                    .fetch_add(seq - before - 1, Ordering::Relaxed);
                seen.store(seq, Ordering::Release);
            }
        }
    }
    if let Ok(Ok(mut sink)) = tokio::time::timeout(Duration::from_secs(5), writer).await {
        let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
    }
    Some(delay)
}

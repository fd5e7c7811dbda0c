//! `idle`: N idle sessions held open; the hub's resident memory per session.
//!
//! Reads `flowhub_process_resident_bytes` and `flowhub_sessions_open` from every
//! target's `/metrics` before connecting, after all sessions are open (and a short
//! settle), and once a second while they are held for `--duration`. Bytes per
//! session = (RSS after − RSS before) / sessions opened, summed over targets.
//!
//! Holding tens of thousands of sessions needs a raised open-file limit (raised here
//! for the harness; the hub's must be raised where it is started, e.g.
//! `ulimit -n 200000`) and several loopback source addresses (`--source-addrs`,
//! chosen automatically: one per 20,000 sessions). Each session keeps reading so that
//! tungstenite answers the hub's pings; a session that goes silent would be closed by
//! the hub's idle timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowhub_protocol::Role;
use futures_util::StreamExt;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::{info, warn};

use super::{round1, Ctx, Failures, Outcome};
use crate::cli::IdleArgs;
use crate::error::{Error, Result};
use crate::metrics::{self, Scrape, RSS, SESSIONS};
use crate::net::{self, SourcePool};
use crate::report::{Check, Section, Series};

const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between the last connect and the "after" reading.
const SETTLE: Duration = Duration::from_secs(2);

struct Shared {
    ctx: Arc<Ctx>,
    sources: SourcePool,
    permits: Semaphore,
    connected: AtomicU64,
    failures: Failures,
    closed_early: Failures,
    stop: watch::Sender<bool>,
    flow_ids: Vec<String>,
}

pub fn validate(args: &IdleArgs) -> Result<()> {
    if args.sessions == 0 || args.connect_concurrency == 0 {
        return Err(Error::usage(
            "--sessions and --connect-concurrency must be at least 1",
        ));
    }
    Ok(())
}

/// Sums one metric over every target's scrape.
fn total(scrapes: &[Scrape], name: &str) -> Option<f64> {
    let values: Vec<f64> = scrapes
        .iter()
        .filter_map(|s| s.get(name).copied())
        .collect();
    (values.len() == scrapes.len() && !values.is_empty()).then(|| values.iter().sum())
}

async fn scrape_all(ctx: &Ctx) -> Vec<Scrape> {
    let mut out = Vec::new();
    for t in ctx.targets.all() {
        match metrics::scrape(t).await {
            Ok(s) => out.push(s),
            Err(e) => warn!(target = %t, error = %e, "cannot read /metrics"),
        }
    }
    out
}

pub async fn run(ctx: Arc<Ctx>, args: &IdleArgs) -> Result<Outcome> {
    validate(args)?;
    let n = args.sessions;
    let wanted_files = n as u64 + 4096;
    let nofile = net::raise_nofile_limit(wanted_files);
    let sources = SourcePool::new(ctx.source_addrs, n);
    info!(
        sessions = n,
        nofile,
        source_addrs = sources.len(),
        "idle: connecting"
    );
    let flow_ids: Vec<String> = (0..args.subscribe_flows)
        .map(|k| ctx.id(&format!("i{k}")))
        .collect();
    let shared = Arc::new(Shared {
        ctx: ctx.clone(),
        sources,
        permits: Semaphore::new(args.connect_concurrency),
        connected: AtomicU64::new(0),
        failures: Failures::default(),
        closed_early: Failures::default(),
        stop: watch::Sender::new(false),
        flow_ids,
    });

    let before = scrape_all(&ctx).await;
    let rss_before = total(&before, RSS);
    let sessions_before = total(&before, SESSIONS);

    let bar = ctx.progress.bar("idle");
    bar.phase("connect", n as u64);
    let ramp_start = Instant::now();
    // Connecting is bounded by the ramp plus what the handshakes need at (a
    // pessimistic) 100 per second.
    let connect_budget = ctx.ramp_up + SETUP_TIMEOUT + Duration::from_secs_f64(n as f64 / 100.0);
    let hard_stop = ramp_start + connect_budget + SETTLE + ctx.duration + Duration::from_secs(60);
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(session(shared.clone(), i, n, ramp_start, hard_stop)))
        .collect();
    let connect_deadline = ramp_start + connect_budget;
    loop {
        let done = shared.connected.load(Ordering::Relaxed) + shared.failures.count();
        bar.set(done);
        bar.message(format!("{} failed", shared.failures.count()));
        if done >= n as u64 || Instant::now() >= connect_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_s = ramp_start.elapsed().as_secs_f64();
    let connected = shared.connected.load(Ordering::Relaxed);
    tokio::time::sleep(SETTLE).await;
    let after = scrape_all(&ctx).await;
    let rss_after = total(&after, RSS);
    let sessions_after = total(&after, SESSIONS);

    // Hold, sampling memory once a second.
    bar.phase("hold", ctx.duration.as_secs().max(1));
    let hold_start = Instant::now();
    let mut rss_series = Vec::new();
    let mut sessions_series = Vec::new();
    while hold_start.elapsed() < ctx.duration {
        let scrapes = scrape_all(&ctx).await;
        if let Some(rss) = total(&scrapes, RSS) {
            rss_series.push(round1(rss / (1 << 20) as f64));
        }
        if let Some(s) = total(&scrapes, SESSIONS) {
            sessions_series.push(s);
        }
        bar.set(hold_start.elapsed().as_secs());
        let left = ctx.duration.saturating_sub(hold_start.elapsed());
        tokio::time::sleep(Duration::from_secs(1).min(left)).await;
    }
    let end = scrape_all(&ctx).await;
    let sessions_end = total(&end, SESSIONS);
    let rss_end = total(&end, RSS);
    let closed_early = shared.closed_early.count();

    shared.stop.send_replace(true);
    bar.phase("close", n as u64);
    let close_deadline = Instant::now() + Duration::from_secs(60);
    let mut closed = 0;
    for t in tasks {
        let left = close_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, t).await {
            Ok(_) => {}
            Err(_) => break,
        }
        closed += 1;
        if closed % 1000 == 0 {
            bar.set(closed);
        }
    }
    bar.finish(format!("{connected} sessions held"));

    let mut section = Section::new("idle");
    section.value("sessions planned", n as f64, "");
    section.value("sessions connected", connected as f64, "");
    section.value("connect phase", round1(connect_s), "s");
    section.value("closed during hold", closed_early as f64, "");
    section.value("loopback source addresses", shared.sources.len() as f64, "");
    section.value("harness open-file limit", nofile as f64, "");
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        section.value("hub RSS before", round1(b / (1 << 20) as f64), "MiB");
        section.value("hub RSS with sessions", round1(a / (1 << 20) as f64), "MiB");
        if let Some(e) = rss_end {
            section.value(
                "hub RSS at end of hold",
                round1(e / (1 << 20) as f64),
                "MiB",
            );
        }
        if connected > 0 {
            section.value(
                "hub RSS per session",
                ((a - b) / connected as f64).round(),
                "bytes",
            );
        }
    } else {
        section.note("flowhub_process_resident_bytes was not available on every target");
    }
    if let (Some(b), Some(a)) = (sessions_before, sessions_after) {
        section.value("hub sessions_open increase", a - b, "");
    }
    if args.subscribe_flows > 0 {
        section.value("flows subscribed", args.subscribe_flows as f64, "");
    }
    section.series.push(Series {
        name: "hub RSS".into(),
        unit: "MiB".into(),
        start_s: 0.0,
        values: rss_series,
    });
    section.series.push(Series {
        name: "hub sessions open".into(),
        unit: "sessions".into(),
        start_s: 0.0,
        values: sessions_series,
    });
    if nofile < wanted_files {
        section.note(format!(
            "the harness's open-file limit is {nofile} (wanted {wanted_files}); raise the hard limit (ulimit -Hn) to hold more"
        ));
    }
    let mut checks = vec![Check::new(
        "idle: all sessions held",
        connected == n as u64 && closed_early == 0,
        format!(
            "{connected}/{n} connected, {closed_early} closed during the hold; failures: {}; closes: {}",
            shared.failures.describe(),
            shared.closed_early.describe()
        ),
    )];
    if let (Some(b), Some(a), Some(e)) = (sessions_before, sessions_after, sessions_end) {
        let counted = (a - b).round() as u64;
        let still = (e - b).round() as u64;
        checks.push(Check::new(
            "idle: hub counted the sessions",
            counted == connected && still == connected - closed_early.min(connected),
            format!(
                "sessions_open rose by {counted} after connecting and is {still} above the start at the end (held: {connected})"
            ),
        ));
    }
    Ok(Outcome {
        sections: vec![section],
        checks,
    })
}

async fn session(shared: Arc<Shared>, i: usize, n: usize, ramp_start: Instant, hard_stop: Instant) {
    let ctx = &shared.ctx;
    tokio::time::sleep_until(ramp_start + ctx.ramp_slot(i, n)).await;
    let flow = (!shared.flow_ids.is_empty()).then(|| &shared.flow_ids[i % shared.flow_ids.len()]);
    let setup = async {
        let Ok(_permit) = shared.permits.acquire().await else {
            return Err(Error::hub("connect semaphore closed"));
        };
        let grants: Vec<(&str, Role)> = flow
            .map(|f| (f.as_str(), Role::Viewer))
            .into_iter()
            .collect();
        let token = ctx.tokens.user(&ctx.id(&format!("idle{i}")), &grants);
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let mut ws = net::connect(
            ctx.targets.url(i),
            &token,
            shared.sources.next(),
            SETUP_TIMEOUT,
        )
        .await?;
        net::welcome(&mut ws, deadline).await?;
        if let Some(f) = flow {
            net::subscribe_flow(&mut ws, f, deadline).await?;
        }
        Ok(ws)
    };
    let mut ws = match setup.await {
        Ok(ws) => ws,
        Err(e) => {
            shared.failures.add(format!("session {i}: {e}"));
            return;
        }
    };
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let mut stop = shared.stop.subscribe();
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Close(f))) => {
                    let why = f.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                    shared.closed_early.add(format!("session {i}: hub closed ({why})"));
                    return;
                }
                None | Some(Err(_)) => {
                    shared.closed_early.add(format!("session {i}: connection lost"));
                    return;
                }
                Some(Ok(_)) => {}
            },
            _ = crate::stop::stopped(&mut stop) => break,
            _ = tokio::time::sleep_until(hard_stop) => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

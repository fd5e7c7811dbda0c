//! `watch`: W watchers of one run while an engine posts run events at R/s.
//!
//! The engine posts `run.started`, then `log` events (`event_id = "e{k}"`, batches of
//! B) to `POST /v1/runs/{run_id}/events` with a service token, then `run.finished`.
//! Every watcher (a raw WebSocket, see [`super::watcher`]) subscribes with
//! `since_seq: 0` and must receive seq 1..=last exactly once, in order. Measured:
//! **POST → watcher received** per event, and fan-out throughput (deliveries per
//! second over the window from the first post to the last delivery).
//!
//! With `--baseline` the same workload (same W, R, B, D, same frames) then runs
//! against the bare broadcast server ([`Baseline`]), and the hub's throughput is reported as a ratio of
//! the baseline's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flowhub_protocol::run::LogLevel;
use flowhub_protocol::{Role, RunEventInput, RunEventKind, RunStatus};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::info;

use super::watcher::{watch_run, WatchShared, WatcherResult};
use super::{round1, Ctx, Failures, Outcome};
use crate::baseline::Baseline;
use crate::cli::WatchArgs;
use crate::clock::SendLog;
use crate::error::{Error, Result};
use crate::net::SourcePool;
use crate::report::{Check, Section};
use crate::stats::Latency;
use crate::targets::http_base;

const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

pub const HUB_DELIVERY: &str = "event POST → watcher received";
pub const BASELINE_DELIVERY: &str = "publish → watcher received";
pub const POST_RTT: &str = "POST events round trip";
pub const THROUGHPUT: &str = "fan-out throughput";

pub fn validate(args: &WatchArgs) -> Result<()> {
    if args.watchers == 0 {
        return Err(Error::usage("--watchers must be at least 1"));
    }
    if !(args.event_rate > 0.0 && args.event_rate <= 100_000.0) {
        return Err(Error::usage("--event-rate must be in (0, 100000] events/s"));
    }
    if args.batch == 0 || args.batch > 10_000 {
        return Err(Error::usage("--batch must be in 1..=10000"));
    }
    Ok(())
}

/// The watch workload on the hub, then (with `--baseline`) on the baseline server.
pub async fn run(ctx: Arc<Ctx>, args: &WatchArgs) -> Result<Outcome> {
    let mut outcome = run_hub(ctx.clone(), args).await?;
    if args.baseline {
        let base = run_baseline(ctx, args).await?;
        compare(&mut outcome, base);
    }
    Ok(outcome)
}

/// The watch workload on the hub only.
pub async fn run_hub(ctx: Arc<Ctx>, args: &WatchArgs) -> Result<Outcome> {
    validate(args)?;
    fanout(ctx, args, Endpoint::Hub).await
}

/// Adds the baseline's sections to `hub` and states the hub's throughput as a
/// percentage of the baseline's.
pub fn compare(hub: &mut Outcome, mut base: Outcome) {
    let bare = base
        .sections
        .iter()
        .find(|s| s.name == "baseline")
        .and_then(|s| s.get(THROUGHPUT))
        .unwrap_or(0.0);
    if let Some(watch) = hub.sections.iter_mut().find(|s| s.name == "watch") {
        let ours = watch.get(THROUGHPUT).unwrap_or(0.0);
        if bare > 0.0 {
            watch.value(
                "throughput vs baseline",
                round1(100.0 * ours / bare),
                "% of the bare broadcast server",
            );
        }
    }
    hub.sections.append(&mut base.sections);
    hub.checks.append(&mut base.checks);
}

/// The same fan-out against a bare tokio-tungstenite broadcast server.
pub async fn run_baseline(ctx: Arc<Ctx>, args: &WatchArgs) -> Result<Outcome> {
    validate(args)?;
    let exe = if ctx.baseline_in_process {
        None
    } else {
        Some(
            std::env::current_exe()
                .map_err(|e| Error::io("locating flowhub-loadtest for the baseline server", e))?,
        )
    };
    let server = Baseline::start(&ctx.id("baseline"), exe.as_deref()).await?;
    let result = fanout(ctx, args, Endpoint::Baseline(&server)).await;
    let lagged = server.lagged();
    server.shutdown().await;
    let mut outcome = result?;
    outcome.sections[0].value("frames lost to lag", lagged as f64, "");
    Ok(outcome)
}

enum Endpoint<'a> {
    Hub,
    Baseline(&'a Baseline),
}

/// Who posts the events.
enum Engine<'a> {
    Hub {
        http: reqwest::Client,
        url: String,
        token: String,
    },
    Baseline(&'a Baseline),
}

impl Engine<'_> {
    /// Posts a batch; the run's last sequence number, or the HTTP status and why.
    async fn post(&self, events: Vec<RunEventInput>) -> Result<u64, (u16, String)> {
        match self {
            Engine::Baseline(server) => {
                server.publish(events).await.map_err(|e| (0, e.to_string()))
            }
            Engine::Hub { http, url, token } => {
                let body = serde_json::json!({ "events": events });
                let response = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .map_err(|e| (0, e.to_string()))?;
                let status = response.status().as_u16();
                let text = response.text().await.map_err(|e| (status, e.to_string()))?;
                if status != 200 {
                    return Err((status, text.chars().take(300).collect()));
                }
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| (status, e.to_string()))?;
                Ok(v["last_seq"].as_u64().unwrap_or(0))
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn event(
    event_id: String,
    kind: RunEventKind,
    flow_id: &str,
    message: Option<String>,
) -> RunEventInput {
    RunEventInput {
        event_id,
        kind,
        flow_id: flow_id.to_owned(),
        node_id: None,
        ts: now_ms(),
        duration_ms: None,
        error: None,
        level: message.as_ref().map(|_| LogLevel::Info),
        message,
        attempt: None,
        status: (kind == RunEventKind::RunFinished).then_some(RunStatus::Succeeded),
        flow_heads: None,
    }
}

async fn fanout(ctx: Arc<Ctx>, args: &WatchArgs, endpoint: Endpoint<'_>) -> Result<Outcome> {
    let hub = matches!(endpoint, Endpoint::Hub);
    let name = if hub { "watch" } else { "baseline" };
    let w = args.watchers;
    let batch = args.batch;
    let secs = ctx.duration.as_secs_f64();
    let capacity = (args.event_rate * secs * 1.25) as usize + batch + 16;
    let flow_id = ctx.id("wf");
    let run_id = match &endpoint {
        Endpoint::Hub => ctx.id("run"),
        Endpoint::Baseline(_) => ctx.id("baseline"),
    };
    let engine = match &endpoint {
        Endpoint::Hub => Engine::Hub {
            http: reqwest::Client::new(),
            url: format!("{}/v1/runs/{run_id}/events", http_base(ctx.targets.url(0))),
            token: ctx.tokens.service(&ctx.id("engine"))?,
        },
        Endpoint::Baseline(server) => Engine::Baseline(server),
    };
    let shared = Arc::new(WatchShared {
        clock: ctx.clock,
        engine_log: SendLog::with_capacity(capacity),
        ready: AtomicU64::new(0),
        failures: Failures::default(),
        finished: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        deliveries_tl: ctx.timeline(),
        last_delivery_us: AtomicU64::new(0),
        stop: watch::Sender::new(false),
    });
    let start_event = || event("start".into(), RunEventKind::RunStarted, &flow_id, None);
    if hub {
        // The run must exist before the hub accepts subscribe_run.
        if let Err((status, why)) = engine.post(vec![start_event()]).await {
            return Err(if matches!(status, 404 | 405) {
                Error::Unsupported(format!(
                    "POST /v1/runs/{{run_id}}/events answered HTTP {status}: this hub has no run ingest yet ({why})"
                ))
            } else {
                Error::hub(format!("posting run.started: HTTP {status}: {why}"))
            });
        }
    }
    info!(
        workload = name,
        watchers = w,
        rate = args.event_rate,
        batch,
        "watch: connecting"
    );

    let bar = ctx.progress.bar(name);
    bar.phase("connect", w as u64);
    let sources = SourcePool::new(ctx.source_addrs, w);
    let viewer = ctx
        .tokens
        .user(&ctx.id("watcher"), &[(flow_id.as_str(), Role::Viewer)]);
    let ramp_start = Instant::now();
    let hard_stop = ramp_start + ctx.ramp_up + SETUP_TIMEOUT + ctx.duration + ctx.settle_timeout;
    let tasks: Vec<_> = (0..w)
        .map(|i| {
            let url = match &endpoint {
                Endpoint::Hub => format!("{}/v1/ws?token={viewer}", ctx.targets.url(i)),
                Endpoint::Baseline(server) => format!("{}/", server.url()),
            };
            let shared = shared.clone();
            let run_id = run_id.clone();
            let source = sources.next();
            let at = ramp_start + ctx.ramp_slot(i, w);
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                watch_run(shared, i, url, run_id, source, SETUP_TIMEOUT, hard_stop).await
            })
        })
        .collect();
    let connect_deadline = ramp_start + ctx.ramp_up + SETUP_TIMEOUT + Duration::from_secs(5);
    loop {
        let done = shared.ready.load(Ordering::Relaxed) + shared.failures.count();
        bar.set(done);
        if done >= w as u64 || Instant::now() >= connect_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = shared.ready.load(Ordering::Relaxed);
    let post_failures = Failures::default();
    if !hub {
        if let Err((_, why)) = engine.post(vec![start_event()]).await {
            post_failures.add(why);
        }
    }

    // The load.
    let mut rtt = Latency::new();
    let posted_tl = ctx.timeline();
    let mut posted = 0u64;
    let start = Instant::now() + Duration::from_millis(100);
    let load_start_s = ctx.clock.at_us(start.into_std()) as f64 / 1e6;
    let first_post_us = ctx.clock.at_us(start.into_std());
    let end = start + ctx.duration;
    bar.phase("load", ctx.duration.as_secs().max(1));
    let period = Duration::from_secs_f64(batch as f64 / args.event_rate);
    let mut ticks = tokio::time::interval_at(start, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut k = 0u64;
    let mut shown = Instant::now();
    loop {
        ticks.tick().await;
        if Instant::now() >= end || k + batch as u64 > shared.engine_log.capacity() {
            break;
        }
        let t = ctx.clock.now_us();
        let events: Vec<RunEventInput> = (1..=batch as u64)
            .map(|j| {
                let id = k + j;
                shared.engine_log.record(id, t);
                event(
                    format!("e{id}"),
                    RunEventKind::Log,
                    &flow_id,
                    Some(format!("load test log line {id}")),
                )
            })
            .collect();
        k += batch as u64;
        let sent = Instant::now();
        match engine.post(events).await {
            Ok(_) => {
                posted += batch as u64;
                posted_tl.add(t, batch as u64);
            }
            Err((status, why)) => post_failures.add(format!("HTTP {status}: {why}")),
        }
        if hub {
            rtt.record(sent.elapsed().as_micros() as u64);
        }
        if shown.elapsed() >= Duration::from_millis(250) {
            shown = Instant::now();
            bar.set(start.elapsed().as_secs());
            bar.message(format!(
                "{posted} events, {} deliveries",
                shared.deliveries.load(Ordering::Relaxed)
            ));
        }
    }
    let final_seq = match engine
        .post(vec![event(
            "finish".into(),
            RunEventKind::RunFinished,
            &flow_id,
            None,
        )])
        .await
    {
        Ok(seq) => seq,
        Err((status, why)) => {
            post_failures.add(format!("run.finished: HTTP {status}: {why}"));
            0
        }
    };

    // Settle: every watcher reaches run.finished.
    bar.phase("settle", ready);
    let deadline = Instant::now() + ctx.settle_timeout;
    loop {
        let finished = shared.finished.load(Ordering::Relaxed);
        bar.set(finished);
        if finished >= ready || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shared.stop.send_replace(true);
    let results: Vec<WatcherResult> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .filter_map(|r| r.ok().flatten())
        .collect();
    bar.finish(format!("{posted} events"));

    // Report.
    let mut latency = Latency::new();
    let (mut gaps, mut dups, mut resumes, mut errors, mut complete) = (0, 0, 0, 0, 0u64);
    for r in &results {
        latency.merge(&r.latency);
        gaps += r.gaps;
        dups += r.duplicates;
        resumes += r.resumes;
        errors += r.errors;
        if r.finished && r.last_seq == final_seq && r.gaps == 0 && r.duplicates == 0 {
            complete += 1;
        }
    }
    let deliveries = shared.deliveries.load(Ordering::Relaxed);
    let last_us = shared.last_delivery_us.load(Ordering::Relaxed);
    let window = last_us.saturating_sub(first_post_us) as f64 / 1e6;
    let throughput = if window > 0.0 {
        deliveries as f64 / window
    } else {
        0.0
    };
    let mut section = Section::new(name);
    section.value("watchers connected", ready as f64, format!("of {w}"));
    section.value("log events posted", posted as f64, "");
    section.value("event rate", round1(posted as f64 / secs), "events/s");
    section.value("events per post", batch as f64, "");
    section.value("deliveries", deliveries as f64, "log events received");
    section.value(
        "deliveries expected",
        (posted * ready) as f64,
        "posted × watchers",
    );
    section.value(
        "offered fan-out",
        round1(posted as f64 * ready as f64 / secs),
        "msgs/s",
    );
    section.value(THROUGHPUT, round1(throughput), "msgs/s");
    section.value("run last seq", final_seq as f64, "");
    section.value("resumes (lagging watchers)", resumes as f64, "");
    section.value("gaps", gaps as f64, "");
    section.value("duplicates", dups as f64, "");
    section.value("error frames", errors as f64, "");
    section
        .latencies
        .push(latency.summary(if hub { HUB_DELIVERY } else { BASELINE_DELIVERY }));
    if hub {
        section.latencies.push(rtt.summary(POST_RTT));
    }
    section.series.push(shared.deliveries_tl.series(
        "deliveries",
        "per second",
        load_start_s as usize,
    ));
    section
        .series
        .push(posted_tl.series("events posted", "per second", load_start_s as usize));
    let mut checks = vec![Check::new(
        format!("{name}: watchers connected"),
        ready == w as u64,
        format!(
            "{ready}/{w} got run_state; failures: {}",
            shared.failures.describe()
        ),
    )];
    if hub {
        checks.push(Check::new(
            "watch: engine posts accepted",
            post_failures.count() == 0,
            format!("failed posts: {}", post_failures.describe()),
        ));
        checks.push(Check::new(
            "watch: every event delivered once, in order",
            complete == ready && final_seq > 0,
            format!(
                "{complete}/{ready} watchers received seq 1..={final_seq} exactly once (gaps {gaps}, duplicates {dups}, resumes {resumes})"
            ),
        ));
    } else {
        section.note(
            "the baseline has no resume: a connection that falls 4096 frames behind loses frames (counted as lagged)",
        );
    }
    Ok(Outcome {
        sections: vec![section],
        checks,
    })
}

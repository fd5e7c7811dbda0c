//! `edit`: E editors on F flows, each making typed edits at R/s for D seconds.
//!
//! # What is measured
//! **edit → every other editor of the flow applied it**, without ever reading whole
//! documents: editor `i` owns one node (`ed{i}`) and moves it to `x = seq`, its edit
//! sequence number, recording the send time of `seq` in an in-process table
//! ([`SendLog`]). Every editor also observes: on each change notification
//! ([`FlowHandle::changed`]) it reads only the other editors' nodes
//! (`with_doc(|d| d.node(id))`) and, for every sequence number up to the `x` it
//! sees, records arrival − send. An `x` that jumps by several counts every number it
//! covers (editor `j`'s changes are causally ordered, so seeing `x = s` means every
//! edit before `s` was applied too). Latencies are split into same-node and
//! cross-node by the hub node each session's `welcome` named.
//!
//! Also measured: edit → durable `ack` from the hub, and edits and applies per second.
//!
//! # Placement
//! Editor `i` edits flow `i mod F`; the `k`-th editor of flow `f` connects to target
//! `(f + k) mod T`, so with several targets every flow has editors on every node.
//!
//! # End
//! When the load stops, the [`super::convergence`] check waits
//! (bounded) until every editor's heads match, then compares every replica's JSON,
//! the hubs' `GET /v1/flows/{id}` and each editor's last written position.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flowhub_client::{Client, ClientError, EditTicket, FlowHandle, NewNode, Position};
use flowhub_protocol::Role;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info};

use super::convergence::{self, Replica};
use super::{poll_once, round1, Ctx, Failures, Outcome};
use crate::cli::EditArgs;
use crate::clock::SendLog;
use crate::error::{Error, Result};
use crate::report::{Check, Section};
use crate::stats::{Latency, Timeline};

/// Connect + subscribe + first edit acked, per editor.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

pub const SAME_NODE: &str = "edit → peer applied (same node)";
pub const CROSS_NODE: &str = "edit → peer applied (cross node)";
pub const ACK: &str = "edit → hub ack";

/// One editor's fixed facts and what others need to know about it.
struct Slot {
    flow: usize,
    target: usize,
    node_id: String,
    log: SendLog,
    /// The hub node serving this editor (from `welcome`).
    hub_node: OnceLock<String>,
    /// Last sequence number sent.
    sent: AtomicU64,
    ready: AtomicBool,
}

struct Shared {
    ctx: Arc<Ctx>,
    flow_ids: Vec<String>,
    slots: Vec<Slot>,
    /// Editors per flow.
    members: Vec<Vec<usize>>,
    rate: f64,
    start: watch::Sender<Option<Instant>>,
    stop_observing: watch::Sender<bool>,
    connected: AtomicU64,
    failures: Failures,
    sent_total: AtomicU64,
    observed_total: AtomicU64,
    acked_total: AtomicU64,
    ack_failures: Failures,
    sent_tl: Timeline,
    observed_tl: Timeline,
}

/// A connected editor after its load, kept for the convergence check.
struct Editor {
    index: usize,
    client: Client,
    flow: FlowHandle,
    observer: JoinHandle<Observed>,
    acker: JoinHandle<Latency>,
}

#[derive(Default)]
struct Observed {
    same: Latency,
    cross: Latency,
}

pub fn validate(args: &EditArgs) -> Result<()> {
    if args.editors == 0 || args.flows == 0 {
        return Err(Error::usage("--editors and --flows must be at least 1"));
    }
    if !(args.edit_rate > 0.0 && args.edit_rate <= 1000.0) {
        return Err(Error::usage("--edit-rate must be in (0, 1000] edits/s"));
    }
    Ok(())
}

pub async fn run(ctx: Arc<Ctx>, args: &EditArgs) -> Result<Outcome> {
    validate(args)?;
    let n = args.editors;
    let flows = args.flows.min(n);
    let targets = ctx.targets.len();
    let capacity = (args.edit_rate * ctx.duration.as_secs_f64() * 1.25) as usize + 16;
    let flow_ids: Vec<String> = (0..flows).map(|k| ctx.id(&format!("f{k}"))).collect();
    let mut members = vec![Vec::new(); flows];
    let slots: Vec<Slot> = (0..n)
        .map(|i| {
            let flow = i % flows;
            let rank = i / flows;
            members[flow].push(i);
            Slot {
                flow,
                target: (flow + rank) % targets,
                node_id: format!("ed{i}"),
                log: SendLog::with_capacity(capacity),
                hub_node: OnceLock::new(),
                sent: AtomicU64::new(0),
                ready: AtomicBool::new(false),
            }
        })
        .collect();
    let shared = Arc::new(Shared {
        flow_ids,
        slots,
        members,
        rate: args.edit_rate,
        start: watch::Sender::new(None),
        stop_observing: watch::Sender::new(false),
        connected: AtomicU64::new(0),
        failures: Failures::default(),
        sent_total: AtomicU64::new(0),
        observed_total: AtomicU64::new(0),
        acked_total: AtomicU64::new(0),
        ack_failures: Failures::default(),
        sent_tl: ctx.timeline(),
        observed_tl: ctx.timeline(),
        ctx: ctx.clone(),
    });
    info!(
        editors = n,
        flows,
        rate = args.edit_rate,
        "edit: connecting"
    );

    if args.flow_nodes > 0 {
        seed_flows(&shared, args.flow_nodes).await?;
    }

    // Connect, subscribe, create each editor's node.
    let bar = ctx.progress.bar("edit");
    bar.phase("connect", n as u64);
    let ramp_start = Instant::now();
    let tasks: Vec<JoinHandle<Option<Editor>>> = (0..n)
        .map(|i| tokio::spawn(editor(shared.clone(), i, ramp_start)))
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

    // The load.
    let start = Instant::now() + Duration::from_millis(100);
    let load_start_s = ctx.clock.at_us(start.into_std()) as f64 / 1e6;
    shared.start.send_replace(Some(start));
    let end = start + ctx.duration;
    bar.phase("load", ctx.duration.as_secs().max(1));
    while Instant::now() < end {
        bar.set(start.elapsed().as_secs());
        bar.message(format!(
            "{} edits, {} applies seen",
            shared.sent_total.load(Ordering::Relaxed),
            shared.observed_total.load(Ordering::Relaxed)
        ));
        tokio::time::sleep(Duration::from_millis(250).min(end - Instant::now())).await;
    }
    let mut editors = Vec::new();
    for task in tasks {
        if let Ok(Some(e)) = task.await {
            editors.push(e);
        }
    }
    let sent = shared.sent_total.load(Ordering::Relaxed);
    info!(sent, "edit: load done; checking convergence");

    // Convergence.
    bar.phase("converge", flows as u64);
    bar.message(String::new());
    let deadline = Instant::now() + ctx.settle_timeout;
    let mut per_flow: Vec<Vec<Replica>> = (0..flows).map(|_| Vec::new()).collect();
    for e in &editors {
        let slot = &shared.slots[e.index];
        per_flow[slot.flow].push(Replica {
            label: format!("editor {}", e.index),
            flow: e.flow.clone(),
            owned_node: Some((
                slot.node_id.clone(),
                slot.sent.load(Ordering::Relaxed) as f64,
            )),
        });
    }
    let hubs: Vec<String> = ctx.targets.all().to_vec();
    let checker = ctx.tokens.user(
        &ctx.id("checker"),
        &shared
            .flow_ids
            .iter()
            .map(|f| (f.as_str(), Role::Viewer))
            .collect::<Vec<_>>(),
    );
    let checks = per_flow
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.is_empty())
        .map(|(f, replicas)| {
            convergence::check_flow(&shared.flow_ids[f], replicas, &hubs, &checker, deadline)
        });
    let verdicts = futures_util::future::join_all(checks).await;
    bar.set(flows as u64);

    // Stop observing; collect histograms.
    shared.stop_observing.send_replace(true);
    let mut observed = Observed::default();
    let mut acks = Latency::new();
    for e in &mut editors {
        if let Ok(o) = tokio::time::timeout(Duration::from_secs(10), &mut e.observer).await {
            if let Ok(o) = o {
                observed.same.merge(&o.same);
                observed.cross.merge(&o.cross);
            }
        } else {
            e.observer.abort();
        }
        if let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(10), &mut e.acker).await {
            acks.merge(&a);
        } else {
            e.acker.abort();
        }
    }
    // Read off the replicas (which converged with the hubs above), so that seeding
    // that wrote nothing shows.
    let smallest_flow = editors
        .iter()
        .map(|e| e.flow.snapshot().nodes.len())
        .min()
        .unwrap_or(0);
    futures_util::future::join_all(editors.iter().map(|e| e.client.close())).await;
    bar.finish(format!("{sent} edits"));

    // Report.
    let expected: u64 = shared
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
    let observed_n = shared.observed_total.load(Ordering::Relaxed);
    let acked = shared.acked_total.load(Ordering::Relaxed);
    let hub_nodes: BTreeSet<&String> = shared
        .slots
        .iter()
        .filter_map(|s| s.hub_node.get())
        .collect();
    let secs = ctx.duration.as_secs_f64();

    let mut section = Section::new("edit");
    section.value("editors connected", connected as f64, format!("of {n}"));
    section.value("flows", flows as f64, "");
    section.value("hub nodes", hub_nodes.len() as f64, "");
    section.value("nodes seeded per flow", args.flow_nodes as f64, "");
    section.value(
        "nodes in the smallest flow after the load",
        smallest_flow as f64,
        "",
    );
    section.value(
        "edits planned",
        (args.edit_rate * secs * connected as f64).floor(),
        "",
    );
    section.value("edits sent", sent as f64, "");
    section.value("edits acked", acked as f64, "");
    section.value("edit throughput", round1(sent as f64 / secs), "edits/s");
    section.value("applies observed", observed_n as f64, "");
    section.value("applies expected", expected as f64, "");
    section.value(
        "apply throughput",
        round1(observed_n as f64 / secs),
        "applies/s",
    );
    let same = observed.same.summary(SAME_NODE);
    let cross = observed.cross.summary(CROSS_NODE);
    section.latencies.push(same);
    if hub_nodes.len() > 1 || cross.count > 0 {
        section.latencies.push(cross);
    }
    section.latencies.push(acks.summary(ACK));
    section.series.push(
        shared
            .sent_tl
            .series("edits sent", "per second", load_start_s as usize),
    );
    section.series.push(shared.observed_tl.series(
        "applies observed",
        "per second",
        load_start_s as usize,
    ));

    let mut checks = vec![
        Check::new(
            "edit: editors connected",
            connected == n as u64,
            format!(
                "{connected}/{n} connected; failures: {}",
                shared.failures.describe()
            ),
        ),
        Check::new(
            "edit: counts add up",
            observed_n == expected && acked == sent,
            format!(
                "applies observed {observed_n} / expected {expected}; acked {acked} / sent {sent}; ack failures: {}",
                shared.ack_failures.describe()
            ),
        ),
    ];
    let problems: Vec<String> = verdicts
        .iter()
        .flat_map(|v| {
            v.problems
                .iter()
                .map(move |p| format!("{}: {p}", v.flow_id))
        })
        .collect();
    let converged = problems.is_empty() && !verdicts.is_empty();
    let detail = if converged {
        let worst = verdicts.iter().map(|v| v.settle_ms).max().unwrap_or(0);
        format!(
            "{} flows: every replica, the hub's GET /v1/flows and every editor's last position agree (settled within {worst} ms)",
            verdicts.len()
        )
    } else if verdicts.is_empty() {
        "no flow had a connected editor".into()
    } else {
        let shown: Vec<&str> = problems.iter().take(4).map(String::as_str).collect();
        format!("{} problem(s): {}", problems.len(), shown.join("; "))
    };
    section.value("convergence", if converged { 1.0 } else { 0.0 }, "1 = PASS");
    checks.push(Check::new("convergence", converged, detail));
    debug!(?hub_nodes, "edit: done");
    Ok(Outcome {
        sections: vec![section],
        checks,
    })
}

/// Writes `nodes` nodes into every flow before the editors join: one client per
/// flow, one change, acknowledged (stored) before the load starts.
async fn seed_flows(shared: &Shared, nodes: usize) -> Result<()> {
    let ctx = &shared.ctx;
    info!(nodes, flows = shared.flow_ids.len(), "edit: seeding flows");
    for (k, flow_id) in shared.flow_ids.iter().enumerate() {
        let seed = async {
            let token = ctx
                .tokens
                .user(&ctx.id(&format!("seed{k}")), &[(flow_id, Role::Editor)]);
            let client = Client::connect(ctx.targets.url(k % ctx.targets.len()), &token).await?;
            let flow = client.subscribe(flow_id).await?;
            let (_, ticket) = flow
                .edit(|d| {
                    for j in 0..nodes {
                        let at = Position::new((j % 40) as f64 * 200.0, (j / 40) as f64 * 120.0);
                        d.add_node(
                            NewNode::new("action", format!("step {j}"), at)
                                .with_id(format!("seed{j}")),
                        )?;
                    }
                    Ok(())
                })
                .await?;
            flow.wait_acked(&ticket, SETUP_TIMEOUT).await?;
            Ok::<_, ClientError>(())
        };
        match tokio::time::timeout(SETUP_TIMEOUT, seed).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Hub(format!("seeding flow {k}: {e}"))),
            Err(_) => return Err(Error::Hub(format!("seeding flow {k} timed out"))),
        }
    }
    Ok(())
}

/// One editor: connect, subscribe, create its node, then edit at the rate until the
/// end of the load. Observing and ack tracking run in their own tasks.
async fn editor(shared: Arc<Shared>, i: usize, ramp_start: Instant) -> Option<Editor> {
    let ctx = &shared.ctx;
    let slot = &shared.slots[i];
    let n = shared.slots.len();
    tokio::time::sleep_until(ramp_start + ctx.ramp_slot(i, n)).await;
    let flow_id = &shared.flow_ids[slot.flow];
    let setup = async {
        let token = ctx
            .tokens
            .user(&ctx.id(&format!("ed{i}")), &[(flow_id, Role::Editor)]);
        let client = Client::connect(ctx.targets.url(slot.target), &token).await?;
        let flow = client.subscribe(flow_id).await?;
        let (_, ticket) = flow
            .edit(|d| {
                d.add_node(
                    NewNode::new(
                        "action",
                        format!("editor {i}"),
                        Position::new(0.0, i as f64),
                    )
                    .with_id(slot.node_id.clone()),
                )
            })
            .await?;
        flow.wait_acked(&ticket, SETUP_TIMEOUT).await?;
        Ok::<_, ClientError>((client, flow))
    };
    let (client, flow) = match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            shared.failures.add(format!("editor {i}: {e}"));
            return None;
        }
        Err(_) => {
            shared.failures.add(format!("editor {i}: setup timed out"));
            return None;
        }
    };
    let _ = slot.hub_node.set(client.welcome().node_id.clone());
    slot.ready.store(true, Ordering::Release);
    shared.connected.fetch_add(1, Ordering::Relaxed);

    let mut start_rx = shared.start.subscribe();
    let wait = ctx.ramp_up + SETUP_TIMEOUT * 2;
    let start = match tokio::time::timeout(wait, start_rx.wait_for(|s| s.is_some())).await {
        Ok(Ok(s)) => s.unwrap_or_else(Instant::now),
        _ => Instant::now(),
    };
    let end = start + ctx.duration;
    let ack_deadline = end + ctx.settle_timeout;
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let acker = tokio::spawn(ack_loop(
        shared.clone(),
        flow.clone(),
        i,
        ack_rx,
        ack_deadline,
    ));
    let observer = tokio::spawn(observe(shared.clone(), i, flow.clone(), client.clone()));

    let period = Duration::from_secs_f64(1.0 / shared.rate);
    // Editors are spread over the period so that their edits do not arrive in bursts.
    let first = start + period.mul_f64(i as f64 / n as f64);
    let mut ticks = tokio::time::interval_at(first, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let y = i as f64;
    let mut seq = 0u64;
    loop {
        ticks.tick().await;
        if Instant::now() >= end || seq >= slot.log.capacity() {
            break;
        }
        let next = seq + 1;
        let t = ctx.clock.now_us();
        slot.log.record(next, t);
        match flow
            .edit(|d| d.move_node(&slot.node_id, Position::new(next as f64, y)))
            .await
        {
            Ok((_, ticket)) => {
                seq = next;
                slot.sent.store(seq, Ordering::Release);
                shared.sent_total.fetch_add(1, Ordering::Relaxed);
                shared.sent_tl.add(t, 1);
                let _ = ack_tx.send((t, ticket));
            }
            Err(e) => {
                shared.failures.add(format!("editor {i}, edit {next}: {e}"));
                break;
            }
        }
    }
    drop(ack_tx);
    Some(Editor {
        index: i,
        client,
        flow,
        observer,
        acker,
    })
}

/// Waits for the hub's ack of every edit, in order.
async fn ack_loop(
    shared: Arc<Shared>,
    flow: FlowHandle,
    i: usize,
    mut rx: mpsc::UnboundedReceiver<(u64, EditTicket)>,
    deadline: Instant,
) -> Latency {
    let mut latency = Latency::new();
    while let Some((sent_us, ticket)) = rx.recv().await {
        let left = deadline.saturating_duration_since(Instant::now());
        let acked = if left.is_zero() {
            Err(ClientError::Timeout("ack"))
        } else {
            flow.wait_acked(&ticket, left).await
        };
        match acked {
            Ok(()) => {
                latency.record(shared.ctx.clock.now_us().saturating_sub(sent_us));
                shared.acked_total.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => shared.ack_failures.add(format!("editor {i}: {e}")),
        }
    }
    latency
}

/// Observes the other editors of the flow until told to stop.
async fn observe(shared: Arc<Shared>, i: usize, flow: FlowHandle, client: Client) -> Observed {
    let ctx = &shared.ctx;
    let me = &shared.slots[i];
    let others: Vec<usize> = shared.members[me.flow]
        .iter()
        .copied()
        .filter(|&j| j != i && shared.slots[j].ready.load(Ordering::Acquire))
        .collect();
    let my_node = me.hub_node.get();
    let same: Vec<bool> = others
        .iter()
        .map(|&j| shared.slots[j].hub_node.get() == my_node)
        .collect();
    let ids: Vec<String> = others
        .iter()
        .map(|&j| shared.slots[j].node_id.clone())
        .collect();
    let mut last = vec![0u64; others.len()];
    let mut out = Observed::default();
    let mut stop = shared.stop_observing.subscribe();
    let hard_stop = Instant::now() + ctx.duration + ctx.settle_timeout + Duration::from_secs(60);
    loop {
        let next = flow.changed();
        tokio::pin!(next);
        // Subscribe to change notifications before reading, so a change that lands
        // during the read is not missed.
        let ready = poll_once(next.as_mut()).await;
        let stopping = *stop.borrow_and_update();
        let xs: Vec<Option<f64>> = flow.with_doc(|d| {
            ids.iter()
                .map(|id| d.node(id).map(|n| n.position.x))
                .collect()
        });
        let now = ctx.clock.now_us();
        let mut seen = 0u64;
        for (k, x) in xs.into_iter().enumerate() {
            let Some(x) = x.filter(|x| x.is_finite() && *x >= 1.0) else {
                continue;
            };
            let log = &shared.slots[others[k]].log;
            let seq = (x as u64).min(log.capacity());
            while last[k] < seq {
                last[k] += 1;
                if let Some(sent) = log.get(last[k]) {
                    let hist = if same[k] {
                        &mut out.same
                    } else {
                        &mut out.cross
                    };
                    hist.record(now.saturating_sub(sent));
                    seen += 1;
                }
            }
        }
        if seen > 0 {
            shared.observed_total.fetch_add(seen, Ordering::Relaxed);
            shared.observed_tl.add(now, seen);
        }
        if stopping || client.is_closed() || Instant::now() >= hard_stop {
            break;
        }
        if !ready {
            tokio::select! {
                _ = &mut next => {}
                _ = stop.changed() => {}
                _ = tokio::time::sleep_until(hard_stop) => {}
            }
        }
    }
    out
}

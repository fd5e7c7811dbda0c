//! `cluster`: what a cluster costs its shared services, idle and under edits.
//!
//! Opens `--flows` flows with `--sessions-per-flow` idle subscribed sessions each,
//! spread over the targets so that every flow is open on that many nodes (session `j`
//! of flow `k` connects to target `(k + j·T/S) mod T`), plus `--editors` editing
//! sessions on distinct flows spread over the nodes, each connected to a node none of
//! its flow's idle sessions is on (while there is one), so an edited flow is open on
//! `S + 1` nodes. Then two
//! measured windows:
//!
//! 1. **idle** (`--idle-duration`): nobody edits. After a settle of 5 s (the heads
//!    announcements of the editors' first edits end within ~3 s).
//! 2. **edit** (`--duration`): every editor moves its node `--edit-rate` times a
//!    second; edit → ack is timed at the client.
//!
//! At the start and end of each window it reads every node's `/metrics` (process CPU
//! and RSS, bus messages, store appends and group commits), every Redis server's
//! `INFO all` (`--redis host:port,…`: commands, network bytes, PUBLISH/SPUBLISH calls,
//! CPU) and, with `--database-url`, PostgreSQL's statistics (transactions and inserted
//! rows of the database, the `flow_changes` table's inserts and size). The report has
//! one section per window with the rates, per node and per edit.
//!
//! Idle sessions are raw WebSockets that keep reading (so they answer pings and take
//! the change frames fanned out to them) and never write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowhub_client::{Client, ClientError, EditTicket, FlowHandle, NewNode, Position};
use flowhub_protocol::Role;
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tracing::{info, warn};

use super::{round1, Ctx, Failures, Outcome};
use crate::cli::ClusterArgs;
use crate::error::{Error, Result};
use crate::metrics::{self, Scrape};
use crate::net::{self, SourcePool};
use crate::report::{Check, Section};
use crate::stats::Latency;

const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// After setup, before the idle window: the heads announcements that follow the
/// editors' first edits (3 within ~2 s) are over.
const SETTLE: Duration = Duration::from_secs(5);
/// The bound the idle window checks, per node: idle flows publish nothing; what is
/// left is presence and membership traffic, independent of the number of flows.
const IDLE_PUBLISHES_PER_NODE_MAX: f64 = 1.0;

pub const CPU: &str = "flowhub_process_cpu_seconds_total";
pub const RSS: &str = metrics::RSS;
pub const PUBLISHED: &str = "flowhub_redis_published_total";
pub const RECEIVED: &str = "flowhub_redis_received_total";
pub const EDITS: &str = "flowhub_edits_applied_total";
pub const APPENDS: &str = "flowhub_store_appends_total";
pub const BATCHES: &str = "flowhub_store_batches_total";
pub const ROWS: &str = "flowhub_store_changes_committed_total";
pub const FLOWS_OPEN: &str = "flowhub_flows_open";

pub fn validate(args: &ClusterArgs) -> Result<()> {
    if args.flows == 0 || args.sessions_per_flow == 0 || args.connect_concurrency == 0 {
        return Err(Error::usage(
            "--flows, --sessions-per-flow and --connect-concurrency must be at least 1",
        ));
    }
    if args.editors > args.flows {
        return Err(Error::usage(
            "--editors must not exceed --flows (one flow each)",
        ));
    }
    if !(args.edit_rate > 0.0 && args.edit_rate <= 100.0) {
        return Err(Error::usage("--edit-rate must be in (0, 100]"));
    }
    Ok(())
}

/// `INFO all` of one Redis server: `key → value` for numeric fields, and
/// `cmdstat_<cmd>.calls` for the command statistics.
pub type RedisInfo = HashMap<String, f64>;

/// Reads `INFO all` over a plain RESP connection (`host:port` or `redis://host:port`).
pub async fn redis_info(addr: &str) -> Result<RedisInfo> {
    let addr = addr
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(&addr).await?;
        stream
            .write_all(b"*2\r\n$4\r\nINFO\r\n$3\r\nall\r\n")
            .await?;
        let mut reader = BufReader::new(stream);
        let mut header = String::new();
        reader.read_line(&mut header).await?;
        let len: usize = header
            .trim()
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                std::io::Error::other(format!("unexpected INFO reply `{}`", header.trim()))
            })?;
        let mut body = vec![0; len];
        reader.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&body).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| Error::hub(format!("redis {addr}: INFO timed out")))?
        .map_err(|e| Error::io(format!("redis {addr}: INFO"), e))?;
    Ok(parse_info(&text))
}

/// Parses `INFO` text (see [`RedisInfo`]).
pub fn parse_info(text: &str) -> RedisInfo {
    let mut out = RedisInfo::new();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        if let Some(cmd) = key.strip_prefix("cmdstat_") {
            for field in value.split(',') {
                if let Some((k, v)) = field.split_once('=') {
                    if let Ok(v) = v.parse::<f64>() {
                        out.insert(format!("cmdstat_{cmd}.{k}"), v);
                    }
                }
            }
        } else if let Ok(v) = value.parse::<f64>() {
            out.insert(key.to_owned(), v);
        }
    }
    out
}

/// PostgreSQL's view of the flowhub database (cumulative counters).
#[derive(Debug, Clone, Copy, Default)]
struct PgStats {
    xact_commit: f64,
    tup_inserted: f64,
    changes_inserted: f64,
    changes_bytes: f64,
    /// Rows the database's queries read: by index (`tup_fetched`) and returned by
    /// scans (`tup_returned`); the store watch's load shows here.
    tup_fetched: f64,
    tup_returned: f64,
}

async fn pg_stats(url: &str) -> Result<PgStats> {
    use sqlx::{Connection, Row};
    let query = async {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        // The statistics a backend collects reach the shared counters when it goes
        // idle (at most once a second; PostgreSQL 15+), so these lag by up to a
        // second or so: windows of 20 s or more keep that small.
        let row = sqlx::query(
            "SELECT
               (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())::float8,
               (SELECT tup_inserted FROM pg_stat_database WHERE datname = current_database())::float8,
               (SELECT coalesce(sum(n_tup_ins), 0) FROM pg_stat_user_tables WHERE relname = 'flow_changes')::float8,
               coalesce(pg_total_relation_size(to_regclass('flow_changes')), 0)::float8,
               (SELECT tup_fetched FROM pg_stat_database WHERE datname = current_database())::float8,
               (SELECT tup_returned FROM pg_stat_database WHERE datname = current_database())::float8",
        )
        .fetch_one(&mut conn)
        .await?;
        let stats = PgStats {
            xact_commit: row.try_get(0)?,
            tup_inserted: row.try_get(1)?,
            changes_inserted: row.try_get(2)?,
            changes_bytes: row.try_get(3)?,
            tup_fetched: row.try_get(4)?,
            tup_returned: row.try_get(5)?,
        };
        conn.close().await?;
        Ok::<_, sqlx::Error>(stats)
    };
    tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .map_err(|_| Error::hub("postgres statistics: timed out"))?
        .map_err(|e| Error::hub(format!("postgres statistics: {e}")))
}

/// Everything read at one instant.
struct Reading {
    at: Instant,
    nodes: Vec<Scrape>,
    redis: Vec<RedisInfo>,
    pg: Option<PgStats>,
}

async fn read_all(ctx: &Ctx, args: &ClusterArgs) -> Result<Reading> {
    let mut nodes = Vec::new();
    for t in ctx.targets.all() {
        nodes.push(metrics::scrape(t).await?);
    }
    let mut redis = Vec::new();
    for r in &args.redis {
        redis.push(redis_info(r).await?);
    }
    let pg = match &args.database_url {
        Some(url) => Some(pg_stats(url).await?),
        None => None,
    };
    Ok(Reading {
        at: Instant::now(),
        nodes,
        redis,
        pg,
    })
}

/// The difference of two readings as rates and per-edit costs, into `section`.
/// Returns (bus publishes per second per node, edits applied).
fn window(section: &mut Section, a: &Reading, b: &Reading) -> (f64, f64) {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
    let node = |s: &Scrape, k: &str| s.get(k).copied().unwrap_or(0.0);
    let nodes_delta = |k: &str| -> f64 {
        a.nodes
            .iter()
            .zip(&b.nodes)
            .map(|(x, y)| node(y, k) - node(x, k))
            .sum()
    };
    let redis_delta = |k: &str| -> f64 {
        a.redis
            .iter()
            .zip(&b.redis)
            .map(|(x, y)| y.get(k).copied().unwrap_or(0.0) - x.get(k).copied().unwrap_or(0.0))
            .sum()
    };
    let n = a.nodes.len().max(1) as f64;
    section.value("window", round1(secs), "s");
    let edits = nodes_delta(EDITS);
    section.value("edits applied (all nodes)", edits, "");
    section.value("edits applied per second", round1(edits / secs), "/s");

    // Nodes.
    let mut cpus = Vec::new();
    for (i, (x, y)) in a.nodes.iter().zip(&b.nodes).enumerate() {
        let cpu = (node(y, CPU) - node(x, CPU)) / secs * 100.0;
        cpus.push(cpu);
        section.value(format!("node {i} CPU"), round1(cpu), "% of a core");
        section.value(
            format!("node {i} RSS"),
            round1(node(y, RSS) / (1 << 20) as f64),
            "MiB",
        );
        section.value(format!("node {i} flows open"), node(y, FLOWS_OPEN), "");
        section.value(
            format!("node {i} sessions open"),
            node(y, metrics::SESSIONS),
            "",
        );
    }
    let cpu_sum: f64 = cpus.iter().sum();
    section.value("nodes CPU, sum", round1(cpu_sum), "% of a core");
    section.value(
        "nodes CPU, mean per node",
        round1(cpu_sum / n),
        "% of a core",
    );
    let rss: f64 = b.nodes.iter().map(|s| node(s, RSS)).sum();
    section.value(
        "nodes RSS, mean per node",
        round1(rss / n / (1 << 20) as f64),
        "MiB",
    );

    // The bus, from the nodes.
    let published = nodes_delta(PUBLISHED);
    let received = nodes_delta(RECEIVED);
    let per_node_publishes = published / secs / n;
    section.value(
        "bus publishes per second (all nodes)",
        round1(published / secs),
        "/s",
    );
    section.value(
        "bus publishes per second per node",
        (per_node_publishes * 100.0).round() / 100.0,
        "/s",
    );
    section.value(
        "bus deliveries per second (all nodes)",
        round1(received / secs),
        "/s",
    );
    if edits > 0.0 {
        section.value(
            "bus publishes per edit",
            (published / edits * 100.0).round() / 100.0,
            "",
        );
        section.value(
            "bus deliveries per edit",
            (received / edits * 100.0).round() / 100.0,
            "",
        );
    }

    // Redis.
    if !a.redis.is_empty() {
        let commands = redis_delta("total_commands_processed");
        let bytes_in = redis_delta("total_net_input_bytes");
        let bytes_out = redis_delta("total_net_output_bytes");
        let publish_calls =
            redis_delta("cmdstat_publish.calls") + redis_delta("cmdstat_spublish.calls");
        let cpu = redis_delta("used_cpu_user") + redis_delta("used_cpu_sys");
        section.value("redis servers", a.redis.len() as f64, "");
        section.value("redis commands per second", round1(commands / secs), "/s");
        section.value(
            "redis commands per second per node",
            round1(commands / secs / n),
            "/s",
        );
        section.value("redis bytes in per second", round1(bytes_in / secs), "B/s");
        section.value(
            "redis bytes out per second",
            round1(bytes_out / secs),
            "B/s",
        );
        section.value(
            "redis PUBLISH+SPUBLISH per second",
            round1(publish_calls / secs),
            "/s",
        );
        section.value(
            "redis CPU, sum of servers",
            round1(cpu / secs * 100.0),
            "% of a core",
        );
        for (i, (x, y)) in a.redis.iter().zip(&b.redis).enumerate() {
            let d = |k: &str| y.get(k).copied().unwrap_or(0.0) - x.get(k).copied().unwrap_or(0.0);
            section.value(
                format!("redis {i} CPU"),
                round1((d("used_cpu_user") + d("used_cpu_sys")) / secs * 100.0),
                "% of a core",
            );
            section.value(
                format!("redis {i} commands per second"),
                round1(d("total_commands_processed") / secs),
                "/s",
            );
        }
        if edits > 0.0 {
            section.value("redis commands per edit", round1(commands / edits), "");
            section.value(
                "redis bytes (in + out) per edit",
                round1((bytes_in + bytes_out) / edits),
                "B",
            );
        }
    }

    // The store, from the nodes (exact) and from PostgreSQL (lags up to ~1 s).
    let appends = nodes_delta(APPENDS);
    let batches = nodes_delta(BATCHES);
    let rows = nodes_delta(ROWS);
    section.value("store appends per second", round1(appends / secs), "/s");
    section.value(
        "store group commits per second",
        round1(batches / secs),
        "/s",
    );
    section.value("store change rows per second", round1(rows / secs), "/s");
    if let (Some(x), Some(y)) = (a.pg, b.pg) {
        section.value(
            "postgres transactions per second",
            round1((y.xact_commit - x.xact_commit) / secs),
            "/s",
        );
        section.value(
            "postgres rows inserted per second",
            round1((y.tup_inserted - x.tup_inserted) / secs),
            "/s",
        );
        section.value(
            "postgres flow_changes inserts per second",
            round1((y.changes_inserted - x.changes_inserted) / secs),
            "/s",
        );
        section.value(
            "postgres flow_changes growth per second",
            round1((y.changes_bytes - x.changes_bytes) / secs),
            "B/s",
        );
        section.value(
            "postgres rows fetched per second",
            round1((y.tup_fetched - x.tup_fetched) / secs),
            "/s",
        );
        section.value(
            "postgres rows returned by scans per second",
            round1((y.tup_returned - x.tup_returned) / secs),
            "/s",
        );
        section.value(
            "postgres transactions per second per node",
            round1((y.xact_commit - x.xact_commit) / secs / n),
            "/s",
        );
    }
    (per_node_publishes, edits)
}

struct Shared {
    ctx: Arc<Ctx>,
    sources: SourcePool,
    permits: Semaphore,
    connected: AtomicU64,
    failures: Failures,
    closed_early: Failures,
    stop: watch::Sender<bool>,
}

pub async fn run(ctx: Arc<Ctx>, args: &ClusterArgs) -> Result<Outcome> {
    validate(args)?;
    let t = ctx.targets.len();
    let f = args.flows;
    let s = args.sessions_per_flow;
    let sessions = f * s;
    let wanted_files = (sessions + args.editors) as u64 + 4096;
    let nofile = net::raise_nofile_limit(wanted_files);
    let flow_ids: Arc<Vec<String>> = Arc::new((0..f).map(|k| ctx.id(&format!("c{k}"))).collect());
    let shared = Arc::new(Shared {
        ctx: ctx.clone(),
        sources: SourcePool::new(ctx.source_addrs, sessions + args.editors),
        permits: Semaphore::new(args.connect_concurrency),
        connected: AtomicU64::new(0),
        failures: Failures::default(),
        closed_early: Failures::default(),
        stop: watch::Sender::new(false),
    });
    info!(
        flows = f,
        sessions,
        editors = args.editors,
        targets = t,
        nofile,
        "cluster: connecting"
    );
    let before_setup = read_all(&ctx, args).await?;

    // Idle sessions, interleaved so that every node fills at once.
    let stride = (t / s).max(1);
    let bar = ctx.progress.bar("cluster");
    bar.phase("connect", sessions as u64);
    let ramp_start = Instant::now();
    let mut tasks = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let (k, j) = (i / s, i % s);
        let target = (k + j * stride) % t;
        tasks.push(tokio::spawn(idle_session(
            shared.clone(),
            flow_ids[k].clone(),
            i,
            target,
            ramp_start + ctx.ramp_slot(i, sessions),
        )));
    }
    let connect_deadline =
        ramp_start + ctx.ramp_up + SETUP_TIMEOUT + Duration::from_secs_f64(sessions as f64 / 100.0);
    loop {
        let done = shared.connected.load(Ordering::Relaxed) + shared.failures.count();
        bar.set(done);
        if done >= sessions as u64 || Instant::now() >= connect_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connected = shared.connected.load(Ordering::Relaxed);
    let connect_s = ramp_start.elapsed().as_secs_f64();

    // Editors: one per flow, on distinct flows, on a node beside the flow's sessions.
    bar.phase("editors", args.editors as u64);
    let (start_tx, _) = watch::channel::<Option<Instant>>(None);
    let start_tx = Arc::new(start_tx);
    let acked = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let ack_failures = Arc::new(Failures::default());
    let editor_failures = Arc::new(Failures::default());
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<bool>();
    let mut editors = Vec::new();
    let step = f / args.editors.max(1);
    for e in 0..args.editors {
        // Distinct flows, spread over the nodes (`e % t` shifts within the step).
        let k = e * step + if step > t { e % t } else { 0 };
        // A node none of the flow's idle sessions is on (while there is one).
        let target = if stride > 1 { (k + 1) % t } else { (k + s) % t };
        editors.push(tokio::spawn(editor(EditorArgs {
            ctx: ctx.clone(),
            index: e,
            flow_id: flow_ids[k].clone(),
            target,
            rate: args.edit_rate,
            editors: args.editors,
            start: start_tx.subscribe(),
            ready: ready_tx.clone(),
            sent: sent.clone(),
            acked: acked.clone(),
            failures: editor_failures.clone(),
            ack_failures: ack_failures.clone(),
        })));
    }
    drop(ready_tx);
    let mut editors_ready = 0u64;
    while let Some(ok) = ready_rx.recv().await {
        editors_ready += u64::from(ok);
        bar.set(editors_ready);
    }
    let after_setup = read_all(&ctx, args).await?;

    let mut setup = Section::new("cluster: setup");
    setup.value("nodes", t as f64, "");
    setup.value("flows", f as f64, "");
    setup.value("idle sessions planned", sessions as f64, "");
    setup.value("idle sessions connected", connected as f64, "");
    setup.value("editors ready", editors_ready as f64, "");
    setup.value("connect phase", round1(connect_s), "s");
    setup.value("harness open-file limit", nofile as f64, "");
    setup.value("loopback source addresses", shared.sources.len() as f64, "");
    let flows_open: f64 = after_setup
        .nodes
        .iter()
        .map(|s| s.get(FLOWS_OPEN).copied().unwrap_or(0.0))
        .sum();
    setup.value("flow actors open (all nodes)", flows_open, "");
    let rss_before: f64 = before_setup
        .nodes
        .iter()
        .map(|s| s.get(RSS).copied().unwrap_or(0.0))
        .sum();
    let rss_after: f64 = after_setup
        .nodes
        .iter()
        .map(|s| s.get(RSS).copied().unwrap_or(0.0))
        .sum();
    if connected > 0 {
        setup.value(
            "node RSS per idle session (flow actors included)",
            ((rss_after - rss_before) / (connected + editors_ready) as f64).round(),
            "B",
        );
    }
    if flows_open > 0.0 {
        setup.value(
            "node RSS per open flow actor (sessions included)",
            ((rss_after - rss_before) / flows_open).round(),
            "B",
        );
    }

    // Idle window.
    bar.phase("idle", (SETTLE + args.idle_duration).as_secs());
    tokio::time::sleep(SETTLE).await;
    let idle_start = read_all(&ctx, args).await?;
    tokio::time::sleep(args.idle_duration).await;
    let idle_end = read_all(&ctx, args).await?;
    let mut idle = Section::new("cluster: idle");
    let (idle_publishes, _) = window(&mut idle, &idle_start, &idle_end);
    idle.value(
        "open flows per node (mean)",
        round1(flows_open / t as f64),
        "",
    );

    // Edit window.
    bar.phase("edit", ctx.duration.as_secs().max(1));
    let edit_start = read_all(&ctx, args).await?;
    start_tx.send_replace(Some(Instant::now()));
    let mut latency = Latency::new();
    let mut joined = Vec::new();
    for handle in editors {
        if let Ok(Some((l, flow, client))) = handle.await {
            latency.merge(&l);
            joined.push((flow, client));
        }
    }
    let edit_end = read_all(&ctx, args).await?;
    let mut edit = Section::new("cluster: edit");
    let (_, edits_applied) = window(&mut edit, &edit_start, &edit_end);
    let sent = sent.load(Ordering::Relaxed);
    let acked = acked.load(Ordering::Relaxed);
    edit.value("edits sent by the harness", sent as f64, "");
    edit.value("edits acked", acked as f64, "");
    edit.value(
        "offered edit rate",
        round1(args.editors as f64 * args.edit_rate),
        "/s",
    );
    edit.latencies.push(latency.summary("edit → ack (client)"));

    shared.stop.send_replace(true);
    bar.phase("close", sessions as u64);
    drop(joined);
    let close_deadline = Instant::now() + Duration::from_secs(60);
    for task in tasks {
        let left = close_deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, task).await.is_err() {
            break;
        }
    }
    bar.finish(format!("{connected} idle sessions, {acked} edits acked"));

    let mut checks = vec![
        Check::new(
            "cluster: all sessions held",
            connected == sessions as u64 && shared.closed_early.count() == 0,
            format!(
                "{connected}/{sessions} connected; failures: {}; closed early: {}",
                shared.failures.describe(),
                shared.closed_early.describe()
            ),
        ),
        Check::new(
            "cluster: every editor ready and every edit acked",
            editors_ready == args.editors as u64 && acked == sent && sent > 0,
            format!(
                "{editors_ready}/{} editors; {acked}/{sent} acked; editor failures: {}; ack failures: {}",
                args.editors,
                editor_failures.describe(),
                ack_failures.describe()
            ),
        ),
        Check::new(
            "cluster: idle bus traffic per node, not per flow",
            idle_publishes <= IDLE_PUBLISHES_PER_NODE_MAX,
            format!(
                "{idle_publishes:.2} bus publishes/s per node with {:.0} open flows per node (bound {IDLE_PUBLISHES_PER_NODE_MAX}/s)",
                flows_open / t as f64
            ),
        ),
    ];
    if edits_applied < sent as f64 * 0.99 {
        checks.push(Check::new(
            "cluster: the nodes counted the edits",
            false,
            format!("{edits_applied} applied for {sent} sent"),
        ));
    }
    if nofile < wanted_files {
        setup.note(format!(
            "the harness's open-file limit is {nofile} (wanted {wanted_files})"
        ));
    }
    idle.note(
        "CPU and RSS are each node's /metrics (from /proc/self); Redis figures are the sum over the servers given with --redis (INFO all); postgres figures come from pg_stat_database / pg_stat_user_tables of the flowhub database and lag by up to about a second",
    );
    Ok(Outcome {
        sections: vec![setup, idle, edit],
        checks,
    })
}

async fn idle_session(shared: Arc<Shared>, flow_id: String, i: usize, target: usize, at: Instant) {
    let ctx = &shared.ctx;
    tokio::time::sleep_until(at).await;
    let setup = async {
        let Ok(_permit) = shared.permits.acquire().await else {
            return Err(Error::hub("connect semaphore closed"));
        };
        let token = ctx.tokens.user(
            &ctx.id(&format!("cv{i}")),
            &[(flow_id.as_str(), Role::Viewer)],
        );
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let mut ws = net::connect(
            ctx.targets.url(target),
            &token,
            shared.sources.next(),
            SETUP_TIMEOUT,
        )
        .await?;
        net::welcome(&mut ws, deadline).await?;
        net::subscribe_flow(&mut ws, &flow_id, deadline).await?;
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
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

struct EditorArgs {
    ctx: Arc<Ctx>,
    index: usize,
    flow_id: String,
    target: usize,
    rate: f64,
    editors: usize,
    start: watch::Receiver<Option<Instant>>,
    ready: mpsc::UnboundedSender<bool>,
    sent: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    failures: Arc<Failures>,
    ack_failures: Arc<Failures>,
}

/// One editor: connect, subscribe, create its node; when the edit window starts, move
/// the node at the rate for `--duration`, then wait for the acks.
async fn editor(mut a: EditorArgs) -> Option<(Latency, FlowHandle, Client)> {
    let ctx = a.ctx.clone();
    let i = a.index;
    let node_id = format!("ce{i}");
    let setup = async {
        let token = ctx.tokens.user(
            &ctx.id(&format!("ce{i}")),
            &[(a.flow_id.as_str(), Role::Editor)],
        );
        let client = Client::connect(ctx.targets.url(a.target), &token).await?;
        let flow = client.subscribe(&a.flow_id).await?;
        let (_, ticket) = flow
            .edit(|d| {
                d.add_node(
                    NewNode::new(
                        "action",
                        format!("editor {i}"),
                        Position::new(0.0, i as f64),
                    )
                    .with_id(node_id.clone()),
                )
            })
            .await?;
        flow.wait_acked(&ticket, SETUP_TIMEOUT).await?;
        Ok::<_, ClientError>((client, flow))
    };
    let (client, flow) = match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            a.failures.add(format!("editor {i}: {e}"));
            let _ = a.ready.send(false);
            return None;
        }
        Err(_) => {
            a.failures.add(format!("editor {i}: setup timed out"));
            let _ = a.ready.send(false);
            return None;
        }
    };
    let _ = a.ready.send(true);
    drop(a.ready);
    let start = match a.start.wait_for(|s| s.is_some()).await {
        Ok(s) => s.unwrap_or_else(Instant::now),
        Err(_) => return None,
    };
    let end = start + ctx.duration;
    let period = Duration::from_secs_f64(1.0 / a.rate);
    // Spread over the period so that the edits do not arrive in bursts.
    let first = start + period.mul_f64(i as f64 / a.editors.max(1) as f64);
    let mut ticks = tokio::time::interval_at(first, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<(Instant, EditTicket)>();
    let acker = {
        let flow = flow.clone();
        let acked = a.acked.clone();
        let ack_failures = a.ack_failures.clone();
        let deadline = end + ctx.settle_timeout;
        tokio::spawn(async move {
            let mut latency = Latency::new();
            while let Some((sent_at, ticket)) = ack_rx.recv().await {
                let left = deadline.saturating_duration_since(Instant::now());
                match flow
                    .wait_acked(&ticket, left.max(Duration::from_millis(1)))
                    .await
                {
                    Ok(()) => {
                        latency.record(sent_at.elapsed().as_micros() as u64);
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => ack_failures.add(format!("editor {i}: {e}")),
                }
            }
            latency
        })
    };
    let mut seq = 0u64;
    loop {
        ticks.tick().await;
        if Instant::now() >= end {
            break;
        }
        seq += 1;
        let at = Instant::now();
        match flow
            .edit(|d| d.move_node(&node_id, Position::new(seq as f64, i as f64)))
            .await
        {
            Ok((_, ticket)) => {
                a.sent.fetch_add(1, Ordering::Relaxed);
                let _ = ack_tx.send((at, ticket));
            }
            Err(e) => {
                a.failures.add(format!("editor {i}, edit {seq}: {e}"));
                break;
            }
        }
    }
    drop(ack_tx);
    let latency = match acker.await {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "ack task failed");
            Latency::new()
        }
    };
    Some((latency, flow, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_info() {
        let info = parse_info(
            "# Stats\r\ntotal_commands_processed:42\r\ntotal_net_input_bytes:1000\r\nredis_version:7.0.15\r\n# Commandstats\r\ncmdstat_publish:calls=7,usec=70,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n",
        );
        assert_eq!(info["total_commands_processed"], 42.0);
        assert_eq!(info["total_net_input_bytes"], 1000.0);
        assert_eq!(info["cmdstat_publish.calls"], 7.0);
        assert!(!info.contains_key("redis_version"));
    }
}

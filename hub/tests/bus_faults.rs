//! Faults never stall the cluster (issue #10): a hung Redis does not hold back acks,
//! `/readyz` answers 503 quickly instead of hanging, replicas converge once Redis is
//! back, and a hung database fails appends within a bounded time instead of hanging.
//!
//! Both tests print their figures; run with `--nocapture` to see them.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowhub::{Hub, HubConfig};
use flowhub_client::{fetch_flow, Client, ClientError, FlowHandle, NewNode, Position};
use flowhub_protocol::Role;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

fn uniq(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn init_logs() {
    // WARN lines (bus unreachable, store timeouts) show with --nocapture.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,flowhub=info")
        .with_test_writer()
        .try_init();
}

/// A redis-server this test can freeze (SIGSTOP) and thaw (SIGCONT), or kill and
/// start again on the same port.
struct StallableRedis {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl StallableRedis {
    fn start() -> StallableRedis {
        Self::start_on(free_port(), tempfile::tempdir().unwrap())
    }

    fn start_on(port: u16, dir: tempfile::TempDir) -> StallableRedis {
        let mut child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed for this test");
        for _ in 0..100 {
            let ok = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "ping"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"));
            if ok {
                return StallableRedis {
                    port,
                    child,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("private redis-server did not start on port {port}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then a fresh server on the same port (nothing kept: `--save ""`).
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn restart(self) -> StallableRedis {
        let (port, dir) = (self.port, tempfile::tempdir().unwrap());
        drop(self);
        Self::start_on(port, dir)
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} redis-server");
    }
}

impl Drop for StallableRedis {
    fn drop(&mut self) {
        // A stopped process ignores SIGTERM until continued; SIGKILL works either way.
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hub_config(
    db: &str,
    redis: Option<String>,
    node_id: String,
    dir: &std::path::Path,
) -> HubConfig {
    HubConfig {
        redis_url: redis,
        node_id: Some(node_id),
        ..config(dir, Some(db.to_owned()))
    }
}

/// One edit: when it was sent and, once acknowledged, when.
#[derive(Clone, Copy)]
struct EditTiming {
    sent: Instant,
    acked: Option<Instant>,
}

type Timings = Arc<Mutex<Vec<EditTiming>>>;

/// Adds a node every `period` without waiting for acks (each ack is awaited by its own
/// task), so a stalled ack shows up as latency, not as a slower editor.
fn spawn_editor(
    flow: FlowHandle,
    who: String,
    period: Duration,
    stop: Arc<AtomicBool>,
    timings: Timings,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        let mut i = 0u32;
        while !stop.load(Ordering::SeqCst) {
            ticker.tick().await;
            let sent = Instant::now();
            let edit = flow
                .edit(|d| {
                    d.add_node(NewNode::new(
                        "action",
                        format!("{who}-{i}"),
                        Position {
                            x: f64::from(i),
                            y: 0.0,
                        },
                    ))
                })
                .await;
            i += 1;
            let Ok((_, ticket)) = edit else { continue };
            let index = {
                let mut t = timings.lock().unwrap();
                t.push(EditTiming { sent, acked: None });
                t.len() - 1
            };
            let (flow, timings) = (flow.clone(), timings.clone());
            tokio::spawn(async move {
                if flow
                    .wait_acked(&ticket, Duration::from_secs(60))
                    .await
                    .is_ok()
                {
                    timings.lock().unwrap()[index].acked = Some(Instant::now());
                }
            });
        }
    })
}

fn p99(mut v: Vec<Duration>) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
}

/// `GET /readyz`: the status, the body and how long the answer took.
async fn readyz(addr: std::net::SocketAddr) -> (Option<u16>, String, Duration) {
    let started = Instant::now();
    let result = reqwest::Client::new()
        .get(format!("http://{addr}/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match result {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            (Some(status), body, started.elapsed())
        }
        Err(e) => (None, e.to_string(), started.elapsed()),
    }
}

/// How Redis fails in [`redis_outage`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outage {
    /// SIGSTOP, then SIGCONT: connections stay open, nothing answers.
    Stall,
    /// SIGKILL, then a fresh server on the same port: connections are refused.
    Kill,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_does_not_stall_acks_and_replicas_converge_after() {
    redis_outage(Outage::Stall).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_does_not_slow_acks_and_replicas_converge_after() {
    redis_outage(Outage::Kill).await;
}

/// Three nodes, an editor on each at 20 edits/s; Redis fails for 5 s.
async fn redis_outage(outage: Outage) {
    init_logs();
    let mut redis = StallableRedis::start();
    let db = fresh_postgres_database().await;
    let flow_id = uniq("stall");
    let tok = |u: &str| token(u, &[(flow_id.as_str(), Role::Editor)]);

    // Step 1: three hub processes on one Redis and one database, an editor on each.
    let mut hubs = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let (url, node_id) = (redis.url(), format!("n{i}"));
        let env = [
            ("FLOWHUB_DATABASE_URL", db.as_str()),
            ("FLOWHUB_REDIS_URL", url.as_str()),
            ("FLOWHUB_NODE_ID", node_id.as_str()),
        ];
        hubs.push(HubProcess::start_env(dir.path(), free_port(), &env).await);
        dirs.push(dir);
    }
    let mut clients = Vec::new();
    let mut replicas = Vec::new();
    for (i, hub) in hubs.iter().enumerate() {
        let client = Client::connect(&hub.ws_url(), &tok(&format!("editor{i}")))
            .await
            .unwrap();
        replicas.push(client.subscribe(&flow_id).await.unwrap());
        clients.push(client);
    }

    // Step 2: everyone edits continuously, 20 edits/s per editor.
    let stop = Arc::new(AtomicBool::new(false));
    let timings: Vec<Timings> = (0..3).map(|_| Timings::default()).collect();
    let editors: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| {
            spawn_editor(
                r.clone(),
                format!("e{i}"),
                Duration::from_millis(50),
                stop.clone(),
                timings[i].clone(),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Step 3: Redis fails for 5 s while the editors keep going.
    let stalled_at = Instant::now();
    match outage {
        Outage::Stall => redis.signal("-STOP"),
        Outage::Kill => redis.kill(),
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let probes = futures_util::future::join_all(hubs.iter().map(|h| readyz(h.addr()))).await;
    tokio::time::sleep(stalled_at + Duration::from_secs(5) - Instant::now()).await;
    stop.store(true, Ordering::SeqCst);
    for e in editors {
        e.await.unwrap();
    }
    let resumed_at = Instant::now();
    let at_resume: Vec<EditTiming> = timings
        .iter()
        .flat_map(|t| t.lock().unwrap().clone())
        .collect();
    match outage {
        Outage::Stall => redis.signal("-CONT"),
        Outage::Kill => redis = redis.restart(),
    }

    // Step 4: every replica, every node's copy and the store converge.
    let all_acked = eventually(Duration::from_secs(60), || {
        timings
            .iter()
            .all(|t| t.lock().unwrap().iter().all(|e| e.acked.is_some()))
    })
    .await;
    let acked_in = resumed_at.elapsed();
    let converged = eventually(Duration::from_secs(60), || {
        let h = replicas[0].heads_hex();
        replicas.iter().all(|r| r.heads_hex() == h)
    })
    .await;
    let replicas_in = resumed_at.elapsed();
    let mut served_identical = false;
    let auditor = token("auditor", &[(flow_id.as_str(), Role::Viewer)]);
    let reference = replicas[0].to_json();
    let deadline = Instant::now() + Duration::from_secs(30);
    while converged && Instant::now() < deadline {
        let mut same = true;
        for hub in &hubs {
            let mut served = fetch_flow(&hub.ws_url(), &flow_id, &auditor).await.unwrap();
            served.as_object_mut().unwrap().remove("id");
            same &= served == reference;
        }
        if same {
            served_identical = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let convergence = resumed_at.elapsed();

    // Figures.
    let window = |from: Instant, to: Instant| -> Vec<EditTiming> {
        at_resume
            .iter()
            .copied()
            .filter(|e| e.sent >= from && e.sent < to)
            .collect()
    };
    let before = window(stalled_at - Duration::from_secs(2), stalled_at);
    let during = window(stalled_at, resumed_at);
    let acked_before_resume = |v: &[EditTiming]| {
        v.iter()
            .filter(|e| e.acked.is_some_and(|a| a < resumed_at))
            .count()
    };
    let stall_secs = (resumed_at - stalled_at).as_secs_f64();
    let rate_before = acked_before_resume(&before) as f64 / 2.0;
    let acked_in_stall = at_resume
        .iter()
        .filter(|e| e.acked.is_some_and(|a| a >= stalled_at && a < resumed_at))
        .count();
    let rate_during = acked_in_stall as f64 / stall_secs;
    let final_timings: Vec<EditTiming> = timings
        .iter()
        .flat_map(|t| t.lock().unwrap().clone())
        .collect();
    let latencies = |from: Instant, to: Instant| -> Vec<Duration> {
        final_timings
            .iter()
            .filter(|e| e.sent >= from && e.sent < to)
            .map(|e| e.acked.map_or(Duration::from_secs(60), |a| a - e.sent))
            .collect()
    };
    let p99_before = p99(latencies(stalled_at - Duration::from_secs(2), stalled_at));
    let p99_during = p99(latencies(stalled_at, resumed_at));
    // Edits sent in the last second before the resume may legitimately be in flight.
    let in_flight_cutoff = resumed_at - Duration::from_secs(1);
    let old_unacked = during
        .iter()
        .filter(|e| e.sent < in_flight_cutoff && e.acked.is_none_or(|a| a >= resumed_at))
        .count();
    let (mut dropped, mut repairs) = (0.0, 0.0);
    for hub in &hubs {
        dropped += hub.metric("flowhub_bus_publish_dropped_total").await;
        repairs += hub.metric("flowhub_antientropy_repairs_total").await;
    }
    let (failed, back) = match outage {
        Outage::Stall => ("SIGSTOP", "SIGCONT"),
        Outage::Kill => ("killed", "restart"),
    };
    println!("== Redis {failed} for {stall_secs:.1} s, 3 nodes, 3 editors at 20 edits/s each ==");
    println!("ack rate before the stall: {rate_before:.1}/s, ack p99 {p99_before:?}");
    println!(
        "ack rate during the outage: {rate_during:.1}/s, ack p99 {p99_during:?} \
         ({} sent, {} acked before {back}, {old_unacked} sent >1 s before {back} still unacked)",
        during.len(),
        acked_before_resume(&during)
    );
    for (i, (status, body, took)) in probes.iter().enumerate() {
        println!("/readyz on node {i} during the outage: {status:?} {body} in {took:?}");
    }
    println!(
        "after {back}: all acked {all_acked}, replicas converged {converged}, \
         every node serves the same document {served_identical}, in {convergence:?} \
         (all acked after {acked_in:?}, replicas equal after {replicas_in:?})"
    );
    println!("bus publishes dropped (queue overflow): {dropped}; store repairs: {repairs}");

    assert!(
        rate_before > 30.0,
        "editors were not editing before the stall"
    );
    assert_eq!(
        old_unacked, 0,
        "edits sent during the Redis outage waited for the bus"
    );
    for (status, body, took) in &probes {
        assert_eq!(*status, Some(503), "/readyz during a Redis outage: {body}");
        assert!(body.contains("bus unreachable"), "{body}");
        assert!(*took < Duration::from_secs(3), "/readyz took {took:?}");
    }
    assert!(all_acked, "every edit is eventually acknowledged");
    assert!(converged, "replicas converge after Redis resumes");
    assert!(served_identical, "every node serves the replicas' document");
    drop(clients);
    for hub in hubs {
        hub.terminate(Duration::from_secs(20)).await;
    }
    // Redis outlives the hubs, so their drain (leaving the membership) is quick.
    drop(redis);
}

/// A TCP proxy in front of PostgreSQL that can stop forwarding (a black hole: the
/// connections stay open, nothing gets through either way) and resume.
struct BlackHoleProxy {
    port: u16,
    paused: watch::Sender<bool>,
}

impl BlackHoleProxy {
    async fn start(upstream: &'static str) -> BlackHoleProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (paused, paused_rx) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let paused = paused_rx.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(forward(cr, sw, paused.clone()), forward(sr, cw, paused));
                });
            }
        });
        BlackHoleProxy { port, paused }
    }

    fn black_hole(&self, on: bool) {
        self.paused.send_replace(on);
    }
}

/// Copies bytes one way; while paused, reads nothing and holds what it already read.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// One hub on a fresh PostgreSQL database reached through a [`BlackHoleProxy`].
async fn hub_behind_proxy() -> (BlackHoleProxy, Hub, tempfile::TempDir) {
    let db = fresh_postgres_database().await;
    let proxy = BlackHoleProxy::start("127.0.0.1:5432").await;
    let proxied = db.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_config(&proxied, None, "solo".into(), dir.path()))
        .await
        .expect("hub starts");
    (proxy, hub, dir)
}

async fn add_one(flow: &FlowHandle, name: &str) -> Result<flowhub_client::EditTicket, ClientError> {
    flow.edit(|d| d.add_node(NewNode::new("action", name, Position { x: 0.0, y: 0.0 })))
        .await
        .map(|(_, ticket)| ticket)
}

/// One hub behind a proxy to PostgreSQL that black-holes the connection for ~8 s.
///
/// The edit sent during the hang is refused after the append timeout (5 s). The flow
/// actor then rolls its document back by reloading it from the store; with the
/// database still gone that reload fails after the read timeout (2 s) and the actor
/// closes the flow, telling its subscribers to subscribe again. This test measures the
/// bounds (refusal time, `/readyz`, first ack after healing), retrying with a fresh
/// connection when an attempt fails; the next test shows that the same sessions
/// recover by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_fails_appends_in_bounded_time_and_recovers() {
    init_logs();
    let (proxy, hub, _dir) = hub_behind_proxy().await;
    let flow_id = uniq("hang");
    let client = Client::connect(
        &hub.ws_url(),
        &token("ed", &[(flow_id.as_str(), Role::Editor)]),
    )
    .await
    .unwrap();
    let flow = client.subscribe(&flow_id).await.unwrap();
    let t = add_one(&flow, "before").await.unwrap();
    flow.wait_acked(&t, Duration::from_secs(10))
        .await
        .expect("acked before the hang");

    // Step 1: the database stops answering; an edit fails (or at least is not acked)
    // within the append timeout, and /readyz says 503 at once.
    proxy.black_hole(true);
    let hung_at = Instant::now();
    let t = add_one(&flow, "during").await.unwrap();
    let addr = hub.addr();
    let probe = async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        readyz(addr).await
    };
    let wait = async {
        let outcome = flow.wait_acked(&t, Duration::from_secs(15)).await;
        (outcome, hung_at.elapsed())
    };
    let ((status, body, readyz_took), (outcome, outcome_after)) = tokio::join!(probe, wait);
    println!("== PostgreSQL black-holed ==");
    println!("/readyz: {status:?} {body} in {readyz_took:?}");
    println!("edit during the hang: {outcome:?} after {outcome_after:?}");
    // The flow actor rolls its document back by reloading it from the store, which
    // fails too while the database is still gone (after the read timeout).
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "client connection 3 s later: closed {:?}",
        client.close_reason()
    );

    // Step 2: the database comes back; edits are acknowledged again.
    proxy.black_hole(false);
    let healed_at = Instant::now();
    let mut acked_after = None;
    let mut attempts = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    // The first attempt reuses the session; after a failure the editor reconnects and
    // subscribes again, like an application would (see the test doc for why the old
    // session may be unusable).
    let mut session = Some((client, flow));
    let mut first_failure = None;
    while Instant::now() < deadline {
        attempts += 1;
        let (client, flow) = match session.take() {
            Some(s) => s,
            None => {
                let tok = token("ed", &[(flow_id.as_str(), Role::Editor)]);
                let Ok(client) = Client::connect(&hub.ws_url(), &tok).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                match client.subscribe(&flow_id).await {
                    Ok(flow) => (client, flow),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
        };
        let outcome = match add_one(&flow, &format!("after-{attempts}")).await {
            Ok(t) => flow.wait_acked(&t, Duration::from_secs(5)).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                acked_after = Some(healed_at.elapsed());
                break;
            }
            Err(e) => {
                first_failure.get_or_insert(format!(
                    "{e} (connection closed: {:?})",
                    client.close_reason()
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    println!("first edit after healing on the old session: {first_failure:?}");
    let (status_after, body_after, _) = readyz(hub.addr()).await;
    println!("after healing: first ack {acked_after:?} after {attempts} attempt(s); /readyz {status_after:?} {body_after}");

    assert_eq!(status, Some(503), "/readyz with a hung database: {body}");
    assert!(body.contains("store unreachable"), "{body}");
    assert!(
        readyz_took < Duration::from_secs(3),
        "/readyz took {readyz_took:?}"
    );
    assert!(
        !matches!(outcome, Ok(())),
        "an edit is never acknowledged while the database is black-holed"
    );
    assert!(
        matches!(
            outcome,
            Err(ClientError::Rejected { .. }) | Err(ClientError::Closed { .. })
        ),
        "the edit fails within the append timeout instead of hanging: {outcome:?}"
    );
    assert!(outcome_after < Duration::from_secs(10), "{outcome_after:?}");
    assert!(
        acked_after.is_some_and(|t| t < Duration::from_secs(10)),
        "edits are acknowledged soon after healing: {acked_after:?}"
    );
    assert_eq!(status_after, Some(200), "{body_after}");
    hub.shutdown().await;
}

/// A store hang seen by an editor and a read-only viewer on the same flow, neither of
/// which reconnects by hand: the editor's edit gets a retryable error, neither session
/// is ever closed (no 1008: retryable server errors are not abuse), the clients
/// resubscribe by themselves once the flow actor closes ("subscribe again"), and after
/// the store heals the editor's next edit is acknowledged on the same session and the
/// viewer — which never sent a frame — is back in sync with it and with the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_hang_closes_no_session_and_every_subscriber_resyncs() {
    init_logs();
    let (proxy, hub, _dir) = hub_behind_proxy().await;
    let flow_id = uniq("outage");
    let editor = Client::connect(
        &hub.ws_url(),
        &token("ed", &[(flow_id.as_str(), Role::Editor)]),
    )
    .await
    .unwrap();
    let viewer = Client::connect(
        &hub.ws_url(),
        &token("vi", &[(flow_id.as_str(), Role::Viewer)]),
    )
    .await
    .unwrap();
    let ed_flow = editor.subscribe(&flow_id).await.unwrap();
    let vi_flow = viewer.subscribe(&flow_id).await.unwrap();
    let t = add_one(&ed_flow, "before").await.unwrap();
    ed_flow
        .wait_acked(&t, Duration::from_secs(10))
        .await
        .unwrap();

    // The database hangs for ~10 s: longer than the append (5 s) and reload (2 s)
    // timeouts, so the flow actor closes and both clients are told to subscribe again.
    proxy.black_hole(true);
    let t = add_one(&ed_flow, "during").await.unwrap();
    let during = ed_flow.wait_acked(&t, Duration::from_secs(15)).await;
    println!("edit during the hang: {during:?}");
    assert!(
        matches!(
            during,
            Err(ClientError::Rejected {
                code: flowhub_protocol::ErrorCode::Internal,
                ..
            })
        ),
        "a retryable refusal, not a hang or a close: {during:?}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.black_hole(false);
    let healed = Instant::now();

    // The editor keeps its session: the next edit is acknowledged on it.
    let mut acked = None;
    while healed.elapsed() < Duration::from_secs(30) {
        let t = add_one(&ed_flow, "after").await.unwrap();
        if ed_flow.wait_acked(&t, Duration::from_secs(5)).await.is_ok() {
            acked = Some(healed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("first ack on the same session {acked:?} after healing");
    assert!(
        acked.is_some(),
        "the editor's session never acknowledged again"
    );
    // The viewer, who sent nothing, converges on the editor's flow.
    let synced = vi_flow
        .wait_until(
            |s| s.nodes.values().any(|n| n.label == "after"),
            Duration::from_secs(30),
        )
        .await;
    println!("viewer back in sync {:?} after healing", healed.elapsed());
    assert!(
        synced.is_ok(),
        "the read-only viewer never got the edits after the outage"
    );
    assert!(
        eventually(Duration::from_secs(10), || vi_flow.to_json()
            == ed_flow.to_json())
        .await,
        "viewer and editor differ after the outage"
    );
    let mut stored = fetch_flow(
        &hub.ws_url(),
        &flow_id,
        &token("ed", &[(flow_id.as_str(), Role::Editor)]),
    )
    .await
    .unwrap();
    stored.as_object_mut().unwrap().remove("id");
    assert_eq!(
        stored,
        ed_flow.to_json(),
        "the store holds what the clients show"
    );
    for (who, client) in [("editor", &editor), ("viewer", &viewer)] {
        assert_eq!(client.close_reason(), None, "the {who} was closed");
        assert!(!client.is_closed(), "the {who} was closed");
    }
    hub.shutdown().await;
}

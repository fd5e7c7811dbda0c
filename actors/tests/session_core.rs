//! The session core, behaviour by behaviour, without sockets (issue #13): each test
//! spawns a real `SessionActor` (memory store and bus, real flow actors), feeds it
//! `Inbound`s through `SessionMsg::Frame` as a transport's reader does, and reads the
//! typed `OutFrame`s and close requests from its `OutboundRx` as a transport's writer
//! does. What every transport then makes of these is tested in
//! `hub/tests/transports.rs`.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ObjType, ReadDoc};
use flowhub_actors::bus::MemoryBus;
use flowhub_actors::flow::{FlowConfig, FlowDeps, FlowMsg, FlowRegistry};
use flowhub_actors::identity::{Identity, TokenVerifier};
use flowhub_actors::metrics::Metrics;
use flowhub_actors::run::{MemoryRunStore, RunConfig, RunDeps, RunRegistry};
use flowhub_actors::session::{
    Inbound, OutFrame, Outbound, OutboundRx, SessionActor, SessionArgs, SessionLimits, SessionMsg,
    TransportProfile,
};
use flowhub_actors::store::{MemberAccess, MemoryStore, Store, StoreError};
use flowhub_crdt::{FlowDoc, NewNode, Position, SyncState};
use flowhub_protocol::{
    close, ClientMessage, Cursor, ErrorCode, FlowFormat, RequestId, Role, ServerMessage, SyncFrame,
};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use support::{HookedStore, Outage, StoreHooks};

/// Generous: the machine is shared and noisy; nothing here asserts on timings.
const WAIT: Duration = Duration::from_secs(20);

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn identity(user: &str, flows: &[(&str, Role)], expires_at: Option<u64>) -> Identity {
    Identity {
        user_id: user.into(),
        name: format!("{user} (test)"),
        flows: flows.iter().map(|(f, r)| (f.to_string(), *r)).collect(),
        expires_at,
        service: false,
    }
}

/// A `reauth` verifier that proves one fixed identity, whatever the token.
struct Proves(Identity);

#[async_trait::async_trait]
impl TokenVerifier for Proves {
    async fn verify(&self, _token: &str) -> Result<Identity, String> {
        Ok(self.0.clone())
    }
}

struct RefuseAll;

#[async_trait::async_trait]
impl TokenVerifier for RefuseAll {
    async fn verify(&self, _token: &str) -> Result<Identity, String> {
        Err("test: no token is valid".into())
    }
}

/// Limits that never get in the way of a test about something else.
fn generous() -> SessionLimits {
    SessionLimits {
        messages_per_second: 100_000,
        burst: 100_000,
        max_bad_frames: 1_000,
        ..SessionLimits::default()
    }
}

/// A node's actors: flows (on `store`), runs, metrics.
struct World {
    registry: FlowRegistry,
    runs: RunRegistry,
    metrics: Arc<Metrics>,
}

/// How to open one session.
struct Opts {
    id: &'static str,
    identity: Identity,
    limits: SessionLimits,
    profile: TransportProfile,
    queue: usize,
    verifier: Arc<dyn TokenVerifier>,
}

impl Opts {
    fn new(id: &'static str, identity: Identity) -> Opts {
        Opts {
            id,
            identity,
            limits: generous(),
            profile: TransportProfile::NATIVE,
            queue: 10_000,
            verifier: Arc::new(RefuseAll),
        }
    }
    fn limits(self, limits: SessionLimits) -> Opts {
        Opts { limits, ..self }
    }
    fn profile(self, profile: TransportProfile) -> Opts {
        Opts { profile, ..self }
    }
    fn queue(self, queue: usize) -> Opts {
        Opts { queue, ..self }
    }
    fn verifier(self, verifier: impl TokenVerifier) -> Opts {
        Opts {
            verifier: Arc::new(verifier),
            ..self
        }
    }
}

impl World {
    fn new() -> World {
        World::on(Arc::new(MemoryStore::new()))
    }

    fn on(store: Arc<dyn Store>) -> World {
        let metrics = Arc::new(Metrics::default());
        let registry = FlowRegistry::new(Arc::new(FlowDeps {
            store,
            bus: Arc::new(MemoryBus::new()),
            node_id: "core-test".into(),
            metrics: metrics.clone(),
            config: FlowConfig::default(),
        }));
        let runs = RunRegistry::new(Arc::new(RunDeps {
            store: Arc::new(MemoryRunStore::default()),
            flows: registry.clone(),
            metrics: metrics.clone(),
            config: RunConfig::default(),
        }));
        World {
            registry,
            runs,
            metrics,
        }
    }

    async fn open(&self, opts: Opts) -> Session {
        let (out, rx) = Outbound::new(opts.queue, self.metrics.clone());
        let args = SessionArgs {
            session_id: opts.id.into(),
            identity: opts.identity,
            out,
            registry: self.registry.clone(),
            limits: opts.limits,
            metrics: self.metrics.clone(),
            verifier: opts.verifier,
            runs: self.runs.clone(),
            span: tracing::Span::none(),
            profile: opts.profile,
        };
        let (actor, _) = Actor::spawn(None, SessionActor, args)
            .await
            .expect("session starts");
        Session {
            actor,
            rx,
            replicas: HashMap::new(),
            messages: Vec::new(),
            cursor: 0,
            unavailable: Vec::new(),
        }
    }

    async fn stop(self) {
        self.registry.stop_all().await;
        self.runs.stop_all().await;
    }
}

/// One peer's copy of one flow.
struct Replica {
    doc: FlowDoc,
    sync: SyncState,
}

/// A session as its transport sees it: what goes in, what comes out.
struct Session {
    actor: ActorRef<SessionMsg>,
    rx: OutboundRx,
    /// The peer's replica of every flow it syncs.
    replicas: HashMap<String, Replica>,
    /// Every message the session queued, in order.
    messages: Vec<ServerMessage>,
    /// `wait_for` looks at `messages[cursor..]` only.
    cursor: usize,
    /// Every `OutFrame::Unavailable`, in order.
    unavailable: Vec<(String, ErrorCode)>,
}

impl Session {
    /// Hands one frame to the session and waits until it was handled, as the
    /// connection's reader does.
    async fn frame(&self, inbound: Inbound) {
        let what = format!("{inbound:?}");
        let handled = self
            .actor
            .call(|r| SessionMsg::Frame(inbound, r), Some(WAIT))
            .await;
        assert!(
            matches!(handled, Ok(CallResult::Success(()))),
            "the session did not handle {what}: {handled:?}"
        );
    }

    async fn request(&self, msg: ClientMessage) {
        self.frame(Inbound::Request(msg)).await
    }

    async fn ping(&self, id: u64) {
        self.request(ClientMessage::Ping {
            id: Some(id.into()),
        })
        .await
    }

    fn subscribe_msg(flow_id: &str) -> ClientMessage {
        ClientMessage::SubscribeFlow {
            id: Some(RequestId::Str(format!("sub-{flow_id}"))),
            flow_id: flow_id.into(),
            pending: vec![],
            stream: false,
            format: FlowFormat::Automerge,
            since_heads: vec![],
        }
    }

    /// Subscribes (native) and waits for `flow_state`.
    async fn subscribe(&mut self, flow_id: &str) {
        self.request(Session::subscribe_msg(flow_id)).await;
        let flow = flow_id.to_owned();
        self.wait_for(
            &format!("flow_state of {flow_id}"),
            move |m| matches!(m, ServerMessage::FlowState { flow_id, .. } if *flow_id == flow),
        )
        .await;
    }

    fn replica(&mut self, flow_id: &str) -> &mut Replica {
        self.replicas
            .entry(flow_id.to_owned())
            .or_insert_with(|| Replica {
                doc: FlowDoc::new(),
                sync: SyncState::new(),
            })
    }

    /// Takes one outbound frame: sync is applied to the replica, the rest recorded.
    fn take(&mut self, frame: OutFrame) {
        match frame {
            OutFrame::Message(m) => self.messages.push(m.message().clone()),
            OutFrame::Sync { flow_id, payload } => {
                let r = self.replica(&flow_id);
                // A refused change stays in the replica: it may run ahead of the hub.
                let _ = r.doc.receive_sync_message(&mut r.sync, &payload);
            }
            OutFrame::Unavailable { flow_id, code } => {
                self.unavailable.push((flow_id.to_string(), code))
            }
            OutFrame::SharedBinary(_) | OutFrame::Raw(_) => {
                panic!("a session without `stream` got a change frame or raw bytes")
            }
        }
    }

    /// Takes whatever is queued now; returns how many frames.
    fn take_queued(&mut self) -> usize {
        let mut n = 0;
        while let Ok(frame) = self.rx.frames.try_recv() {
            self.take(frame);
            n += 1;
        }
        n
    }

    /// Takes frames until none came for `quiet`; returns how many.
    async fn pump(&mut self, quiet: Duration) -> usize {
        let mut n = 0;
        while let Ok(Some(frame)) = tokio::time::timeout(quiet, self.rx.frames.recv()).await {
            self.take(frame);
            n += 1;
        }
        n
    }

    /// Sends what the replica's sync protocol has to say; whether it had anything.
    async fn push(&mut self, flow_id: &str) -> bool {
        let r = self.replica(flow_id);
        let Some(msg) = r.doc.generate_sync_message(&mut r.sync) else {
            return false;
        };
        self.frame(Inbound::Sync(SyncFrame::flow_sync(flow_id, msg)))
            .await;
        true
    }

    /// Runs the sync protocol for `flow_id` until neither side has more to say.
    async fn sync(&mut self, flow_id: &str) {
        for _ in 0..60 {
            let sent = self.push(flow_id).await;
            let got = self.pump(Duration::from_millis(200)).await;
            if !sent && got == 0 {
                return;
            }
        }
        panic!("the sync of {flow_id} never settled");
    }

    /// The next message (after those already waited for) that satisfies `pred`.
    async fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&ServerMessage) -> bool,
    ) -> ServerMessage {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = self.messages[self.cursor..].iter().position(&pred) {
                let i = self.cursor + i;
                self.cursor = i + 1;
                return self.messages[i].clone();
            }
            match tokio::time::timeout_at(deadline, self.rx.frames.recv()).await {
                Ok(Some(frame)) => self.take(frame),
                Ok(None) => panic!("{what}: the queue ended; seen {:#?}", self.messages),
                Err(_) => panic!(
                    "{what}: not seen within {WAIT:?}; seen {:#?}",
                    self.messages
                ),
            }
        }
    }

    /// The close the session asked its transport for, if any.
    fn close_code(&self) -> Option<u16> {
        self.rx.close.borrow().as_ref().map(|(code, _)| *code)
    }

    /// Every error seen so far: `(code, flow_id, id)`.
    fn errors(&self) -> Vec<(ErrorCode, Option<String>, Option<RequestId>)> {
        self.messages
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Error {
                    code, flow_id, id, ..
                } => Some((*code, flow_id.clone(), id.clone())),
                _ => None,
            })
            .collect()
    }

    fn error_codes(&self) -> Vec<ErrorCode> {
        self.errors().into_iter().map(|(c, _, _)| c).collect()
    }

    /// The hex hashes of every `ack` for `flow_id` seen so far.
    fn acked(&self, flow: &str) -> Vec<String> {
        self.messages
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Ack {
                    flow_id: Some(f),
                    changes,
                    ..
                } if f == flow => Some(changes.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Waits for the ack of change `hash` on `flow_id`, answering the hub's sync messages meanwhile: a
    /// sync message sent while the hub's last one was unanswered may carry only heads,
    /// and the change goes out a round later.
    async fn wait_acked(&mut self, flow_id: &str, hash: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let acked = self.messages[self.cursor..].iter().position(|m| {
                matches!(m, ServerMessage::Ack { flow_id: Some(f), changes, .. }
                    if f == flow_id && changes.iter().any(|c| c == hash))
            });
            if let Some(i) = acked {
                // Stay on the ack: changes stored in one append share it, and the
                // next wait may be for another of them.
                self.cursor += i;
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the ack of {hash}: not seen within {WAIT:?}; seen {:#?}",
                self.messages
            );
            self.push(flow_id).await;
            self.pump(Duration::from_millis(100)).await;
        }
    }

    /// Sends the change `hash` of the replica as a change frame: the hub has it in
    /// one frame, whatever the sync protocol's state.
    async fn send_change(&mut self, flow_id: &str, hash: &str) {
        let head: flowhub_crdt::ChangeHash = hash.parse().unwrap();
        let raw = self
            .replica(flow_id)
            .doc
            .doc_mut()
            .get_change_by_hash(&head)
            .expect("the replica has the change")
            .raw_bytes()
            .to_vec();
        self.frame(Inbound::Sync(SyncFrame::flow_changes(flow_id, raw)))
            .await;
    }

    /// Adds a node to the replica of `flow_id` (one change); its hex hash.
    fn edit(&mut self, flow_id: &str, label: &str) -> String {
        let r = self.replica(flow_id);
        let (_, hash) = r
            .doc
            .add_node(NewNode::new("action", label, Position::new(1.0, 2.0)))
            .unwrap();
        hash.to_string()
    }
}

/// What stock automerge-repo code does with `d.nodes[id].label = "..."`: a Text
/// object where the schema wants a string.
fn write_text_label(doc: &mut FlowDoc, node: &str, label: &str) {
    let raw = doc.doc_mut();
    let (_, nodes) = raw.get(automerge::ROOT, "nodes").unwrap().expect("nodes");
    let (_, node) = raw.get(&nodes, node).unwrap().expect("node");
    let text = raw.put_object(&node, "label", ObjType::Text).unwrap();
    raw.splice_text(&text, 0, 0, label).unwrap();
    raw.commit();
}

// ---- rate limit ---------------------------------------------------------------------

/// Control requests beyond the burst get `rate_limited` (echoing their id); presence
/// is exempt; sync frames are slowed down, never refused, and every edit is acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_refuses_requests_beyond_the_burst_exempts_presence_and_slows_sync() {
    let world = World::new();
    let mut observer = world
        .open(Opts::new(
            "observer",
            identity("obs", &[("rl", Role::Viewer)], None),
        ))
        .await;
    observer.subscribe("rl").await;
    let limits = SessionLimits {
        messages_per_second: 2,
        burst: 5,
        max_bad_frames: 1_000,
        ..SessionLimits::default()
    };
    let mut s = world
        .open(Opts::new("flooder", identity("u", &[("rl", Role::Editor)], None)).limits(limits))
        .await;
    // The subscribe takes one of the burst's five.
    s.subscribe("rl").await;

    // Step 1: 20 pings at once: the first four pass (the rest of the burst), and the
    // ones beyond are answered `rate_limited` with their id; every ping is answered.
    for i in 0..20 {
        s.ping(i).await;
    }
    let mut answers = Vec::new();
    while answers.len() < 20 {
        let m = s
            .wait_for("an answer to every ping", |m| {
                matches!(
                    m,
                    ServerMessage::Pong { .. } | ServerMessage::Error { id: Some(_), .. }
                )
            })
            .await;
        answers.push(m);
    }
    for (i, m) in answers.iter().enumerate() {
        match m {
            ServerMessage::Pong { id } => assert_eq!(id, &Some((i as u64).into())),
            ServerMessage::Error { id, code, .. } => {
                assert_eq!(*code, ErrorCode::RateLimited, "{m:?}");
                assert_eq!(id, &Some((i as u64).into()), "the refusal echoes the id");
                assert!(i >= 4, "ping {i} was within the burst: {m:?}");
            }
            _ => unreachable!(),
        }
    }
    let limited = answers
        .iter()
        .filter(|m| matches!(m, ServerMessage::Error { .. }))
        .count();
    assert!(limited >= 1, "nothing was rate limited: {answers:?}");

    // Step 2: presence, with the limiter empty, is never refused: the observer sees
    // the last cursor, and the flooder got no error for it.
    let errors_before = s.errors().len();
    for x in 0..10 {
        s.request(ClientMessage::Presence {
            flow_id: "rl".into(),
            cursor: Some(Cursor {
                x: x as f64,
                y: 0.0,
            }),
            selection: None,
            color: None,
        })
        .await;
    }
    observer
        .wait_for("the flooder's last cursor", |m| {
            let entries = match m {
                ServerMessage::PresenceState { peers, .. } => peers.clone(),
                ServerMessage::PresenceDiff {
                    joined, updated, ..
                } => joined.iter().chain(updated).cloned().collect(),
                _ => return false,
            };
            entries
                .iter()
                .any(|e| e.user_id == "u" && e.cursor.map(|c| c.x) == Some(9.0))
        })
        .await;

    // Step 3: edits sent while the limiter is still empty are slowed, not refused:
    // each is acked.
    s.sync("rl").await;
    let mut hashes = Vec::new();
    for i in 0..3 {
        let hash = s.edit("rl", &format!("slowed {i}"));
        assert!(s.push("rl").await);
        hashes.push(hash);
    }
    for hash in &hashes {
        s.wait_acked("rl", hash).await;
    }
    s.take_queued();
    assert_eq!(
        s.errors().len(),
        errors_before,
        "presence or sync was refused: {:?}",
        &s.errors()[errors_before..]
    );
    assert_eq!(s.close_code(), None);
    world.stop().await;
}

// ---- bad input ----------------------------------------------------------------------

/// `max_bad_frames` refused frames are tolerated; the next closes the session with
/// `close::POLICY`. `internal` errors (the hub's failure) never count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_beyond_the_limit_close_with_policy_and_internal_errors_never_count() {
    let store = Arc::new(HookedStore::new(Outage {
        down: AtomicBool::new(false),
    }));
    let world = World::on(store.clone());
    let limits = SessionLimits {
        max_bad_frames: 3,
        ..generous()
    };
    let mut s = world
        .open(Opts::new("bad", identity("u", &[("*", Role::Editor)], None)).limits(limits))
        .await;

    // Step 1: internal errors, twenty of them, count nothing: the store is down for
    // ten subscribes, and a transport reports ten frames it failed on.
    store.down.store(true, Ordering::SeqCst);
    for i in 0..10 {
        s.request(Session::subscribe_msg(&format!("down-{i}")))
            .await;
        s.frame(Inbound::Invalid {
            id: None,
            flow_id: None,
            code: ErrorCode::Internal,
            message: "test: the transport failed".into(),
        })
        .await;
    }
    store.down.store(false, Ordering::SeqCst);
    s.take_queued();
    assert_eq!(s.error_codes(), vec![ErrorCode::Internal; 20]);
    assert_eq!(s.close_code(), None, "internal errors were counted");

    // Step 2: three bad frames are refused (typed errors) and tolerated ...
    for text in ["not json", r#"{"type":"teleport"}"#, r#"{"no":"type"}"#] {
        s.frame(Inbound::from_native_text(text)).await;
    }
    s.ping(1).await;
    s.wait_for("pong", |m| matches!(m, ServerMessage::Pong { .. }))
        .await;
    assert_eq!(
        s.error_codes()[20..],
        [ErrorCode::BadRequest; 3],
        "{:?}",
        s.messages
    );
    assert_eq!(s.close_code(), None, "closed within the limit");

    // Step 3: ... the fourth is refused too, and closes the session for abuse.
    s.frame(Inbound::from_native_binary(&[0xff])).await;
    s.take_queued();
    assert_eq!(s.error_codes()[23..], [ErrorCode::BadRequest]);
    assert_eq!(s.close_code(), Some(close::POLICY));
    world.stop().await;
}

// ---- size limits --------------------------------------------------------------------

/// A frame above `max_frame_bytes`, a sync payload above it (the error names the flow)
/// and a subscription beyond `max_subscriptions` are `too_large`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_and_subscription_limits_answer_too_large() {
    let world = World::new();
    let limits = SessionLimits {
        max_frame_bytes: 1024,
        max_subscriptions: 2,
        ..generous()
    };
    let mut s = world
        .open(Opts::new("sizes", identity("u", &[("*", Role::Editor)], None)).limits(limits))
        .await;

    // A frame the transport measured above the limit (its bytes were not kept).
    s.frame(Inbound::Oversize(5000)).await;
    let err = s
        .wait_for("too_large", |m| matches!(m, ServerMessage::Error { .. }))
        .await;
    match err {
        ServerMessage::Error {
            code,
            flow_id,
            message,
            ..
        } => {
            assert_eq!(code, ErrorCode::TooLarge, "{message}");
            assert_eq!(flow_id, None);
            assert!(message.contains("5000"), "{message}");
        }
        _ => unreachable!(),
    }

    // A sync payload above the limit, for a subscribed flow: named in the error, and
    // not applied.
    s.subscribe("a").await;
    s.frame(Inbound::Sync(SyncFrame::flow_sync("a", vec![0x42; 2000])))
        .await;
    let err = s
        .wait_for("too_large for a", |m| {
            matches!(m, ServerMessage::Error { .. })
        })
        .await;
    assert!(
        matches!(&err, ServerMessage::Error { code: ErrorCode::TooLarge, flow_id: Some(f), .. } if f == "a"),
        "{err:?}"
    );

    // Two subscriptions at most; subscribing again to one of them is no new one.
    s.subscribe("b").await;
    s.request(Session::subscribe_msg("c")).await;
    let err = s
        .wait_for("too_large for c", |m| {
            matches!(m, ServerMessage::Error { .. })
        })
        .await;
    assert!(
        matches!(&err, ServerMessage::Error {
            code: ErrorCode::TooLarge,
            flow_id: Some(f),
            id: Some(RequestId::Str(id)),
            ..
        } if f == "c" && id == "sub-c"),
        "{err:?}"
    );
    s.subscribe("a").await;
    s.take_queued();
    assert_eq!(s.error_codes(), vec![ErrorCode::TooLarge; 3]);
    assert_eq!(s.close_code(), None);
    world.stop().await;
}

// ---- expiry -------------------------------------------------------------------------

/// A session whose token expires tells `unauthorized` and closes with
/// `close::TOKEN_EXPIRED`; one that reauthenticated in time stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_told_unauthorized_and_closed_with_token_expired() {
    let world = World::new();
    let soon = now_secs() + 2;
    let mut expiring = world
        .open(Opts::new(
            "expiring",
            identity("x", &[("f", Role::Editor)], Some(soon)),
        ))
        .await;
    expiring.subscribe("f").await;
    // Renewed in time: a fresh token for the same user, an hour ahead.
    let later = identity("y", &[("f", Role::Editor)], Some(now_secs() + 3600));
    let mut renewed = world
        .open(
            Opts::new("renewed", identity("y", &[("f", Role::Editor)], Some(soon)))
                .verifier(Proves(later)),
        )
        .await;
    renewed
        .request(ClientMessage::Reauth {
            id: Some(1.into()),
            token: "fresh".into(),
        })
        .await;
    renewed
        .wait_for("reauth ack", |m| {
            matches!(
                m,
                ServerMessage::Ack {
                    id: Some(RequestId::Num(1)),
                    ..
                }
            )
        })
        .await;

    let told = expiring
        .wait_for("unauthorized", |m| matches!(m, ServerMessage::Error { .. }))
        .await;
    assert!(
        matches!(
            &told,
            ServerMessage::Error {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "{told:?}"
    );
    let mut close = expiring.rx.close.clone();
    tokio::time::timeout(WAIT, close.changed())
        .await
        .expect("a close follows");
    assert_eq!(expiring.close_code(), Some(close::TOKEN_EXPIRED));

    // Past the old expiry (the expiring session's close proves the time came),
    // the renewed session still answers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    renewed.ping(2).await;
    renewed
        .wait_for("pong", |m| matches!(m, ServerMessage::Pong { .. }))
        .await;
    assert_eq!(renewed.close_code(), None);
    assert!(renewed.errors().is_empty(), "{:?}", renewed.errors());
    world.stop().await;
}

// ---- revocation ---------------------------------------------------------------------

/// `reauth` with a token that grants no role on a subscribed flow ends that
/// subscription (`forbidden` naming the flow), and sync frames the client sends for
/// it afterwards are answered `forbidden`, uncounted: the session stays open.
/// A session's pending expiry check is a timer task holding a reference to the session
/// actor; it must end with the session (or with the token it was armed for), not when
/// the old token would have expired: before, every reconnect kept the closed session's
/// actor (ports, cell: kilobytes) alive for up to an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_or_renewed_session_leaves_no_expiry_timer_behind() {
    let world = World::new();
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let settle_at = |expected: usize| async move {
        let deadline = tokio::time::Instant::now() + WAIT;
        while alive() != expected && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        alive()
    };
    let before = alive();
    let hour = Some(now_secs() + 3600);
    let mut sessions = Vec::new();
    for i in 0..10 {
        let id: &'static str = Box::leak(format!("timer-{i}").into_boxed_str());
        let renewed = identity("t", &[("f", Role::Editor)], Some(now_secs() + 7200));
        let session = world
            .open(
                Opts::new(id, identity("t", &[("f", Role::Editor)], hour))
                    .verifier(Proves(renewed)),
            )
            .await;
        sessions.push(session);
    }
    // Each session: its actor's task and its expiry timer.
    let open = settle_at(before + 20).await;
    assert_eq!(open, before + 20, "an actor task and a timer per session");
    // Renewing replaces the timer rather than adding one.
    for (i, s) in sessions.iter_mut().enumerate() {
        for r in 0..3 {
            let id = (i * 10 + r) as u64;
            s.request(ClientMessage::Reauth {
                id: Some(id.into()),
                token: "fresh".into(),
            })
            .await;
        }
    }
    assert_eq!(
        settle_at(before + 20).await,
        before + 20,
        "one timer per session after reauth"
    );
    for s in sessions {
        s.actor.stop_and_wait(None, None).await.unwrap();
    }
    assert_eq!(
        settle_at(before).await,
        before,
        "no timer outlives its session"
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauth_without_a_role_ends_the_subscription_and_later_frames_are_forbidden_uncounted() {
    let world = World::new();
    let limits = SessionLimits {
        max_bad_frames: 2,
        ..generous()
    };
    let demoted = identity("eve", &[("elsewhere", Role::Editor)], None);
    let mut s = world
        .open(
            Opts::new("eve", identity("eve", &[("rv", Role::Editor)], None))
                .limits(limits)
                .verifier(Proves(demoted)),
        )
        .await;
    s.subscribe("rv").await;
    s.sync("rv").await;
    let hash = s.edit("rv", "before");
    s.push("rv").await;
    s.wait_acked("rv", &hash).await;

    s.request(ClientMessage::Reauth {
        id: Some(9.into()),
        token: "demoted".into(),
    })
    .await;
    s.wait_for("reauth ack", |m| {
        matches!(
            m,
            ServerMessage::Ack {
                id: Some(RequestId::Num(9)),
                ..
            }
        )
    })
    .await;
    let told = s
        .wait_for("the revocation", |m| {
            matches!(m, ServerMessage::Error { .. })
        })
        .await;
    assert!(
        matches!(&told, ServerMessage::Error { code: ErrorCode::Forbidden, flow_id: Some(f), .. } if f == "rv"),
        "{told:?}"
    );

    // Five frames for the flow, more than the abuse limit of two: all `forbidden`.
    for _ in 0..5 {
        s.frame(Inbound::Sync(SyncFrame::flow_sync("rv", vec![0x42, 1, 2])))
            .await;
    }
    s.ping(10).await;
    s.wait_for("pong", |m| matches!(m, ServerMessage::Pong { .. }))
        .await;
    let errors = s.errors();
    assert_eq!(errors.len(), 6, "{errors:?}");
    for (code, flow, _) in &errors {
        assert_eq!((*code, flow.as_deref()), (ErrorCode::Forbidden, Some("rv")));
    }
    assert_eq!(
        s.close_code(),
        None,
        "frames after a revocation were counted"
    );
    world.stop().await;
}

/// The same through a `flow_members` change (what the hub tells the flow actor when
/// an owner revokes a member): the next sync frame learns it, and the frames after
/// it are `forbidden`, uncounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_revocation_makes_later_frames_forbidden_uncounted() {
    let store = Arc::new(MemoryStore::new());
    let world = World::on(store.clone());
    let limits = SessionLimits {
        max_bad_frames: 2,
        ..generous()
    };
    let mut s = world
        .open(Opts::new("eve", identity("eve", &[("rm", Role::Editor)], None)).limits(limits))
        .await;
    s.subscribe("rm").await;
    s.sync("rm").await;

    store
        .set_member_access("rm", "eve", Some(MemberAccess::Revoked))
        .await
        .unwrap();
    let flow = world.registry.get_or_spawn("rm").await.unwrap();
    flow.cast(FlowMsg::MemberChanged {
        user_id: "eve".into(),
        access: Some(MemberAccess::Revoked),
    })
    .unwrap();
    s.wait_for("the revocation", |m| {
        matches!(m, ServerMessage::Error { .. })
    })
    .await;

    // The client, not knowing yet, sends an edit: the flow refuses it and the
    // session ends the subscription; five more frames follow, beyond the abuse
    // limit of two.
    s.edit("rm", "after");
    assert!(s.push("rm").await);
    for _ in 0..5 {
        s.frame(Inbound::Sync(SyncFrame::flow_sync("rm", vec![0x42, 1])))
            .await;
    }
    s.ping(1).await;
    s.wait_for("pong", |m| matches!(m, ServerMessage::Pong { .. }))
        .await;
    // The flow's revocation, the session's end of the subscription, five answers.
    let errors = s.errors();
    assert_eq!(errors.len(), 7, "{errors:?}");
    for (code, flow, _) in &errors {
        assert_eq!((*code, flow.as_deref()), (ErrorCode::Forbidden, Some("rm")));
    }
    assert_eq!(
        s.close_code(),
        None,
        "frames after a revocation were counted"
    );
    world.stop().await;
}

// ---- drain --------------------------------------------------------------------------

/// Store appends wait at this gate while it is shut.
struct Gate {
    open: tokio::sync::watch::Sender<bool>,
}

#[async_trait::async_trait]
impl StoreHooks for Gate {
    async fn before_append(&self) -> Result<(), StoreError> {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
        Ok(())
    }
}

/// A session stopped (as the connection loop stops it on drain or close) while its
/// edit is still on its way to the store has the edit's ack queued before it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_session_queues_the_ack_of_its_edit_before_it_stops() {
    let store = Arc::new(HookedStore::new(Gate {
        open: tokio::sync::watch::channel(true).0,
    }));
    let world = World::on(store.clone());
    let mut s = world
        .open(Opts::new(
            "drained",
            identity("u", &[("dr", Role::Editor)], None),
        ))
        .await;
    s.subscribe("dr").await;
    s.sync("dr").await;

    // The edit is applied and handled, but its append waits at the gate: no ack.
    store.open.send_replace(false);
    let hash = s.edit("dr", "in flight");
    s.send_change("dr", &hash).await;
    s.pump(Duration::from_millis(300)).await;
    assert!(!s.acked("dr").contains(&hash), "acked before it was stored");

    // The session stops; the gate opens only while it is stopping.
    let actor = s.actor.clone();
    let stopping =
        tokio::spawn(async move { actor.stop_and_wait(Some("drain".into()), Some(WAIT)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.open.send_replace(true);
    stopping
        .await
        .unwrap()
        .expect("the session stops within the wait");
    s.take_queued();
    assert!(
        s.acked("dr").contains(&hash),
        "the ack of the edit was not queued before the session stopped: {:#?}",
        s.messages
    );
    world.stop().await;
}

// ---- slow client --------------------------------------------------------------------

/// A session whose tiny queue is never read is closed `close::TOO_SLOW` when a
/// control message overflows it; the flow keeps serving its other sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_too_slow_and_the_flow_serves_others() {
    let world = World::new();
    let slow = world
        .open(Opts::new("slow", identity("slow", &[("busy", Role::Editor)], None)).queue(8))
        .await;
    let mut other = world
        .open(Opts::new(
            "other",
            identity("other", &[("busy", Role::Editor)], None),
        ))
        .await;
    other.subscribe("busy").await;
    other.sync("busy").await;
    slow.request(Session::subscribe_msg("busy")).await;

    // Requests whose answers the client never reads.
    let mut pings = 0;
    while slow.close_code().is_none() {
        assert!(pings < 100, "a queue of 8 never overflowed");
        slow.ping(pings).await;
        pings += 1;
    }
    assert_eq!(slow.close_code(), Some(close::TOO_SLOW));
    assert!(world.metrics.sessions_closed_slow.get() >= 1);

    // The flow serves the other session as before: its edits are applied and acked.
    for i in 0..5 {
        let hash = other.edit("busy", &format!("still served {i}"));
        assert!(other.push("busy").await);
        other.wait_acked("busy", &hash).await;
    }
    assert!(other.errors().is_empty(), "{:?}", other.errors());
    assert_eq!(other.close_code(), None);
    world.stop().await;
}

// ---- the AUTOMERGE_REPO profile -----------------------------------------------------

/// Under `AUTOMERGE_REPO` a sync message for a flow not subscribed joins it: the
/// peer gets the flow by syncing, with no `subscribe_flow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automerge_repo_joins_a_flow_by_syncing_it() {
    let world = World::new();
    let mut writer = world
        .open(Opts::new(
            "writer",
            identity("w", &[("am", Role::Editor)], None),
        ))
        .await;
    writer.subscribe("am").await;
    writer.sync("am").await;
    let hash = writer.edit("am", "written natively");
    writer.push("am").await;
    writer.wait_acked("am", &hash).await;

    let mut repo = world
        .open(
            Opts::new("am-repo", identity("r", &[("am", Role::Editor)], None))
                .profile(TransportProfile::AUTOMERGE_REPO),
        )
        .await;
    repo.sync("am").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let head: flowhub_crdt::ChangeHash = hash.parse().unwrap();
    while !repo.replica("am").doc.has_change(&head) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flow never arrived by sync"
        );
        repo.sync("am").await;
    }
    assert!(repo.errors().is_empty(), "{:?}", repo.errors());
    assert!(repo.unavailable.is_empty(), "{:?}", repo.unavailable);

    // And its own edit is stored and acked like any other.
    let hash = repo.edit("am", "from the repo");
    repo.push("am").await;
    repo.wait_acked("am", &hash).await;
    world.stop().await;
}

/// Under `AUTOMERGE_REPO` a flow the identity has no role on is
/// `OutFrame::Unavailable { code: Forbidden }`, however often, and counts nothing;
/// under `NATIVE` the same refusals are counted toward the abuse limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automerge_repo_flow_without_a_role_is_unavailable_and_counts_nothing() {
    let world = World::new();
    let limits = SessionLimits {
        max_bad_frames: 1,
        ..generous()
    };
    let who = || identity("r", &[("mine", Role::Editor)], None);
    let mut repo = world
        .open(
            Opts::new("am-nope", who())
                .limits(limits.clone())
                .profile(TransportProfile::AUTOMERGE_REPO),
        )
        .await;
    let msg = FlowDoc::new()
        .generate_sync_message(&mut SyncState::new())
        .unwrap();
    for _ in 0..5 {
        repo.frame(Inbound::Sync(SyncFrame::flow_sync("theirs", msg.clone())))
            .await;
    }
    repo.ping(1).await;
    repo.wait_for("pong", |m| matches!(m, ServerMessage::Pong { .. }))
        .await;
    assert_eq!(
        repo.unavailable,
        vec![("theirs".to_string(), ErrorCode::Forbidden); 5]
    );
    assert!(repo.errors().is_empty(), "{:?}", repo.errors());
    assert_eq!(repo.close_code(), None, "unavailable flows were counted");

    // The native contrast: refused subscribes are the client's fault, and count.
    let mut native = world
        .open(Opts::new("native-nope", who()).limits(limits))
        .await;
    native.request(Session::subscribe_msg("theirs")).await;
    native.request(Session::subscribe_msg("theirs")).await;
    native.take_queued();
    assert_eq!(native.error_codes(), vec![ErrorCode::Forbidden; 2]);
    assert_eq!(native.close_code(), Some(close::POLICY));
    world.stop().await;
}

/// A schema-breaking change (a Text label, as stock automerge-repo code writes) is
/// repaired under `AUTOMERGE_REPO` (`repaired`, no error, the replica converges on
/// a valid flow) and refused under `NATIVE` (`schema_violation`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_breaking_change_is_repaired_under_automerge_repo_and_refused_under_native() {
    let world = World::new();
    let who = |u: &str| identity(u, &[("*", Role::Editor)], None);

    let mut repo = world
        .open(Opts::new("am-fix", who("r")).profile(TransportProfile::AUTOMERGE_REPO))
        .await;
    repo.sync("fix-am").await;
    let (node, hash) = repo
        .replica("fix-am")
        .doc
        .add_node(NewNode::new("http", "Fetch", Position::new(1.0, 2.0)))
        .unwrap();
    repo.push("fix-am").await;
    repo.wait_acked("fix-am", &hash.to_string()).await;
    write_text_label(&mut repo.replica("fix-am").doc, &node, "Typed in JS");
    repo.sync("fix-am").await;
    let repaired = repo
        .wait_for("repaired", |m| matches!(m, ServerMessage::Repaired { .. }))
        .await;
    let ServerMessage::Repaired {
        flow_id, problems, ..
    } = repaired
    else {
        unreachable!()
    };
    assert_eq!(flow_id, "fix-am");
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&format!("nodes/{node}/label"))),
        "{problems:?}"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while repo.replica("fix-am").doc.validate().is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the repair never reached the peer"
        );
        repo.sync("fix-am").await;
    }
    assert_eq!(
        repo.replica("fix-am").doc.node(&node).unwrap().label,
        "Typed in JS"
    );
    assert!(repo.errors().is_empty(), "{:?}", repo.errors());

    let mut native = world.open(Opts::new("native-fix", who("n"))).await;
    native.subscribe("fix-native").await;
    native.sync("fix-native").await;
    let (node, hash) = native
        .replica("fix-native")
        .doc
        .add_node(NewNode::new("http", "Fetch", Position::new(1.0, 2.0)))
        .unwrap();
    native.push("fix-native").await;
    native.wait_acked("fix-native", &hash.to_string()).await;
    write_text_label(&mut native.replica("fix-native").doc, &node, "Typed in JS");
    native.push("fix-native").await;
    let refused = native
        .wait_for("schema_violation", |m| {
            matches!(m, ServerMessage::Error { .. })
        })
        .await;
    assert!(
        matches!(&refused, ServerMessage::Error { code: ErrorCode::SchemaViolation, flow_id: Some(f), .. } if f == "fix-native"),
        "{refused:?}"
    );
    native.pump(Duration::from_millis(300)).await;
    assert!(
        !native
            .messages
            .iter()
            .any(|m| matches!(m, ServerMessage::Repaired { .. })),
        "a native session's change was repaired"
    );
    world.stop().await;
}

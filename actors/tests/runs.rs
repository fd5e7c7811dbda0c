//! Run actors: sequencing without gaps, idempotent ingest, replay into bounded queues,
//! slow watchers told to resume, persistence before broadcast, reload after eviction.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowhub_actors::bus::MemoryBus;
use flowhub_actors::flow::{FlowConfig, FlowDeps, FlowMsg, FlowRegistry};
use flowhub_actors::metrics::Metrics;
use flowhub_actors::run::{
    MemoryRunStore, RunConfig, RunDeps, RunError, RunRegistry, RunStore, StoredRun, WatchOutcome,
    WatchRequest,
};
use flowhub_actors::session::{NativeFrame, OutFrame, Outbound, OutboundRx};
use flowhub_actors::store::{ChangeRecord, MemoryStore, Store, StoreError};
use flowhub_crdt::{FlowDoc, NewNode, Position};
use flowhub_protocol::{
    RunEvent, RunEventInput, RunEventKind, RunSnapshot, RunStatus, RunSummary, ServerMessage,
};

const WAIT: Duration = Duration::from_secs(10);

fn config() -> RunConfig {
    RunConfig {
        finished_grace: Duration::from_millis(100),
        ..RunConfig::default()
    }
}

fn registry_with(
    store: Arc<dyn RunStore>,
    flows: Arc<dyn Store>,
    config: RunConfig,
) -> RunRegistry {
    let flows = FlowRegistry::new(Arc::new(FlowDeps {
        store: flows,
        bus: Arc::new(MemoryBus::new()),
        node_id: "test-node".into(),
        metrics: Arc::new(Metrics::default()),
        config: FlowConfig::default(),
    }));
    RunRegistry::new(Arc::new(RunDeps {
        store,
        flows,
        metrics: Arc::new(Metrics::default()),
        config,
    }))
}

fn registry() -> RunRegistry {
    registry_with(
        Arc::new(MemoryRunStore::new()),
        Arc::new(MemoryStore::new()),
        config(),
    )
}

fn event(id: &str, kind: RunEventKind) -> RunEventInput {
    RunEventInput {
        event_id: id.into(),
        kind,
        flow_id: "f".into(),
        node_id: kind.needs_node().then(|| "n1".to_string()),
        ts: 1_700_000_000_000,
        duration_ms: None,
        error: None,
        level: None,
        message: (kind == RunEventKind::Log).then(|| format!("log {id}")),
        attempt: None,
        status: None,
        flow_heads: None,
    }
}

fn logs(range: std::ops::RangeInclusive<u64>) -> Vec<RunEventInput> {
    range
        .map(|i| event(&format!("e{i}"), RunEventKind::Log))
        .collect()
}

fn decode(frame: OutFrame) -> ServerMessage {
    match frame.into_native() {
        NativeFrame::Text(t) => serde_json::from_str(&t).expect("server message"),
        NativeFrame::Binary(_) | NativeFrame::SharedBinary(_) => panic!("unexpected binary frame"),
    }
}

async fn next(rx: &mut OutboundRx) -> ServerMessage {
    let frame = tokio::time::timeout(WAIT, rx.frames.recv())
        .await
        .expect("a frame arrives")
        .expect("queue open");
    decode(frame)
}

async fn watch(
    reg: &RunRegistry,
    run: &str,
    watcher: &str,
    out: &Outbound,
    since: u64,
) -> RunSnapshot {
    let outcome = reg
        .watch(
            run,
            WatchRequest {
                watcher_id: watcher.into(),
                out: out.clone(),
                since_seq: since,
                request_id: None,
            },
            |_| true,
        )
        .await
        .expect("watch");
    assert!(matches!(outcome, WatchOutcome::Watching(_)), "{outcome:?}");
    reg.snapshot(run).await.unwrap().unwrap()
}

/// Reads until `run_event` seq `until` (handling `resume_from` by resubscribing);
/// returns every event seq in arrival order, starting with the `run_state` seen.
async fn collect(
    reg: &RunRegistry,
    run: &str,
    watcher: &str,
    out: &Outbound,
    rx: &mut OutboundRx,
    until: u64,
) -> (Vec<u64>, usize) {
    let mut seqs = Vec::new();
    let mut resumes = 0;
    loop {
        match next(rx).await {
            ServerMessage::RunEvent { event, .. } => {
                seqs.push(event.seq);
                if event.seq >= until {
                    return (seqs, resumes);
                }
            }
            ServerMessage::ResumeFrom { seq, .. } => {
                resumes += 1;
                watch(reg, run, watcher, out, seq).await;
            }
            ServerMessage::RunState { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sequences_without_gaps_and_drops_duplicates() {
    let reg = registry();
    // Step 1: a batch with a duplicate inside it.
    let mut first = logs(1..=5);
    first.push(event("e3", RunEventKind::Log));
    let out = reg.ingest("r1", first).await.unwrap();
    assert_eq!((out.accepted, out.duplicates, out.last_seq), (5, 1, 5));

    // Step 2: overlapping re-posts from two engines at once.
    let mut tasks = Vec::new();
    for _ in 0..2 {
        for _ in 0..2 {
            let reg = reg.clone();
            tasks.push(tokio::spawn(async move {
                reg.ingest("r1", logs(1..=200)).await.unwrap()
            }));
        }
    }
    let mut accepted = 0;
    let mut duplicates = 0;
    for t in tasks {
        let o = t.await.unwrap();
        accepted += o.accepted;
        duplicates += o.duplicates;
    }
    assert_eq!(accepted, 195);
    assert_eq!(duplicates, 4 * 200 - 195);

    let events = reg.events("r1", 0, 1000).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    let ids: HashSet<&str> = events.iter().map(|e| e.event.event_id.as_str()).collect();
    assert_eq!(ids.len(), 200);
    assert_eq!(reg.spawned(), 1);
    let stats = reg.stats();
    assert_eq!((stats.runs_open, stats.events_accepted), (1, 200));
    assert_eq!(stats.events_duplicate, 1 + 4 * 200 - 195);
    reg.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_runs_are_not_found_and_spawn_nothing() {
    let reg = registry();
    let (out, _rx) = Outbound::new(8, Arc::new(Metrics::default()));
    let outcome = reg
        .watch(
            "nope",
            WatchRequest {
                watcher_id: "w".into(),
                out,
                since_seq: 0,
                request_id: None,
            },
            |_| true,
        )
        .await
        .unwrap();
    assert!(matches!(outcome, WatchOutcome::NotFound));
    assert!(reg.snapshot("nope").await.unwrap().is_none());
    assert_eq!(reg.spawned(), 0);

    // Another flow's events cannot join a run.
    reg.ingest("r", logs(1..=1)).await.unwrap();
    let mut other = event("x", RunEventKind::Log);
    other.flow_id = "g".into();
    match reg.ingest("r", vec![other]).await {
        Err(RunError::Invalid(e)) => assert_eq!(e.field, "events[0].flow_id"),
        other => panic!("{other:?}"),
    }
    reg.stop_all().await;
}

/// 1000 stored events replayed into a 64-frame queue while more events arrive: every
/// event once, in order, and never a resume_from or a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_respects_a_bounded_queue_and_meets_live_events() {
    let reg = registry();
    for chunk in 0..10 {
        reg.ingest("r", logs(chunk * 100 + 1..=chunk * 100 + 100))
            .await
            .unwrap();
    }
    let (out, mut rx) = Outbound::new(64, Arc::new(Metrics::default()));
    watch(&reg, "r", "w", &out, 0).await;
    let engine = {
        let reg = reg.clone();
        tokio::spawn(async move {
            for chunk in 10..15 {
                reg.ingest("r", logs(chunk * 100 + 1..=chunk * 100 + 100))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    assert!(matches!(
        next(&mut rx).await,
        ServerMessage::RunState { .. }
    ));
    let mut seqs = Vec::new();
    while seqs.len() < 1500 {
        match next(&mut rx).await {
            ServerMessage::RunEvent { event, .. } => seqs.push(event.seq),
            other => panic!("unexpected {other:?}"),
        }
        if seqs.len() % 50 == 0 {
            // A reader slower than the actor.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    engine.await.unwrap();
    assert_eq!(seqs, (1..=1500).collect::<Vec<_>>());
    assert!(!out.is_closed());
    assert!(
        rx.frames.try_recv().is_err(),
        "nothing after the last event"
    );
    reg.stop_all().await;
}

/// With only the last 16 events in memory, a replay from the start reads the older
/// ones from the store, in queue-sized chunks, and joins the in-memory tail seamlessly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_reads_older_events_from_the_store() {
    let cfg = RunConfig {
        recent_events: 16,
        ..config()
    };
    let reg = registry_with(
        Arc::new(MemoryRunStore::new()),
        Arc::new(MemoryStore::new()),
        cfg,
    );
    reg.ingest("r", logs(1..=300)).await.unwrap();
    let (out, mut rx) = Outbound::new(32, Arc::new(Metrics::default()));
    watch(&reg, "r", "w", &out, 7).await;
    assert!(matches!(
        next(&mut rx).await,
        ServerMessage::RunState { .. }
    ));
    let (seqs, resumes) = collect(&reg, "r", "w", &out, &mut rx, 300).await;
    assert_eq!(resumes, 0);
    assert_eq!(seqs, (8..=300).collect::<Vec<_>>());
    reg.stop_all().await;
}

/// A watcher that stops reading falls behind live events: it is told where to resume
/// once its queue drains, and resubscribing from there gives the rest, no gap, no dup.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_watcher_gets_resume_from_and_resumes_without_gap() {
    let reg = registry();
    reg.ingest("r", logs(1..=1)).await.unwrap();
    let (out, mut rx) = Outbound::new(16, Arc::new(Metrics::default()));
    watch(&reg, "r", "w", &out, 0).await;
    // Step 1: 200 live events while the watcher does not read.
    for i in 2..=200 {
        reg.ingest("r", logs(i..=i)).await.unwrap();
    }
    // Step 2: it reads again; resume_from comes after what was queued.
    let (seqs, resumes) = collect(&reg, "r", "w", &out, &mut rx, 200).await;
    assert!(resumes >= 1, "a lagging watcher is told to resume");
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    assert!(!out.is_closed(), "a lagging watcher is not disconnected");
    assert_eq!(reg.stats().resumes, resumes as u64);
    reg.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_in_the_same_session_sends_nothing_twice() {
    let reg = registry();
    reg.ingest("r", logs(1..=10)).await.unwrap();
    let (out, mut rx) = Outbound::new(64, Arc::new(Metrics::default()));
    watch(&reg, "r", "w", &out, 0).await;
    // The client has processed nothing yet but subscribes again from 0.
    watch(&reg, "r", "w", &out, 0).await;
    reg.ingest("r", logs(11..=12)).await.unwrap();
    let mut seqs = Vec::new();
    let mut states = 0;
    while seqs.last() != Some(&12) {
        match next(&mut rx).await {
            ServerMessage::RunEvent { event, .. } => seqs.push(event.seq),
            ServerMessage::RunState { .. } => states += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(states, 2);
    assert_eq!(seqs, (1..=12).collect::<Vec<_>>());
    reg.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_stop_and_reload_the_same_state() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryRunStore::new());
    // A tiny memory window, so duplicate checks must ask the store.
    let cfg = RunConfig {
        recent_events: 4,
        ..config()
    };
    let reg = registry_with(store.clone(), Arc::new(MemoryStore::new()), cfg);
    let mut batch = vec![event("start", RunEventKind::RunStarted)];
    batch[0].flow_heads = Some(vec!["ab".repeat(32)]);
    batch.push(event("s1", RunEventKind::StepStarted));
    let mut ok = event("s2", RunEventKind::StepSucceeded);
    ok.duration_ms = Some(42);
    batch.push(ok);
    batch.extend(logs(1..=10));
    let mut fin = event("fin", RunEventKind::RunFinished);
    fin.status = Some(RunStatus::Succeeded);
    batch.push(fin);
    reg.ingest("r", batch.clone()).await.unwrap();
    let before = reg.snapshot("r").await.unwrap().unwrap();
    assert_eq!(before.status, RunStatus::Succeeded);
    assert_eq!(before.last_seq, 14);

    // Step 1: no watchers, finished: the actor goes away after the grace period.
    let gone = async {
        while reg.get("r").is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, gone)
        .await
        .expect("finished run evicted");
    assert_eq!(reg.snapshot("r").await.unwrap().unwrap(), before);

    // Step 2: a fresh actor: re-posts are duplicates (found in the store), and new
    // events continue the sequence.
    let again = reg.ingest("r", batch).await.unwrap();
    assert_eq!(
        (again.accepted, again.duplicates, again.last_seq),
        (0, 14, 14)
    );
    let late = reg.ingest("r", logs(11..=12)).await.unwrap();
    assert_eq!((late.accepted, late.last_seq), (2, 16));
    assert_eq!(reg.spawned(), 2);
    let stored = store.load_run("r", 100).await.unwrap().unwrap();
    let seqs: Vec<u64> = stored.recent.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=16).collect::<Vec<_>>());
    reg.stop_all().await;
}

/// A store that fails on demand.
struct FlakyStore {
    inner: MemoryRunStore,
    fail: AtomicBool,
}

#[async_trait]
impl RunStore for FlakyStore {
    async fn load_run(&self, run_id: &str, recent: usize) -> Result<Option<StoredRun>, StoreError> {
        self.inner.load_run(run_id, recent).await
    }
    async fn existing_event_ids(
        &self,
        run_id: &str,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        self.inner.existing_event_ids(run_id, ids).await
    }
    async fn append_run_events(
        &self,
        run: &RunSnapshot,
        events: &[RunEvent],
    ) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("down for the test".into()));
        }
        self.inner.append_run_events(run, events).await
    }
    async fn run_events(
        &self,
        run_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RunEvent>, StoreError> {
        self.inner.run_events(run_id, after, limit).await
    }
    async fn flow_runs(&self, flow_id: &str, limit: usize) -> Result<Vec<RunSummary>, StoreError> {
        self.inner.flow_runs(flow_id, limit).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_stored_before_anyone_sees_them() {
    let store = Arc::new(FlakyStore {
        inner: MemoryRunStore::new(),
        fail: AtomicBool::new(false),
    });
    let reg = registry_with(store.clone(), Arc::new(MemoryStore::new()), config());
    reg.ingest("r", logs(1..=3)).await.unwrap();
    let (out, mut rx) = Outbound::new(64, Arc::new(Metrics::default()));
    watch(&reg, "r", "w", &out, 3).await;
    assert!(matches!(
        next(&mut rx).await,
        ServerMessage::RunState { .. }
    ));

    // Step 1: the store fails: the engine gets an error, the watcher no event, only
    // an invitation to resume from what it has.
    store.fail.store(true, Ordering::SeqCst);
    assert!(matches!(
        reg.ingest("r", logs(4..=6)).await,
        Err(RunError::Store(_))
    ));
    match next(&mut rx).await {
        ServerMessage::ResumeFrom { seq, .. } => assert_eq!(seq, 3),
        other => panic!("expected resume_from, got {other:?}"),
    }

    // Step 2: the store is back; the engine retries; the sequence has no gap.
    store.fail.store(false, Ordering::SeqCst);
    let retried = reg.ingest("r", logs(4..=6)).await.unwrap();
    assert_eq!((retried.accepted, retried.last_seq), (3, 6));
    watch(&reg, "r", "w", &out, 3).await;
    let (seqs, _) = collect(&reg, "r", "w", &out, &mut rx, 6).await;
    assert_eq!(seqs, vec![4, 5, 6]);
    reg.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_started_pins_the_flows_heads_and_feeds_the_flow() {
    // A flow with one stored edit.
    let flows: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut doc = FlowDoc::new();
    doc.add_node(NewNode::new(
        "trigger",
        "start",
        Position { x: 0.0, y: 0.0 },
    ))
    .unwrap();
    let changes: Vec<ChangeRecord> = doc
        .all_changes()
        .into_iter()
        .map(|c| ChangeRecord {
            hash: c.hash.to_string(),
            bytes: c.bytes,
        })
        .collect();
    flows.append_changes("f", &changes).await.unwrap();
    let reg = registry_with(Arc::new(MemoryRunStore::new()), flows, config());
    let flow = reg.deps().flows.get_or_spawn("f").await.unwrap();
    let heads = ractor::call!(flow, FlowMsg::Heads).unwrap();
    assert_eq!(heads, doc.heads_hex());

    // A dashboard follows the flow's runs.
    let (out, mut rx) = Outbound::new(64, Arc::new(Metrics::default()));
    reg.feed().subscribe("f", "dash", out);

    reg.ingest("r", vec![event("start", RunEventKind::RunStarted)])
        .await
        .unwrap();
    let run = reg.snapshot("r").await.unwrap().unwrap();
    assert_eq!(run.flow_heads, heads);
    let stored = reg.events("r", 0, 10).await.unwrap();
    assert_eq!(
        stored[0].event.flow_heads.as_ref(),
        Some(&heads),
        "the event carries the heads too"
    );
    match next(&mut rx).await {
        ServerMessage::FlowRun { flow_id, run } => {
            assert_eq!(
                (flow_id.as_str(), run.id.as_str(), run.status),
                ("f", "r", RunStatus::Running)
            );
        }
        other => panic!("{other:?}"),
    }

    let mut fin = event("fin", RunEventKind::RunFinished);
    fin.status = Some(RunStatus::Failed);
    reg.ingest("r", vec![event("s", RunEventKind::StepStarted), fin])
        .await
        .unwrap();
    match next(&mut rx).await {
        ServerMessage::FlowRun { run, .. } => {
            assert_eq!((run.status, run.last_seq), (RunStatus::Failed, 3));
            assert!(run.finished_at.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert!(
        rx.frames.try_recv().is_err(),
        "a step event is not news for the feed"
    );
    reg.stop_all().await;
}

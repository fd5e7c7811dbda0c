//! The run actor: one per active run on this node.
//!
//! It sequences what engines report (1, 2, 3, … per run, no gaps, continuing from the
//! store after a reload), folds events into the [`RunSnapshot`], persists each batch,
//! and only then broadcasts it, so a watcher never sees an event the store lacks.
//!
//! # Watchers, replay and backpressure
//! Every watcher (a WebSocket session or an SSE stream) has a bounded [`Outbound`] queue
//! and a `delivered` mark: the last seq queued to it. The actor never waits on one:
//! - **Replaying**: after `run_state`, the events after `since_seq` come from memory
//!   (the last [`RunConfig::recent_events`]) or the store, in chunks sized by the
//!   queue's free capacity (keeping a small reserve for the session's replies, so a
//!   replay never causes a "too slow" close). When the queue is full the replay pauses
//!   and continues on a short timer ([`RunConfig::pump_interval`]); once `delivered`
//!   reaches the run's `last_seq` the watcher is live. Live events are not sent to a
//!   replaying watcher: the replay reaches them.
//! - **Live**: each new event is offered right after it is stored. If it does not fit,
//!   the watcher is **lagging**: nothing more is sent, and once its queue has half
//!   drained it gets `resume_from {seq: delivered}` and is dropped; the client
//!   resubscribes with `since_seq = seq`. No silent hole: every event up to `seq` was
//!   queued, and everything after it will be replayed.
//!
//! A watcher that subscribes again in the same session continues after
//! `max(since_seq, delivered)`: the events already queued to it still arrive (before
//! the new `run_state`), so none is sent twice.
//!
//! # Idempotency
//! Event ids already seen are dropped before sequencing: first within the batch, then
//! against the ids of the events in memory, then (only when memory does not hold the
//! whole run) against the store. A duplicate never consumes a sequence number.
//!
//! # Lifetime
//! The actor stops [`RunConfig::finished_grace`] after the run finished with no
//! watchers (or [`RunConfig::idle_grace`] after the last activity of a run that never
//! finished). A later request spawns a fresh actor that reloads the state and the
//! recent events from the store. If the store fails during an append, nothing changes
//! in memory, the caller gets the error, and the actor stops (telling watchers to
//! resume), so the next request reloads whatever the store really holds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowhub_protocol::{
    close, RequestId, RunEvent, RunEventInput, RunEventKind, RunSnapshot, RunSummary, ServerMessage,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{debug, info, warn, Instrument};

use super::feed::FlowRunsFeed;
use super::store::{RunStore, StoredRun};
use super::{apply, summary, validate_batch, RunError};
use crate::directory::ActorDirectory;
use crate::flow::{FlowMsg, FlowRegistry};
use crate::metrics::Metrics;
use crate::outbound::{Delivery, Outbound, SharedMessage};
use prometheus_client::metrics::counter::Counter;

/// How long an actor spawned for a new run waits for its first batch to be stored.
const UNSTORED_GRACE: Duration = Duration::from_secs(5);

/// Behaviour of a run actor (the state is [`RunState`]).
pub struct RunActor;

/// Tunables of run actors.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Events kept in memory for replays and duplicate checks.
    pub recent_events: usize,
    /// Log lines in a snapshot (older ones via `GET /v1/runs/{id}/events`).
    pub recent_logs: usize,
    /// How long a finished run's actor stays without watchers.
    pub finished_grace: Duration,
    /// How long an unfinished run's actor stays without watchers or events.
    pub idle_grace: Duration,
    /// Retry period of paused replays and of lagging watchers' `resume_from`.
    pub pump_interval: Duration,
    /// Most events sent to one watcher per replay step (the queue's free capacity
    /// limits it further).
    pub replay_chunk: usize,
    /// How long `run.started` waits for the flow's heads.
    pub heads_timeout: Duration,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            recent_events: 1024,
            recent_logs: 100,
            finished_grace: Duration::from_secs(60),
            idle_grace: Duration::from_secs(15 * 60),
            pump_interval: Duration::from_millis(5),
            replay_chunk: 512,
            heads_timeout: Duration::from_secs(5),
        }
    }
}

/// What every run actor on a node shares.
pub struct RunDeps {
    pub store: Arc<dyn RunStore>,
    /// Where `run.started` reads the flow's current heads.
    pub flows: FlowRegistry,
    pub metrics: Arc<Metrics>,
    pub config: RunConfig,
}

/// How a run actor starts: from the store, or as a new run of a flow.
pub(crate) enum RunStart {
    Stored(StoredRun),
    New { flow_id: String },
}

pub struct RunArgs {
    pub(crate) run_id: String,
    pub(crate) start: RunStart,
    pub(crate) deps: Arc<RunDeps>,
    pub(crate) node: RunNode,
}

/// What every run actor of a node shares besides its dependencies: where run actors
/// are found (an actor leaves before stopping), the per-flow runs feed, and counters.
#[derive(Clone)]
pub(crate) struct RunNode {
    pub(crate) directory: Arc<ActorDirectory<RunMsg>>,
    pub(crate) feed: FlowRunsFeed,
    pub(crate) counters: Arc<RunCounters>,
}

/// Counters of a node's run actors (for `/metrics`).
#[derive(Debug, Default)]
pub(crate) struct RunCounters {
    pub(crate) events_accepted: Counter,
    pub(crate) events_duplicate: Counter,
    pub(crate) resumes: Counter,
}

/// The answer to an ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IngestOutcome {
    /// New events, now stored and sequenced.
    pub accepted: usize,
    /// Events whose id the run already had (ignored).
    pub duplicates: usize,
    /// The run's last sequence number after this batch.
    pub last_seq: u64,
}

/// Who a run belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    pub flow_id: String,
    /// `false` while nothing of the run is stored yet.
    pub exists: bool,
}

pub enum RunMsg {
    /// A batch from an engine (validated here too).
    Ingest {
        events: Vec<RunEventInput>,
        reply: RpcReplyPort<Result<IngestOutcome, RunError>>,
    },
    Info(RpcReplyPort<RunInfo>),
    /// The current state; `None` while nothing is stored.
    Snapshot(RpcReplyPort<Option<RunSnapshot>>),
    /// Adds (or replaces) a watcher. The actor queues `run_state` (echoing
    /// `request_id`) before replying, then the events after `since_seq`.
    Watch {
        watcher_id: String,
        out: Outbound,
        since_seq: u64,
        request_id: Option<RequestId>,
        reply: RpcReplyPort<()>,
    },
    Unwatch {
        watcher_id: String,
    },
    /// Continue paused replays; resume lagging watchers whose queue drained.
    Pump,
    /// Events another node stored and published (`run:{id}` on the bus).
    Bus(Vec<u8>),
    /// Periodic check against the store, for events whose bus message was lost.
    Sync,
    StopIfIdle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Replaying,
    Live,
    /// A live event did not fit; `resume_from` is due once the queue drains.
    Lagging,
}

struct Watcher {
    out: Outbound,
    /// Last seq queued to this watcher.
    delivered: u64,
    mode: Mode,
}

pub struct RunState {
    run_id: String,
    run: RunSnapshot,
    /// Whether the run is in the store (false only before a new run's first append).
    stored: bool,
    /// The newest events, contiguous, ending at `run.last_seq`.
    recent: VecDeque<RunEvent>,
    /// Event ids of `recent`.
    recent_ids: HashSet<String>,
    watchers: HashMap<String, Watcher>,
    /// Stored batches not yet offered to watchers, the bus and the feed.
    unannounced: Vec<(Vec<RunEvent>, Vec<RunSummary>)>,
    pump_armed: bool,
    /// When the pending `StopIfIdle` fires (`None`: none pending). A shorter grace
    /// arms an earlier one; the later one then finds nothing to do.
    stop_due: Option<Instant>,
    last_activity: Instant,
    deps: Arc<RunDeps>,
    node: RunNode,
    /// The bus forwarder and the sync ticker, stopped with the actor.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    span: tracing::Span,
}

/// What run actors on different nodes tell each other: events `origin` has stored.
/// JSON; `v` is the format version (absent in the first release's messages, which
/// read as version 1 and are otherwise the same).
#[derive(serde::Serialize, serde::Deserialize)]
struct RunBusMessage {
    #[serde(default = "run_bus_v1")]
    v: u32,
    origin: String,
    events: Vec<RunEvent>,
}

/// The run bus format this release writes.
const RUN_BUS_VERSION: u32 = 2;

fn run_bus_v1() -> u32 {
    1
}

fn run_channel(run_id: &str) -> String {
    format!("run:{run_id}")
}

/// How often a run actor with watchers checks the store for events it missed.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

impl Actor for RunActor {
    type Msg = RunMsg;
    type State = RunState;
    type Arguments = RunArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RunMsg>,
        args: RunArgs,
    ) -> Result<RunState, ActorProcessingErr> {
        // Events ingested on other nodes arrive on the bus (at most once; the sync
        // tick reads the store for anything lost).
        let bus = args.deps.flows.deps().bus.clone();
        let sub = bus.subscribe(&run_channel(&args.run_id)).await?;
        let me = myself.clone();
        let mut tasks = vec![tokio::spawn(async move {
            let mut sub = sub;
            while let Some(msg) = sub.rx.recv().await {
                if me.cast(RunMsg::Bus(msg)).is_err() {
                    break;
                }
            }
        })];
        tasks.push(myself.send_interval(SYNC_INTERVAL, || RunMsg::Sync));
        let (run, recent, stored) = match args.start {
            RunStart::Stored(s) => (s.snapshot, s.recent, true),
            RunStart::New { flow_id } => (
                super::new_snapshot(&args.run_id, &flow_id),
                Vec::new(),
                false,
            ),
        };
        let span = tracing::info_span!("run", run_id = %args.run_id, flow_id = %run.flow_id);
        // Keep only a contiguous tail ending at last_seq (what the replay relies on).
        let mut tail: VecDeque<RunEvent> = VecDeque::new();
        for e in recent.into_iter().rev() {
            let expected = tail.front().map_or(run.last_seq, |f| f.seq - 1);
            if e.seq != expected || tail.len() >= args.deps.config.recent_events {
                break;
            }
            tail.push_front(e);
        }
        let recent_ids = tail.iter().map(|e| e.event.event_id.clone()).collect();
        span.in_scope(|| info!(last_seq = run.last_seq, status = ?run.status, "run opened"));
        Ok(RunState {
            run_id: args.run_id,
            run,
            stored,
            recent: tail,
            recent_ids,
            watchers: HashMap::new(),
            unannounced: Vec::new(),
            pump_armed: false,
            stop_due: None,
            last_activity: Instant::now(),
            deps: args.deps,
            node: args.node,
            tasks,
            span,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<RunMsg>,
        state: &mut RunState,
    ) -> Result<(), ActorProcessingErr> {
        // An actor opened by a request that never watched must not stay forever.
        state.arm_stop(&myself);
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<RunMsg>,
        state: &mut RunState,
    ) -> Result<(), ActorProcessingErr> {
        for t in state.tasks.drain(..) {
            t.abort();
        }
        state.node.directory.forget(&state.run_id, myself.get_id());
        // Watchers resubscribe (to a fresh actor) from what they were sent.
        for (_, w) in state.watchers.drain() {
            let resume = ServerMessage::ResumeFrom {
                run_id: state.run_id.clone(),
                seq: w.delivered,
            };
            Metrics::inc(&state.node.counters.resumes);
            if w.out.try_send_message(resume) == Delivery::Full {
                // Not even room to say so: close, the client reconnects and resumes.
                w.out.close(
                    close::TOO_SLOW,
                    "outbound queue overflowed: the client is not reading",
                );
            }
        }
        state.span.in_scope(|| info!("run closed"));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RunMsg>,
        msg: RunMsg,
        state: &mut RunState,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        async {
            match msg {
                RunMsg::Ingest { events, reply } => {
                    state.last_activity = Instant::now();
                    let result = state.ingest(events).await;
                    let failed = matches!(result, Err(RunError::Store(_)));
                    let _ = reply.send(result);
                    state.announce().await;
                    if failed {
                        // Memory is unchanged, but the store may or may not hold the
                        // batch: let a fresh actor reload what it really holds.
                        state.node.directory.forget(&state.run_id, myself.get_id());
                        myself.stop(Some("store failure".into()));
                        return;
                    }
                    if state.run.status.is_final() {
                        state.arm_stop(&myself);
                    }
                    state.arm_pump_if_needed(&myself);
                }
                RunMsg::Info(reply) => {
                    let _ = reply.send(RunInfo {
                        flow_id: state.run.flow_id.clone(),
                        exists: state.stored,
                    });
                }
                RunMsg::Snapshot(reply) => {
                    let _ = reply.send(state.stored.then(|| state.run.clone()));
                }
                RunMsg::Watch {
                    watcher_id,
                    out,
                    since_seq,
                    request_id,
                    reply,
                } => {
                    state.last_activity = Instant::now();
                    state.watch(watcher_id.clone(), out, since_seq, request_id);
                    let _ = reply.send(());
                    state.replay(&watcher_id).await;
                    state.arm_pump_if_needed(&myself);
                }
                RunMsg::Unwatch { watcher_id } => {
                    state.last_activity = Instant::now();
                    if state.watchers.remove(&watcher_id).is_some() {
                        debug!(watcher_id, "watcher left");
                    }
                    state.arm_stop(&myself);
                }
                RunMsg::Pump => {
                    state.pump_armed = false;
                    state.pump().await;
                    state.arm_pump_if_needed(&myself);
                    if state.watchers.is_empty() {
                        state.arm_stop(&myself);
                    }
                }
                RunMsg::Bus(bytes) => {
                    if let Ok(msg) = serde_json::from_slice::<RunBusMessage>(&bytes) {
                        // A later format may mean something else: dropped like a lost
                        // message (the store catch-up repairs it).
                        if msg.origin != state.node_id() && msg.v <= RUN_BUS_VERSION {
                            state.last_activity = Instant::now();
                            state.absorb(msg.events).await;
                            state.arm_pump_if_needed(&myself);
                        }
                    }
                }
                RunMsg::Sync => {
                    if !state.watchers.is_empty() {
                        state.absorb(Vec::new()).await;
                        state.arm_pump_if_needed(&myself);
                    }
                }
                RunMsg::StopIfIdle => {
                    if state.stop_due.is_some_and(|due| Instant::now() < due) {
                        return; // Superseded: an earlier check is still to come.
                    }
                    state.stop_due = None;
                    if !state.watchers.is_empty() {
                        return;
                    }
                    let grace = state.grace();
                    let idle = state.last_activity.elapsed();
                    if idle >= grace {
                        // Forget first: from here on, new requests spawn a fresh actor
                        // (which loads everything from the store, where all events are).
                        state.node.directory.forget(&state.run_id, myself.get_id());
                        myself.stop(Some("idle".into()));
                    } else {
                        state.arm_stop_after(&myself, grace - idle);
                    }
                }
            }
        }
        .instrument(span)
        .await;
        Ok(())
    }
}

impl RunState {
    fn node_id(&self) -> &str {
        &self.deps.flows.deps().node_id
    }

    /// Takes in events stored by another node, in sequence order. A gap (a lost bus
    /// message, or `events` empty on the sync tick) is filled from the store, which
    /// has every event before anyone could publish it.
    async fn absorb(&mut self, events: Vec<RunEvent>) {
        let mut incoming: VecDeque<RunEvent> = events
            .into_iter()
            .filter(|e| e.seq > self.run.last_seq)
            .collect();
        let gap = incoming
            .front()
            .is_none_or(|e| e.seq != self.run.last_seq + 1);
        if gap {
            match self
                .deps
                .store
                .run_events(&self.run_id, self.run.last_seq, 10_000)
                .await
            {
                Ok(stored) => {
                    incoming = stored
                        .into_iter()
                        .chain(incoming)
                        .filter(|e| e.seq > self.run.last_seq)
                        .collect()
                }
                Err(e) => return debug!(error = %e, "cannot read missed run events"),
            }
        }
        let mut taken = Vec::new();
        for event in incoming {
            if event.seq != self.run.last_seq + 1 {
                continue; // a duplicate or beyond a gap the store could not fill yet
            }
            let changed = apply(&mut self.run, &event, self.deps.config.recent_logs);
            if changed {
                self.node.feed.publish(&summary(&self.run));
            }
            self.stored = true;
            self.remember(event.clone());
            taken.push(event);
        }
        if !taken.is_empty() {
            debug!(
                events = taken.len(),
                last_seq = self.run.last_seq,
                "events from another node"
            );
            self.broadcast(&taken);
        }
    }

    async fn publish(&self, events: &[RunEvent]) {
        let msg = RunBusMessage {
            v: RUN_BUS_VERSION,
            origin: self.node_id().to_owned(),
            events: events.to_vec(),
        };
        let Ok(bytes) = serde_json::to_vec(&msg) else {
            return;
        };
        // At most once: a node that misses it reads the store on its sync tick.
        if let Err(e) = self
            .deps
            .flows
            .deps()
            .bus
            .publish(&run_channel(&self.run_id), bytes)
            .await
        {
            debug!(error = %e, "run bus publish failed");
        }
    }

    fn grace(&self) -> Duration {
        if !self.stored {
            // Spawned for an ingest that has not stored anything (yet, or ever: its
            // flow's heads could not be read). Long enough for the ingest to arrive.
            UNSTORED_GRACE.min(self.deps.config.idle_grace)
        } else if self.run.status.is_final() {
            self.deps.config.finished_grace
        } else {
            self.deps.config.idle_grace
        }
    }

    fn arm_stop(&mut self, myself: &ActorRef<RunMsg>) {
        if self.watchers.is_empty() {
            self.arm_stop_after(myself, self.grace());
        }
    }

    fn arm_stop_after(&mut self, myself: &ActorRef<RunMsg>, delay: Duration) {
        let due = Instant::now() + delay;
        if self.stop_due.is_some_and(|pending| pending <= due) {
            return;
        }
        self.stop_due = Some(due);
        // Slightly after, so the check in StopIfIdle sees the grace elapsed.
        myself.send_after(delay + Duration::from_millis(10), || RunMsg::StopIfIdle);
    }

    fn arm_pump_if_needed(&mut self, myself: &ActorRef<RunMsg>) {
        let needed = self.watchers.values().any(|w| w.mode != Mode::Live);
        if needed && !self.pump_armed {
            self.pump_armed = true;
            myself.send_after(self.deps.config.pump_interval, || RunMsg::Pump);
        }
    }

    /// Sequences and stores a batch. When another node ingested into the same run
    /// meanwhile, the store refuses our stale sequence numbers (its update is
    /// conditional on `last_seq`): take in what it stored and sequence again, so runs
    /// ingested at several nodes still get one gapless order.
    async fn ingest(&mut self, events: Vec<RunEventInput>) -> Result<IngestOutcome, RunError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = self.run.last_seq;
            match self.ingest_once(events.clone()).await {
                Err(RunError::Store(e)) if attempt < 4 => {
                    self.absorb(Vec::new()).await;
                    if self.run.last_seq == before {
                        return Err(RunError::Store(e)); // not a race: the store failed
                    }
                    debug!(attempt, "another node ingested meanwhile; sequencing again");
                }
                other => return other,
            }
        }
    }

    async fn ingest_once(&mut self, events: Vec<RunEventInput>) -> Result<IngestOutcome, RunError> {
        validate_batch(&events)?;
        if events[0].flow_id != self.run.flow_id {
            return Err(RunError::Invalid(super::InvalidEvent::new(
                "events[0].flow_id",
                format!(
                    "run `{}` belongs to flow `{}`",
                    self.run_id, self.run.flow_id
                ),
            )));
        }
        let total = events.len();
        let fresh = self.drop_duplicates(events).await?;
        let duplicates = total - fresh.len();
        Metrics::add(&self.node.counters.events_duplicate, duplicates as u64);
        if fresh.is_empty() {
            return Ok(IngestOutcome {
                accepted: 0,
                duplicates,
                last_seq: self.run.last_seq,
            });
        }

        // Sequence and fold into a copy: memory changes only once the store has it all.
        let mut next = self.run.clone();
        let mut sequenced = Vec::with_capacity(fresh.len());
        let mut changes: Vec<RunSummary> = Vec::new();
        let mut heads: Option<Vec<String>> = None;
        for mut input in fresh {
            if input.kind == RunEventKind::RunStarted && input.flow_heads.is_none() {
                if heads.is_none() {
                    heads = Some(self.flow_heads().await?);
                }
                input.flow_heads = heads.clone();
            }
            let event = RunEvent {
                seq: next.last_seq + 1,
                event: input,
            };
            if apply(&mut next, &event, self.deps.config.recent_logs) {
                changes.push(summary(&next));
            }
            sequenced.push(event);
        }
        if !self.stored && changes.is_empty() {
            // A new run appears in its flow's feed even before it starts.
            changes.push(summary(&next));
        }
        self.deps
            .store
            .append_run_events(&next, &sequenced)
            .await
            .map_err(|e| {
                warn!(error = %e, events = sequenced.len(), "storing run events failed");
                RunError::Store(e)
            })?;

        // Stored: now it may be seen.
        self.stored = true;
        self.run = next;
        let accepted = sequenced.len();
        for e in &sequenced {
            self.remember(e.clone());
        }
        // Announced (watchers, other nodes, the flow's feed) once the engine has its
        // answer: see `RunState::announce`.
        self.unannounced.push((sequenced, changes));
        Metrics::add(&self.node.counters.events_accepted, accepted as u64);
        debug!(
            accepted,
            duplicates,
            last_seq = self.run.last_seq,
            "events ingested"
        );
        Ok(IngestOutcome {
            accepted,
            duplicates,
            last_seq: self.run.last_seq,
        })
    }

    /// The batch without events the run already has (or that repeat within it).
    async fn drop_duplicates(
        &self,
        events: Vec<RunEventInput>,
    ) -> Result<Vec<RunEventInput>, RunError> {
        let mut in_batch = HashSet::new();
        let mut fresh: Vec<RunEventInput> = events
            .into_iter()
            .filter(|e| {
                !self.recent_ids.contains(&e.event_id) && in_batch.insert(e.event_id.clone())
            })
            .collect();
        // Memory holds every event of the run unless older ones were let go.
        let memory_is_complete = self
            .recent
            .front()
            .map_or(self.run.last_seq == 0, |e| e.seq == 1);
        if !fresh.is_empty() && !memory_is_complete {
            let ids: Vec<String> = fresh.iter().map(|e| e.event_id.clone()).collect();
            let known = self
                .deps
                .store
                .existing_event_ids(&self.run_id, &ids)
                .await
                .map_err(RunError::Store)?;
            fresh.retain(|e| !known.contains(&e.event_id));
        }
        Ok(fresh)
    }

    /// The flow's current heads, for a `run.started` that did not name them.
    async fn flow_heads(&self) -> Result<Vec<String>, RunError> {
        let flow_id = &self.run.flow_id;
        let timeout = self.deps.config.heads_timeout;
        let flows = &self.deps.flows;
        let ask = async {
            // A flow actor may retire between lookup and call: retry once.
            for _ in 0..2 {
                let actor = flows
                    .get_or_spawn(flow_id)
                    .await
                    .map_err(|e| RunError::Flow(e.to_string()))?;
                if let Ok(heads) = ractor::call!(actor, FlowMsg::Heads) {
                    return Ok(heads);
                }
            }
            Err(RunError::Flow("the flow actor stopped".into()))
        };
        tokio::time::timeout(timeout, ask)
            .await
            .map_err(|_| RunError::Flow("timed out reading the flow's heads".into()))?
    }

    fn remember(&mut self, event: RunEvent) {
        self.recent_ids.insert(event.event.event_id.clone());
        self.recent.push_back(event);
        while self.recent.len() > self.deps.config.recent_events.max(1) {
            if let Some(old) = self.recent.pop_front() {
                self.recent_ids.remove(&old.event.event_id);
            }
        }
    }

    /// Offers stored batches to watchers, other nodes and the flow's feed.
    ///
    /// Runs after the ingest is answered: the events are durable by then (which is
    /// what the answer promises), and the engine can send its next batch while this
    /// actor fans the last one out to thousands of watchers, instead of waiting for
    /// every one of them. Nothing else runs in between (one message at a time), and
    /// watchers resume by `seq` anyway.
    async fn announce(&mut self) {
        for (events, changes) in std::mem::take(&mut self.unannounced) {
            self.broadcast(&events);
            self.publish(&events).await;
            for change in &changes {
                self.node.feed.publish(change);
            }
        }
    }

    /// Offers new events to every live watcher.
    fn broadcast(&mut self, events: &[RunEvent]) {
        if !self.watchers.values().any(|w| w.mode == Mode::Live) {
            return;
        }
        // Encoded once for every watcher.
        let encoded: Vec<(u64, SharedMessage)> = events
            .iter()
            .map(|e| {
                let msg = ServerMessage::RunEvent {
                    run_id: self.run_id.clone(),
                    event: e.clone(),
                };
                (e.seq, SharedMessage::new(msg))
            })
            .collect();
        self.watchers.retain(|id, w| {
            if w.mode != Mode::Live {
                return true;
            }
            for (seq, text) in &encoded {
                if *seq <= w.delivered {
                    continue;
                }
                if w.out.capacity() <= reserve(&w.out) {
                    w.mode = Mode::Lagging;
                    return true;
                }
                match w.out.try_send_message(text.clone()) {
                    Delivery::Queued => w.delivered = *seq,
                    Delivery::Full => {
                        debug!(watcher_id = %id, delivered = w.delivered, "watcher lagging");
                        w.mode = Mode::Lagging;
                        return true;
                    }
                    Delivery::Closed => return false,
                }
            }
            true
        });
    }

    fn watch(
        &mut self,
        watcher_id: String,
        out: Outbound,
        since_seq: u64,
        request_id: Option<RequestId>,
    ) {
        let last = self.run.last_seq;
        // Events already queued to this watcher still arrive: continue after them.
        let already = self.watchers.get(&watcher_id).map_or(0, |w| w.delivered);
        let delivered = since_seq.max(already).min(last);
        out.send_control(ServerMessage::RunState {
            id: request_id,
            run: self.run.clone(),
        });
        let mode = if delivered == last {
            Mode::Live
        } else {
            Mode::Replaying
        };
        debug!(watcher_id, since_seq, delivered, ?mode, "watcher joined");
        self.watchers.insert(
            watcher_id,
            Watcher {
                out,
                delivered,
                mode,
            },
        );
    }

    async fn pump(&mut self) {
        let due: Vec<(String, Mode)> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.mode != Mode::Live)
            .map(|(id, w)| (id.clone(), w.mode))
            .collect();
        for (id, mode) in due {
            match mode {
                Mode::Replaying => self.replay(&id).await,
                Mode::Lagging => self.resume_lagging(&id),
                Mode::Live => {}
            }
        }
    }

    /// Sends a replaying watcher as much as its queue takes; makes it live once it
    /// has caught up.
    async fn replay(&mut self, watcher_id: &str) {
        // A few chunks per call at most, so ingest is never held up for long; the
        // pump continues on its timer.
        for _ in 0..4 {
            let Some(w) = self.watchers.get_mut(watcher_id) else {
                return;
            };
            if w.mode != Mode::Replaying {
                return;
            }
            if w.out.is_closed() {
                self.watchers.remove(watcher_id);
                return;
            }
            let last = self.run.last_seq;
            if w.delivered >= last {
                w.mode = Mode::Live;
                debug!(
                    watcher_id,
                    delivered = w.delivered,
                    "replay done; watcher live"
                );
                return;
            }
            let free = w.out.capacity().saturating_sub(reserve(&w.out));
            let room = usize::try_from(last - w.delivered).unwrap_or(usize::MAX);
            let n = free.min(room).min(self.deps.config.replay_chunk.max(1));
            if n == 0 {
                return; // The queue is full: the pump continues later.
            }
            let from = w.delivered;
            let chunk = match self.events_after(from, n).await {
                Ok(chunk) => chunk,
                Err(e) => {
                    warn!(watcher_id, error = %e, "replay read failed; retrying");
                    return;
                }
            };
            if chunk.first().map(|e| e.seq) != Some(from + 1) {
                // The store lacks events the run has sequenced: never leave a hole,
                // ask the watcher to come back.
                warn!(
                    watcher_id,
                    from, "replay found a gap; asking the watcher to resume"
                );
                if let Some(w) = self.watchers.get_mut(watcher_id) {
                    w.mode = Mode::Lagging;
                }
                return;
            }
            let Some(w) = self.watchers.get_mut(watcher_id) else {
                return;
            };
            for e in chunk {
                let seq = e.seq;
                let msg = ServerMessage::RunEvent {
                    run_id: self.run_id.clone(),
                    event: e,
                };
                match w.out.try_send_message(msg) {
                    Delivery::Queued => w.delivered = seq,
                    // Another actor filled the queue meanwhile: continue later.
                    Delivery::Full => return,
                    Delivery::Closed => {
                        self.watchers.remove(watcher_id);
                        return;
                    }
                }
            }
        }
    }

    /// Up to `limit` events after `after`, from memory when it has them.
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<RunEvent>, RunError> {
        if let Some(first) = self.recent.front() {
            if after + 1 >= first.seq {
                let skip = usize::try_from(after + 1 - first.seq).unwrap_or(usize::MAX);
                return Ok(self.recent.iter().skip(skip).take(limit).cloned().collect());
            }
        }
        self.deps
            .store
            .run_events(&self.run_id, after, limit)
            .await
            .map_err(RunError::Store)
    }

    /// A lagging watcher whose queue has half drained gets `resume_from` and leaves.
    fn resume_lagging(&mut self, watcher_id: &str) {
        let Some(w) = self.watchers.get(watcher_id) else {
            return;
        };
        if w.out.is_closed() {
            self.watchers.remove(watcher_id);
            return;
        }
        if w.out.capacity() * 2 < w.out.max_capacity() {
            return;
        }
        let resume = ServerMessage::ResumeFrom {
            run_id: self.run_id.clone(),
            seq: w.delivered,
        };
        match w.out.try_send_message(resume) {
            Delivery::Full => {}
            Delivery::Queued | Delivery::Closed => {
                debug!(
                    watcher_id,
                    seq = w.delivered,
                    "lagging watcher told to resume"
                );
                Metrics::inc(&self.node.counters.resumes);
                self.watchers.remove(watcher_id);
            }
        }
    }
}

/// Queue slots run events leave free for the session's replies and acks, so that a
/// burst of run events cannot get a session closed for a control frame.
fn reserve(out: &Outbound) -> usize {
    out.max_capacity() / 16
}

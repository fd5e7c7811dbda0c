//! The flow actor: owns one flow's Automerge document on this node.
//!
//! Every edit from a local peer goes through [`FlowMsg::Sync`] (or
//! [`FlowMsg::Changes`]): the actor refuses it if the peer may not edit or the result
//! breaks the schema (the document is left exactly as it was), otherwise hands the
//! new changes to the store, and only once they are stored acknowledges them to their
//! author, hands them to every other local peer and publishes them on the bus.
//!
//! # Pipelined persistence
//!
//! The store append runs beside the actor: while one append is in flight, the next
//! peer messages are validated and applied, and their changes queue up for the next
//! append (one append, so one commit, for all of them). Appends complete in order,
//! and each completion acknowledges and fans out its changes in the order they were
//! applied. So the document may hold changes the store does not have yet, and nothing
//! that reads it may show them to anybody before they are stored:
//! - sync rounds for peers wait until no append is pending (`sync_due`): a sync
//!   message is generated from the whole document;
//! - every other message that reads the document or replaces it (a join, a JSON read,
//!   typed edits, the bus, the store watch, a reload) first waits for the pending
//!   appends (`drain`), which gives it exactly the old one-message-at-a-time view;
//! - heads announcements, JSON patches and compaction skip a tick with appends pending.
//!
//! A failed append rolls the document back to the store and refuses every change it
//! or the queue behind it held: none of them was acknowledged or forwarded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowhub_crdt::{
    ChangeHash, ChangeSummary, ChangesOutcome, CrdtError, Edit, FlowDiff, FlowDoc, PeerLink,
    Repair, Repaired, Route, StoredChange,
};
use flowhub_protocol::frame::encode_flow_changes;
use flowhub_protocol::json_patch;
use flowhub_protocol::{Cursor, ErrorCode, RequestId, Role, ServerMessage};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use super::presence::{PresenceBook, PresenceChanges, FLUSH_INTERVAL};
use crate::bus::{channel, Bus, BusFormat, FlowBusMessage, PresenceUpdate};
use crate::directory::ActorDirectory;
use crate::error::{ActorsError, Result};
use crate::metrics::Metrics;
use crate::outbound::{Delivery, Outbound, SharedMessage};
use crate::store::{ActorBinding, ChangeRecord, FlowVersions, MemberAccess, Snapshot, Store};

/// Behaviour of a flow actor (the state is [`FlowState`]).
pub struct FlowActor;

/// Tunables of flow actors.
#[derive(Debug, Clone)]
pub struct FlowConfig {
    /// How long a flow stays open after its last peer left (avoids reloading a flow
    /// that people leave and rejoin within seconds).
    pub idle_eviction: Duration,
    /// Compact the change log into a snapshot once this many changes were stored since
    /// the last snapshot.
    pub compact_after: usize,
    /// Period of housekeeping: resyncing lagging peers, publishing heads.
    pub tick: Duration,
    /// After its heads change, a flow actor publishes them on the bus at once and
    /// then `heads_repeats` more times, this far apart, so a node that missed the
    /// changes (the bus is at most once) notices within seconds and catches up from
    /// the store. Then it says nothing until the heads change again: an idle flow
    /// costs no bus traffic, whatever the number of open flows (the store watch below
    /// remains the bound when every one of these messages is lost).
    pub heads_interval: Duration,
    /// How many times heads are published again after a change (see `heads_interval`).
    pub heads_repeats: u32,
    /// The bus format this node writes (it reads every known one): the previous
    /// release's during a rolling upgrade from it, and in mixed-version tests.
    pub bus_format: BusFormat,
    /// How often the node polls the store for the versions of its open flows
    /// ([`FlowRegistry::spawn_store_watch`](crate::flow::FlowRegistry::spawn_store_watch)): the bound on how long a replica stays
    /// behind the store, or a revoked user keeps access, when bus messages are lost.
    pub store_watch_interval: Duration,
    /// Largest sync message that may carry changes (`too_large` above).
    pub max_change_bytes: usize,
    /// Largest document, measured as stored bytes (snapshot plus changes since);
    /// edits that would grow it beyond get `too_large`.
    pub max_doc_bytes: usize,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            idle_eviction: Duration::from_secs(30),
            compact_after: 1000,
            tick: Duration::from_millis(250),
            heads_interval: Duration::from_secs(1),
            heads_repeats: 2,
            bus_format: BusFormat::default(),
            store_watch_interval: Duration::from_secs(1),
            max_change_bytes: 1 << 20,
            max_doc_bytes: 64 << 20,
        }
    }
}

/// What every flow actor on a node shares.
pub struct FlowDeps {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub node_id: String,
    pub metrics: Arc<Metrics>,
    pub config: FlowConfig,
}

/// What the flow actor does with a peer's changes that would break the flow schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnInvalid {
    /// Refuse them: nothing is stored or forwarded, the peer gets a
    /// `schema_violation` error and rolls back (flowhub's own clients).
    #[default]
    Refuse,
    /// Accept them and store, together with them, a repair change the hub authors
    /// ([`FlowDoc::repair_schema`]), so the flow stays valid and the peer's later
    /// edits still land. For peers that cannot roll back: a stock automerge-repo
    /// `Repo` keeps a refused change and would resend it forever, so refusing would
    /// lock it out. The peer is told with [`ServerMessage::Repaired`].
    Repair,
}

pub struct FlowArgs {
    pub flow_id: String,
    pub deps: Arc<FlowDeps>,
    /// Where this node's flow actors are found; the actor leaves it before stopping.
    pub directory: Arc<ActorDirectory<FlowMsg>>,
}

pub enum FlowMsg {
    /// A session subscribes. The actor queues `flow_state` (echoing `request_id`) and,
    /// with `greet`, the first sync message to `out` before replying.
    Join {
        session_id: String,
        /// From the verified token; presence shows them.
        user_id: String,
        name: String,
        /// The role the token grants, and the effective role after membership
        /// overrides (the two differ when `flow_members` restricts or grants).
        token_role: Option<Role>,
        role: Role,
        out: Outbound,
        request_id: Option<RequestId>,
        /// The session's edits not acknowledged yet (`subscribe_flow.pending`): those
        /// the document holds are acked right after `flow_state`.
        pending: Vec<ChangeHash>,
        /// The session takes change frames (`subscribe_flow.stream`).
        stream: bool,
        /// What happens to this peer's changes that break the schema.
        on_invalid: OnInvalid,
        /// Open the sync exchange now. `false` when the peer's own sync message follows
        /// at once (a stock automerge-repo `Repo` joins a flow by syncing it): answering
        /// that message instead saves a message carrying a bloom filter of the whole
        /// history, and keeps a peer that has nothing from being sent the whole document
        /// twice (its answer to the greeting still has empty heads, which Automerge
        /// reads as a peer that lost its data).
        greet: bool,
        reply: RpcReplyPort<()>,
    },
    Leave {
        session_id: String,
    },
    /// A session's role changed while subscribed (a new token). `None`: no access.
    SetRole {
        session_id: String,
        token_role: Option<Role>,
        role: Option<Role>,
    },
    /// A `flow_members` row changed (`None`: removed, the token decides again).
    MemberChanged {
        user_id: String,
        access: Option<MemberAccess>,
    },
    /// A presence update from a subscribed session.
    Presence {
        session_id: String,
        cursor: Option<Cursor>,
        selection: Option<Vec<String>>,
        color: Option<String>,
    },
    /// Time to send the coalesced presence diff.
    PresenceFlush,
    /// The hub nodes currently alive: presence of sessions on any other node goes.
    LiveNodes(Arc<std::collections::HashSet<String>>),
    /// An Automerge sync message from a subscribed session. The reply comes once the
    /// message was validated and applied (its changes may still be on their way to the
    /// store: the ack follows separately), or, when too much waits for the store,
    /// once that is stored; either way the session's reader gets backpressure. It is
    /// `false` when the session is not (or no longer, after a revocation) a peer.
    Sync {
        session_id: String,
        payload: Vec<u8>,
        reply: RpcReplyPort<bool>,
    },
    /// A change frame from a session that subscribed with `stream`: its new changes,
    /// without the sync protocol. Handled and answered like [`FlowMsg::Sync`].
    Changes {
        session_id: String,
        payload: Vec<u8>,
        reply: RpcReplyPort<bool>,
    },
    /// The store append with this id finished (see "Pipelined persistence" above).
    Appended(u64),
    /// The store finished the compaction this actor started (see `maybe_compact`).
    Compacted(Compacted),
    /// Waits until every change this actor applied is stored, acknowledged and fanned
    /// out (a session that sent edits calls it before it closes, so a draining node
    /// acknowledges every edit it stored).
    Flush(RpcReplyPort<()>),
    /// A message from another node, via the bus.
    Bus(Vec<u8>),
    Tick,
    EvictIfIdle,
    /// The flow as JSON (`{id, name, heads, nodes, edges}`).
    ToJson(RpcReplyPort<serde_json::Value>),
    /// Sorted hex heads.
    Heads(RpcReplyPort<Vec<String>>),
    /// Typed edits from a caller without Automerge (`POST /v1/flows/{id}/edits`,
    /// `restore`): the hub applies them as one change of its own, stores it, and only
    /// then answers, fans it out and publishes it, like any edit. The caller checked
    /// the role.
    ApplyEdits {
        request: EditRequest,
        reply: RpcReplyPort<std::result::Result<EditsApplied, EditsRefused>>,
    },
    /// A read-only subscriber of the flow as JSON (`subscribe_flow` with `format:
    /// json`, the SSE stream): it gets `flow_json` (or, with `since_heads` this
    /// replica knows, one `flow_patch` from there), then a `flow_patch` per tick in
    /// which the flow changed. The caller checked that it may read.
    JoinJson {
        session_id: String,
        user_id: String,
        token_role: Option<Role>,
        role: Role,
        /// Echoed in the `flow_state` sent first.
        request_id: Option<RequestId>,
        since_heads: Vec<String>,
        out: Outbound,
        reply: RpcReplyPort<()>,
    },
    /// Up to `limit` changes, newest first, before `before` (a change hash), each
    /// with what it did (`FlowDoc::change_summaries`).
    History {
        limit: usize,
        before: Option<ChangeHash>,
        reply: RpcReplyPort<std::result::Result<Vec<ChangeSummary>, EditsRefused>>,
    },
    /// The typed diff from one version of the flow to another (`to: None`: now).
    Diff {
        from: Vec<ChangeHash>,
        to: Option<Vec<ChangeHash>>,
        reply: RpcReplyPort<std::result::Result<FlowDiff, EditsRefused>>,
    },
    /// The flow's versions in the store, polled by the registry's store watch
    /// ([`FlowRegistry::spawn_store_watch`](crate::flow::FlowRegistry::spawn_store_watch)): the actor catches up on changes and
    /// re-reads memberships that the bus did not bring.
    StoreVersions(FlowVersions),
}

/// The user the hub's own changes (repairs, JSON edits) are attributed to; a JSON
/// edit's change also names the requesting user in its message.
pub const HUB_USER: &str = "flowhub";

/// How the message of a JSON-edits change starts; the verified user id follows (then
/// ` key=` and the idempotency key, if any).
pub const EDITS_MESSAGE_PREFIX: &str = "flowhub edits user=";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What [`FlowMsg::ApplyEdits`] applies.
#[derive(Debug, Clone)]
pub struct EditRequest {
    /// The verified caller, recorded in the change's message with the key.
    pub user_id: String,
    pub edits: EditSource,
    /// A retry with the same key (per user and flow) is answered with the change the
    /// first request made, and applies nothing. The key is kept in that change's
    /// message, so it holds across restarts and nodes.
    pub idempotency_key: Option<String>,
}

/// The edits of an [`EditRequest`].
#[derive(Debug, Clone)]
pub enum EditSource {
    /// Typed edits, applied in order as one change.
    Edits(Vec<Edit>),
    /// Make the flow equal to what it was at these heads, as one new change (the
    /// edits of the diff from now to then): non-destructive, history keeps all.
    RestoreTo(Vec<ChangeHash>),
}

/// The answer to an applied [`EditRequest`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EditsApplied {
    /// Hex hash of the change the edits made (or, `replayed`, had made).
    pub change: String,
    /// The flow's heads after it.
    pub heads: Vec<String>,
    /// The idempotency key named an earlier request: nothing was applied now.
    pub replayed: bool,
}

/// Why edits (or a diff) were refused; nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditsRefused {
    pub code: ErrorCode,
    pub message: String,
}

impl EditsRefused {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        EditsRefused {
            code,
            message: message.into(),
        }
    }
}

impl From<CrdtError> for EditsRefused {
    fn from(e: CrdtError) -> Self {
        let code = match &e {
            CrdtError::NodeNotFound(_)
            | CrdtError::EdgeNotFound(_)
            | CrdtError::UnknownHeads(_) => ErrorCode::NotFound,
            CrdtError::Schema(_) => ErrorCode::SchemaViolation,
            _ => ErrorCode::BadRequest,
        };
        EditsRefused::new(code, e.to_string())
    }
}

/// A JSON subscriber (see [`FlowMsg::JoinJson`]).
struct JsonWatcher {
    user_id: String,
    token_role: Option<Role>,
    out: Outbound,
    /// A patch did not fit its queue: it gets the whole flow once the queue drains.
    stale: bool,
}

struct Peer {
    user_id: String,
    token_role: Option<Role>,
    role: Role,
    out: Outbound,
    /// A presence diff was dropped; send the full state when the queue drains.
    presence_stale: bool,
    /// Sync state and streaming (see `flowhub_crdt::stream`).
    link: PeerLink,
    /// Its queue was full: nothing more is sent until it drains (see `on_tick`), then
    /// a sync round from what it was sent.
    lagging: bool,
    on_invalid: OnInvalid,
    /// From the verified token, for history attribution.
    name: String,
}

pub struct FlowState {
    flow_id: String,
    /// The flow id every sync message queued to a session carries (one allocation).
    sync_flow_id: Arc<str>,
    doc: FlowDoc,
    /// Boxed: a `Peer` is a few hundred bytes (mostly its sync state), and a hash map
    /// keeps up to half its slots empty; empty slots of a box cost 8 bytes each.
    peers: HashMap<String, Box<Peer>>,
    deps: Arc<FlowDeps>,
    directory: Arc<ActorDirectory<FlowMsg>>,
    /// Hashes stored since the last snapshot: what the next compaction covers.
    uncompacted: Vec<String>,
    /// The heads most recently announced on the bus (the loaded heads at first: a
    /// flow that only opened has nothing to announce).
    last_heads_published: Vec<ChangeHash>,
    /// When they were last announced (`None`: due now).
    last_heads_at: Option<Instant>,
    /// Announcements still due for `last_heads_published`.
    heads_announcements_due: u32,
    /// JSON subscribers, by session id.
    json_watchers: HashMap<String, JsonWatcher>,
    /// The flow as JSON subscribers last got it, and its heads (only while there are
    /// JSON subscribers: computing it costs a read of the whole flow).
    json_view: Option<(Vec<ChangeHash>, serde_json::Value)>,
    /// Automerge actor (hex) -> the user it belongs to, loaded on first use
    /// (see [`FlowState::attribute`]).
    owners: Option<HashMap<String, String>>,
    presence: PresenceBook,
    /// Local sessions that left since the last presence publish.
    local_left: Vec<String>,
    presence_flush_armed: bool,
    /// Stored bytes of the document (snapshot plus changes since), for the size limit.
    doc_bytes: usize,
    /// The store's versions as of this replica's last load or catch-up.
    versions_seen: FlowVersions,
    /// Appends this actor committed since `versions_seen.changes` was read: a store
    /// version of exactly `seen + own_appends` means no other node wrote.
    own_appends: u64,
    /// The heads of the store's snapshot as of this replica's last load, catch-up or
    /// compaction (inner `None`: no snapshot); `None` when unknown (see
    /// `compaction_base`).
    stored_snapshot_heads: Option<Option<Vec<String>>>,
    /// A compaction is being written (one at a time).
    compacting: bool,
    /// Reloads from the store so far (see [`Compacted`]).
    loads: u64,
    empty_since: Option<Instant>,
    /// The store append in flight, if any.
    appending: Option<Append>,
    /// Applied changes waiting for the next append (the one in flight holds others).
    queued: Vec<PendingCommit>,
    /// Bytes of the changes in `appending` and `queued`.
    storing_bytes: usize,
    next_append_id: u64,
    /// Peers owed a sync round once no append is pending.
    sync_due: std::collections::HashSet<String>,
    /// An append's commits are being fanned out: sync rounds wait until all are (see
    /// `finish_append`).
    fanning_out: bool,
    /// When the peer message in hand was taken (for `flowhub_edit_ack_seconds`).
    edit_taken_at: Option<Instant>,
    tasks: Vec<JoinHandle<()>>,
    span: tracing::Span,
}

/// A compaction's outcome, back from the task that wrote it ([`FlowMsg::Compacted`]).
#[derive(Debug)]
pub struct Compacted {
    /// `FlowState::loads` when the snapshot was taken: a reload since then replaced
    /// the change log's bookkeeping, which this outcome must not touch.
    loads: u64,
    /// How many of the oldest `uncompacted` hashes the snapshot covers.
    covered: usize,
    /// The snapshot's heads and size, and the stored size when it was taken.
    heads: Vec<String>,
    size: usize,
    doc_bytes_then: usize,
    result: std::result::Result<(), crate::store::StoreError>,
}

/// Changes one message brought, applied to the document and on their way to the
/// store; acknowledged and fanned out once stored.
struct PendingCommit {
    /// The peer that sent them (it gets the ack).
    session_id: String,
    /// The document's heads before and after them.
    before: Vec<ChangeHash>,
    after: Vec<ChangeHash>,
    changes: Vec<StoredChange>,
    /// The peer that made every one of `changes` (`None` when the hub added a repair,
    /// so the fan-out reaches the sender too).
    author: Option<String>,
    /// Sent to the peer after its ack (a repair notice).
    notice: Option<ServerMessage>,
    /// When the actor took the peer's message (for `flowhub_edit_ack_seconds`).
    taken_at: Option<Instant>,
}

/// One store append in flight: the commits it stores, and where its result arrives.
struct Append {
    id: u64,
    commits: Vec<PendingCommit>,
    result: tokio::sync::oneshot::Receiver<AppendResult>,
}

/// The records an append stored (handed back for the bus), and how it went.
type AppendResult = (Vec<ChangeRecord>, Duration, Result<()>);

/// With this many commits or bytes waiting for the store, a peer's message is
/// answered only once they are stored: the bound on what an actor holds unstored.
const MAX_QUEUED_COMMITS: usize = 256;
const MAX_QUEUED_BYTES: usize = 4 << 20;

impl Actor for FlowActor {
    type Msg = FlowMsg;
    type State = FlowState;
    type Arguments = FlowArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<FlowMsg>,
        args: FlowArgs,
    ) -> Result<FlowState, ActorProcessingErr> {
        let span = tracing::info_span!("flow", flow_id = %args.flow_id);
        // Subscribe before loading: a change another node publishes after our load
        // is queued on the subscription rather than missed (duplicates are harmless).
        let sub = args
            .deps
            .bus
            .subscribe(&channel::flow(&args.flow_id))
            .await?;
        let Loaded {
            mut doc,
            uncompacted,
            doc_bytes,
            versions: versions_seen,
            snapshot_heads,
        } = load(&*args.deps.store, &args.flow_id)
            .instrument(span.clone())
            .await?;
        // Loaded from the store, which every other replica reads too: nothing to
        // announce until the heads change.
        let loaded_heads = doc.heads();
        let mut tasks = Vec::new();
        let me = myself.clone();
        let own = args.deps.node_id.clone();
        tasks.push(tokio::spawn(async move {
            // Bind the whole subscription: using only `sub.rx` would capture just that
            // field and drop the guard at once, which unsubscribes.
            let mut sub = sub;
            while let Some(msg) = sub.rx.recv().await {
                // Our own publishes come back; never bother the actor with them.
                if FlowBusMessage::origin_of(&msg) == Some(own.as_str()) {
                    continue;
                }
                if me.cast(FlowMsg::Bus(msg)).is_err() {
                    break;
                }
            }
        }));
        tasks.push(myself.send_interval(args.deps.config.tick, || FlowMsg::Tick));
        args.deps.metrics.flows_open.inc();
        span.in_scope(|| info!(changes = uncompacted.len(), "flow opened"));
        Ok(FlowState {
            sync_flow_id: Arc::from(args.flow_id.as_str()),
            flow_id: args.flow_id,
            doc,
            peers: HashMap::new(),
            deps: args.deps,
            directory: args.directory,
            uncompacted,
            last_heads_published: loaded_heads,
            last_heads_at: None,
            heads_announcements_due: 0,
            owners: None,
            json_watchers: HashMap::new(),
            json_view: None,
            presence: PresenceBook::default(),
            local_left: Vec::new(),
            presence_flush_armed: false,
            doc_bytes,
            versions_seen,
            own_appends: 0,
            stored_snapshot_heads: Some(snapshot_heads),
            compacting: false,
            loads: 0,
            empty_since: Some(Instant::now()),
            appending: None,
            queued: Vec::new(),
            storing_bytes: 0,
            next_append_id: 0,
            sync_due: Default::default(),
            fanning_out: false,
            edit_taken_at: None,
            tasks,
            span,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<FlowMsg>,
        state: &mut FlowState,
    ) -> Result<(), ActorProcessingErr> {
        // A flow opened by a request that never joined (e.g. GET) must not stay forever.
        arm_eviction(&myself, state);
        // Learn who is already here on other nodes instead of waiting for them to move.
        let request = FlowBusMessage::PresenceRequest {
            origin: state.deps.node_id.clone(),
        };
        state.publish(request).await;
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<FlowMsg>,
        state: &mut FlowState,
    ) -> Result<(), ActorProcessingErr> {
        for t in state.tasks.drain(..) {
            t.abort();
        }
        state.directory.forget(&state.flow_id, myself.get_id());
        state.deps.metrics.flows_open.dec();
        state.span.in_scope(|| info!("flow closed"));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<FlowMsg>,
        msg: FlowMsg,
        state: &mut FlowState,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        let outcome = async {
            if reads_the_document(&msg) {
                // Shows or replaces the document: only once it holds nothing unstored.
                state.drain(&myself).await?;
            }
            match msg {
                FlowMsg::Join {
                    session_id,
                    user_id,
                    name,
                    token_role,
                    role,
                    out,
                    request_id,
                    pending,
                    stream,
                    on_invalid,
                    greet,
                    reply,
                } => {
                    state.join(
                        session_id, user_id, name, token_role, role, out, request_id, &pending,
                        stream, on_invalid, greet,
                    );
                    state.arm_presence_flush(&myself);
                    let _ = reply.send(());
                }
                FlowMsg::Leave { session_id } => {
                    state.remove_peer(&session_id, &myself);
                }
                FlowMsg::SetRole {
                    session_id,
                    token_role,
                    role,
                } => {
                    if let Some(watcher) = state.json_watchers.get_mut(&session_id) {
                        watcher.token_role = token_role;
                        if role.is_none() {
                            state.revoke(&session_id, &myself);
                        }
                        return Ok(());
                    }
                    let Some(peer) = state.peers.get_mut(&session_id) else {
                        return Ok(());
                    };
                    peer.token_role = token_role;
                    match role {
                        Some(role) => peer.role = role,
                        None => state.revoke(&session_id, &myself),
                    }
                }
                FlowMsg::MemberChanged { user_id, access } => {
                    state.apply_member_access(&user_id, access, &myself);
                }
                FlowMsg::StoreVersions(versions) => {
                    state.on_store_versions(versions, &myself).await;
                }
                FlowMsg::Presence {
                    session_id,
                    cursor,
                    selection,
                    color,
                } => match state.presence.update(&session_id, cursor, selection, color) {
                    Ok(true) => state.arm_presence_flush(&myself),
                    Ok(false) => {}
                    Err(e) => {
                        if let Some(peer) = state.peers.get(&session_id) {
                            let err = ServerMessage::error(ErrorCode::BadRequest, e.to_string())
                                .with_flow(state.flow_id.clone());
                            peer.out.send_control(err);
                        }
                    }
                },
                FlowMsg::PresenceFlush => {
                    state.presence_flush_armed = false;
                    state.flush_presence().await;
                }
                FlowMsg::Sync {
                    session_id, reply, ..
                }
                | FlowMsg::Changes {
                    session_id, reply, ..
                } if !state.peers.contains_key(&session_id) => {
                    let _ = reply.send(false);
                }
                FlowMsg::Sync {
                    session_id,
                    payload,
                    reply,
                } => {
                    state.edit_taken_at = Some(Instant::now());
                    let result = state.on_sync(&session_id, &payload, &myself).await;
                    let result = match result {
                        Ok(()) => state.hold_back(&myself).await,
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(true);
                    result?;
                }
                FlowMsg::Changes {
                    session_id,
                    payload,
                    reply,
                } => {
                    state.edit_taken_at = Some(Instant::now());
                    let result = state.on_changes(&session_id, &payload, &myself).await;
                    let result = match result {
                        Ok(()) => state.hold_back(&myself).await,
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(true);
                    result?;
                }
                FlowMsg::Appended(id) => state.on_appended(id, &myself).await?,
                FlowMsg::Compacted(done) => state.on_compacted(done),
                FlowMsg::Flush(reply) => {
                    // Drained above.
                    let _ = reply.send(());
                }
                FlowMsg::Bus(bytes) => state.on_bus(bytes, &myself).await?,
                FlowMsg::LiveNodes(live) => {
                    let own = state.deps.node_id.clone();
                    state.presence.retain_nodes(&own, &live);
                    state.arm_presence_flush(&myself);
                }
                FlowMsg::Tick => state.on_tick().await,
                FlowMsg::EvictIfIdle => {
                    let idle = state
                        .empty_since
                        .is_some_and(|t| t.elapsed() >= state.deps.config.idle_eviction);
                    if state.peers.is_empty() && state.json_watchers.is_empty() && idle {
                        // Forget first: from here on, new subscribers spawn a fresh actor
                        // (which loads everything from the store, where all our changes are).
                        state.directory.forget(&state.flow_id, myself.get_id());
                        myself.stop(Some("idle".into()));
                    }
                }
                FlowMsg::ToJson(reply) => {
                    let mut json = state.doc.to_json();
                    if let Some(obj) = json.as_object_mut() {
                        obj.insert("id".into(), state.flow_id.clone().into());
                    }
                    let _ = reply.send(json);
                }
                FlowMsg::ApplyEdits { request, reply } => {
                    let result = state.apply_edits(request).await;
                    let _ = reply.send(result);
                }
                FlowMsg::JoinJson {
                    session_id,
                    user_id,
                    token_role,
                    role,
                    request_id,
                    since_heads,
                    out,
                    reply,
                } => {
                    out.send_control(ServerMessage::FlowState {
                        id: request_id,
                        flow_id: state.flow_id.clone(),
                        role,
                        heads: state.doc.heads_hex(),
                        stream: false,
                    });
                    state.join_json(session_id, user_id, token_role, &since_heads, out);
                    let _ = reply.send(());
                }
                FlowMsg::History {
                    limit,
                    before,
                    reply,
                } => {
                    let history = state.doc.change_summaries(limit, before);
                    let _ = reply.send(history.map_err(EditsRefused::from));
                }
                FlowMsg::Diff { from, to, reply } => {
                    let to = to.unwrap_or_else(|| state.doc.heads());
                    let _ = reply.send(state.doc.diff(&from, &to).map_err(EditsRefused::from));
                }
                FlowMsg::Heads(reply) => {
                    let _ = reply.send(state.doc.heads_hex());
                }
            }
            state.when_stored(&myself).await;
            Ok::<(), ActorsError>(())
        }
        .instrument(span.clone())
        .await;
        if let Err(e) = outcome {
            // Never end silently attached to nothing: every subscriber, read-only ones
            // included, is told to subscribe again (which reloads the flow from the
            // store, where every acknowledged change is), and the actor stops through
            // post_stop so the registry and the open-flows gauge stay true.
            span.in_scope(|| warn!(error = %e, "flow actor failed; closing the flow"));
            Metrics::inc(&state.deps.metrics.flow_failures);
            // One message, shared by every peer's queue.
            let notice = SharedMessage::new(
                ServerMessage::error(
                    ErrorCode::Internal,
                    "the flow was closed after a server failure; subscribe again",
                )
                .with_flow(state.flow_id.clone()),
            );
            for peer in state.peers.values() {
                peer.out.send_control(notice.clone());
            }
            state.peers.clear();
            state.directory.forget(&state.flow_id, myself.get_id());
            myself.stop(Some(format!("failed: {e}")));
        }
        Ok(())
    }
}

/// Whether a message shows the document to somebody or replaces it, so the actor
/// first waits for its pending appends (see "Pipelined persistence" above). Bus
/// messages decide for themselves (`on_bus`): presence needs no wait.
fn reads_the_document(msg: &FlowMsg) -> bool {
    matches!(
        msg,
        FlowMsg::Join { .. }
            | FlowMsg::JoinJson { .. }
            | FlowMsg::ToJson(_)
            | FlowMsg::Heads(_)
            | FlowMsg::ApplyEdits { .. }
            | FlowMsg::History { .. }
            | FlowMsg::Diff { .. }
            | FlowMsg::StoreVersions(_)
            | FlowMsg::EvictIfIdle
            | FlowMsg::Flush(_)
    )
}

/// Who a change of the hub's own is for: the verified caller a JSON edit names in its
/// message (the hub wrote it), else the hub (a repair).
fn hub_change_author(change: &StoredChange) -> String {
    change
        .message()
        .and_then(|m| {
            m.strip_prefix(EDITS_MESSAGE_PREFIX)
                .and_then(|rest| rest.split(' ').next())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| HUB_USER.to_owned())
}

/// The store's form of changes the document holds.
fn change_records(changes: &[StoredChange]) -> Vec<ChangeRecord> {
    changes
        .iter()
        .map(|c| ChangeRecord {
            hash: c.hash.to_string(),
            bytes: c.bytes.clone(),
        })
        .collect()
}

fn arm_eviction(myself: &ActorRef<FlowMsg>, state: &FlowState) {
    // Slightly after the grace period, so the check in EvictIfIdle sees it elapsed.
    myself.send_after(
        state.deps.config.idle_eviction + Duration::from_millis(10),
        || FlowMsg::EvictIfIdle,
    );
}

/// A flow rebuilt from the store (see [`load`]).
struct Loaded {
    doc: FlowDoc,
    /// The hashes not covered by the snapshot.
    uncompacted: Vec<String>,
    /// The stored size in bytes.
    doc_bytes: usize,
    versions: FlowVersions,
    /// The stored snapshot's heads (`None`: no snapshot).
    snapshot_heads: Option<Vec<String>>,
}

/// Rebuilds a flow from the store: latest snapshot plus every later change.
async fn load(store: &dyn Store, flow_id: &str) -> Result<Loaded> {
    let stored = store.load_flow(flow_id).await?;
    let changes: Vec<Vec<u8>> = stored.changes.iter().map(|c| c.bytes.clone()).collect();
    let mut doc = FlowDoc::load_parts(stored.snapshot.as_deref(), &changes)?;
    // No snapshot per edit: the document only ever holds stored changes, so the
    // store is the backup should Automerge fail part-way (see `reload`).
    doc.validate_in_place(true);
    let bytes =
        stored.snapshot.as_ref().map_or(0, Vec::len) + changes.iter().map(Vec::len).sum::<usize>();
    Ok(Loaded {
        doc,
        uncompacted: stored.changes.into_iter().map(|c| c.hash).collect(),
        doc_bytes: bytes,
        versions: stored.versions,
        snapshot_heads: stored.snapshot_heads,
    })
}

impl FlowState {
    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        session_id: String,
        user_id: String,
        name: String,
        token_role: Option<Role>,
        role: Role,
        out: Outbound,
        request_id: Option<RequestId>,
        pending: &[ChangeHash],
        stream: bool,
        on_invalid: OnInvalid,
        greet: bool,
    ) {
        let heads = self.doc.heads_hex();
        out.send_control(ServerMessage::FlowState {
            id: request_id,
            flow_id: self.flow_id.clone(),
            role,
            heads,
            stream,
        });
        // The document only ever holds stored changes (an edit is applied, persisted,
        // and rolled back by a reload if persisting fails, all within one message), so
        // every reported hash it holds is durable. Its ack may have been lost with the
        // connection that stored it; no sync round would ever bring it back.
        let stored: Vec<String> = pending
            .iter()
            .filter(|h| self.doc.has_change(h))
            .map(|h| h.to_string())
            .collect();
        if !stored.is_empty() {
            debug!(
                session_id,
                acked = stored.len(),
                reported = pending.len(),
                "acking pending edits already stored"
            );
            out.send_control(ServerMessage::Ack {
                id: None,
                flow_id: Some(self.flow_id.clone()),
                changes: stored,
            });
        }
        debug!(session_id, ?role, "peer joined");
        self.presence.join(PresenceBook::new_entry(
            &session_id,
            &user_id,
            &name,
            &self.deps.node_id,
        ));
        out.send_control(ServerMessage::PresenceState {
            flow_id: self.flow_id.clone(),
            peers: self.presence.state_for_peer(),
        });
        self.peers.insert(
            session_id.clone(),
            Box::new(Peer {
                user_id,
                token_role,
                role,
                out,
                presence_stale: false,
                link: PeerLink::new(stream),
                lagging: false,
                on_invalid,
                name: name.clone(),
            }),
        );
        self.empty_since = None;
        if greet {
            self.sync_peer(&session_id);
        }
    }

    fn remove_peer(&mut self, session_id: &str, myself: &ActorRef<FlowMsg>) {
        if self.peers.remove(session_id).is_some() {
            self.local_left.push(session_id.to_owned());
        }
        self.json_watchers.remove(session_id);
        self.presence.leave(session_id);
        self.arm_presence_flush(myself);
        if self.peers.is_empty() && self.json_watchers.is_empty() {
            self.empty_since = Some(Instant::now());
            arm_eviction(myself, self);
        }
    }

    /// Access was revoked: tell the session and drop it from the flow.
    fn revoke(&mut self, session_id: &str, myself: &ActorRef<FlowMsg>) {
        let out = self
            .peers
            .get(session_id)
            .map(|p| &p.out)
            .or_else(|| self.json_watchers.get(session_id).map(|w| &w.out));
        if let Some(out) = out {
            let err = ServerMessage::error(ErrorCode::Forbidden, "access to this flow was revoked")
                .with_flow(self.flow_id.clone());
            out.send_control(err);
        }
        info!(session_id, "access revoked");
        self.remove_peer(session_id, myself);
    }

    fn arm_presence_flush(&mut self, myself: &ActorRef<FlowMsg>) {
        if !self.presence_flush_armed && self.presence.is_dirty() {
            self.presence_flush_armed = true;
            myself.send_after(FLUSH_INTERVAL, || FlowMsg::PresenceFlush);
        }
    }

    /// Sends the coalesced presence diff; a peer whose queue is full gets the full
    /// state later instead (last value wins, so nothing of value is lost).
    async fn flush_presence(&mut self) {
        let Some(PresenceChanges {
            joined,
            updated,
            left,
        }) = self.presence.take_changes()
        else {
            return;
        };
        // Other nodes hear about our own sessions only (each node speaks for its own).
        let own = &self.deps.node_id;
        let upserts: Vec<_> = joined
            .iter()
            .chain(updated.iter())
            .filter(|e| &e.node_id == own)
            .cloned()
            .collect();
        let local_left = std::mem::take(&mut self.local_left);
        if !upserts.is_empty() || !local_left.is_empty() {
            self.publish_presence(false, upserts, local_left).await;
        }
        for (session_id, peer) in self.peers.iter_mut() {
            if peer.presence_stale {
                continue;
            }
            let others = |v: &Vec<flowhub_protocol::PresenceEntry>| {
                v.iter()
                    .filter(|e| &e.session_id != session_id)
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let diff = ServerMessage::PresenceDiff {
                flow_id: self.flow_id.clone(),
                joined: others(&joined),
                updated: others(&updated),
                left: left.clone(),
            };
            if let ServerMessage::PresenceDiff {
                joined,
                updated,
                left,
                ..
            } = &diff
            {
                if joined.is_empty() && updated.is_empty() && left.is_empty() {
                    continue;
                }
            }
            if peer.out.try_send_message(diff) == Delivery::Full {
                peer.presence_stale = true;
            }
        }
    }

    async fn on_sync(
        &mut self,
        session_id: &str,
        payload: &[u8],
        myself: &ActorRef<FlowMsg>,
    ) -> Result<()> {
        if !self.admit(session_id, payload, |doc| {
            doc.sync_message_has_new_changes(payload)
        }) {
            return Ok(());
        }
        let Some(peer) = self.peers.get_mut(session_id) else {
            return Ok(());
        };
        let before = self.doc.heads();
        let received = match peer.on_invalid {
            OnInvalid::Refuse => self
                .doc
                .receive_sync_message_validated(peer.link.sync_state(), payload)
                .map(|applied| Repaired {
                    applied,
                    repair: None,
                }),
            OnInvalid::Repair => self
                .doc
                .receive_sync_message_repairing(peer.link.sync_state(), payload),
        };
        let Repaired { applied, repair } = match received {
            Ok(received) => received,
            Err(e) => {
                // Reload first: the refusal syncs the peer from the document.
                self.reload_if_poisoned(myself).await?;
                self.refuse_invalid(session_id, e);
                return Ok(());
            }
        };
        if applied.changes.is_empty() {
            // Only the author needs an answer to sync chatter without changes.
            self.sync_peer(session_id);
            return Ok(());
        }
        match repair {
            None => {
                self.commit(session_id, before, applied.changes, myself)
                    .await
            }
            Some(repair) => {
                self.commit_repaired(session_id, before, applied.changes, repair, myself)
                    .await
            }
        }
    }

    /// A peer's schema-breaking changes and the repair change that followed them
    /// (the [`OnInvalid::Repair`] policy): stored together, so no replica and no
    /// reload ever sees the broken flow without its repair, then acknowledged, the
    /// peer told what was repaired, and both fanned out. The peer gets the repair by
    /// the sync protocol like any change it lacks.
    async fn commit_repaired(
        &mut self,
        session_id: &str,
        before: Vec<ChangeHash>,
        mut changes: Vec<StoredChange>,
        repair: Repair,
        myself: &ActorRef<FlowMsg>,
    ) -> Result<()> {
        let authored: Vec<ChangeHash> = changes.iter().map(|c| c.hash).collect();
        let problems: Vec<String> = repair.problems.iter().map(ToString::to_string).collect();
        info!(
            session_id,
            repair = %repair.change.hash,
            problems = problems.len(),
            "repaired a peer's schema-breaking changes"
        );
        Metrics::inc(&self.deps.metrics.edits_repaired);
        let repair_hash = repair.change.hash.to_string();
        changes.push(repair.change);
        if let Some(peer) = self.peers.get_mut(session_id) {
            // Its own changes never go back to it; the repair does.
            peer.link.authored(&authored);
        }
        let notice = ServerMessage::Repaired {
            flow_id: self.flow_id.clone(),
            change: repair_hash,
            problems,
        };
        self.commit_inner(session_id, before, changes, None, Some(notice), myself)
            .await
    }

    /// [`FlowMsg::ApplyEdits`]: typed edits become one change of the hub's, checked
    /// like every typed edit (they cannot break the schema), stored, and only then
    /// fanned out, published and answered. On a store failure the document is reloaded
    /// (it never holds what the store does not) and the caller told to retry.
    async fn apply_edits(
        &mut self,
        request: EditRequest,
    ) -> std::result::Result<EditsApplied, EditsRefused> {
        // The hub authors the change; its message names the verified caller (history
        // shows them) and the idempotency key.
        let message = match request.idempotency_key.as_deref() {
            Some(key) => format!("{EDITS_MESSAGE_PREFIX}{} key={key}", request.user_id),
            None => format!("{EDITS_MESSAGE_PREFIX}{}", request.user_id),
        };
        let replay = request.idempotency_key.is_some();
        if let Some(hash) = replay
            .then(|| self.doc.change_with_message(&message))
            .flatten()
        {
            return Ok(EditsApplied {
                change: hash.to_string(),
                heads: self.doc.heads_hex(),
                replayed: true,
            });
        }
        let edits = match request.edits {
            EditSource::Edits(edits) => edits,
            EditSource::RestoreTo(heads) => {
                let now = self.doc.heads();
                self.doc.diff(&now, &heads)?.to_edits()
            }
        };
        let before = self.doc.heads();
        self.doc.set_edit_time(Some(now_ms()));
        let applied = self.doc.apply_edits_with_message(&edits, &message);
        self.doc.set_edit_time(None);
        let hash = applied?;
        let changes = self.doc.changes_since(&before);
        let refused = match self.attribute(&changes, HUB_USER, HUB_USER).await {
            Ok(Ok(())) => None,
            Ok(Err(reason)) => Some(EditsRefused::new(ErrorCode::Forbidden, reason)),
            Err(e) => Some(EditsRefused::new(ErrorCode::Internal, e.to_string())),
        };
        if let Some(refused) = refused {
            self.reload()
                .await
                .map_err(|e| EditsRefused::new(ErrorCode::Internal, e.to_string()))?;
            return Err(refused);
        }
        let bytes: usize = changes.iter().map(|c| c.bytes.len()).sum();
        let limits = &self.deps.config;
        if bytes > limits.max_change_bytes || self.doc_bytes + bytes > limits.max_doc_bytes {
            self.reload()
                .await
                .map_err(|e| EditsRefused::new(ErrorCode::Internal, e.to_string()))?;
            return Err(EditsRefused::new(
                ErrorCode::TooLarge,
                format!("the change would be {bytes} bytes, beyond the flow's limits"),
            ));
        }
        let records = change_records(&changes);
        if let Err(e) = self.persist(&records).await {
            warn!(error = %e, "store append failed; rolling the document back");
            self.reload()
                .await
                .map_err(|e| EditsRefused::new(ErrorCode::Internal, e.to_string()))?;
            return Err(EditsRefused::new(
                ErrorCode::Internal,
                "the store is unavailable; retry",
            ));
        }
        info!(user_id = %request.user_id, change = %hash, edits = edits.len(), "typed edits applied");
        let after = self.doc.heads();
        self.share_stored(&before, &after, &changes, records, None)
            .await;
        Ok(EditsApplied {
            change: hash.to_string(),
            heads: self.doc.heads_hex(),
            replayed: false,
        })
    }

    /// A change frame: the peer's new changes, validated and committed like those of
    /// a sync message. Changes that depend on something the hub lacks put the peer
    /// back on the sync protocol, which finds and sends what is missing.
    async fn on_changes(
        &mut self,
        session_id: &str,
        payload: &[u8],
        myself: &ActorRef<FlowMsg>,
    ) -> Result<()> {
        if !self.admit(session_id, payload, |doc| {
            doc.change_frame_has_new_changes(payload)
        }) {
            return Ok(());
        }
        let before = self.doc.heads();
        match self.doc.receive_changes_validated(payload) {
            Ok(ChangesOutcome::Applied(applied)) if applied.changes.is_empty() => Ok(()),
            Ok(ChangesOutcome::Applied(applied)) => {
                self.commit(session_id, before, applied.changes, myself)
                    .await
            }
            Ok(ChangesOutcome::MissingDeps(missing)) => {
                debug!(
                    session_id,
                    missing = missing.len(),
                    "change frame lacks dependencies; syncing the peer"
                );
                Metrics::inc(&self.deps.metrics.stream_fallbacks);
                if let Some(peer) = self.peers.get_mut(session_id) {
                    peer.link.request_sync();
                }
                self.sync_peer(session_id);
                Ok(())
            }
            Err(e) => {
                self.reload_if_poisoned(myself).await?;
                self.refuse_invalid(session_id, e);
                Ok(())
            }
        }
    }

    /// Automerge failed part-way through an in-place apply: rebuild the document from
    /// the store, which holds every change it had (once the pending appends are in).
    async fn reload_if_poisoned(&mut self, myself: &ActorRef<FlowMsg>) -> Result<()> {
        if self.doc.is_poisoned() {
            warn!("document left unusable by a failed apply; reloading it from the store");
            self.drain(myself).await?;
            self.reload().await?;
        }
        Ok(())
    }

    /// Replaces the document by the store's. Peers keep their sync states: the sync
    /// protocol copes with a document that went back (their heads are unknown to it
    /// and get a fresh exchange).
    async fn reload(&mut self) -> Result<()> {
        let loaded = load(&*self.deps.store, &self.flow_id).await?;
        self.doc = loaded.doc;
        self.uncompacted = loaded.uncompacted;
        self.doc_bytes = loaded.doc_bytes;
        self.versions_seen = loaded.versions;
        self.own_appends = 0;
        self.stored_snapshot_heads = Some(loaded.snapshot_heads);
        self.loads += 1;
        Ok(())
    }

    /// The checks before a peer's message may touch the document: its size, the
    /// flow's size, and the peer's role. `has_new` says whether the message carries
    /// changes the document lacks. Refuses and returns `false` when a check fails.
    fn admit(
        &mut self,
        session_id: &str,
        payload: &[u8],
        mut has_new: impl FnMut(&mut FlowDoc) -> std::result::Result<bool, CrdtError>,
    ) -> bool {
        let Some(peer) = self.peers.get(session_id) else {
            return false;
        };
        let role = peer.role;
        let limits = &self.deps.config;
        if payload.len() > limits.max_change_bytes
            || (self.doc_bytes + self.storing_bytes + payload.len() > limits.max_doc_bytes
                && has_new(&mut self.doc).unwrap_or(true))
        {
            let message = if payload.len() > limits.max_change_bytes {
                format!(
                    "sync message of {} bytes exceeds the change limit of {}",
                    payload.len(),
                    limits.max_change_bytes
                )
            } else {
                format!(
                    "the flow would exceed its size limit of {} bytes",
                    limits.max_doc_bytes
                )
            };
            self.refuse(session_id, ErrorCode::TooLarge, message);
            return false;
        }
        if !role.can_edit() {
            match has_new(&mut self.doc) {
                Ok(false) => {}
                Ok(true) => {
                    let message = format!("role {role:?} cannot edit this flow").to_lowercase();
                    self.refuse(session_id, ErrorCode::Forbidden, message);
                    return false;
                }
                Err(e) => {
                    self.refuse(session_id, ErrorCode::BadRequest, e.to_string());
                    return false;
                }
            }
        }
        true
    }

    fn refuse_invalid(&mut self, session_id: &str, e: CrdtError) {
        match e {
            CrdtError::Schema(e) => {
                self.refuse(session_id, ErrorCode::SchemaViolation, e.to_string())
            }
            e => self.refuse(session_id, ErrorCode::BadRequest, e.to_string()),
        }
    }

    /// A peer's validated changes, now in the document: on to the store, and only once
    /// they are stored acknowledged to their author, handed to every other local peer
    /// and published on the bus (see "Pipelined persistence" above).
    async fn commit(
        &mut self,
        session_id: &str,
        before: Vec<ChangeHash>,
        changes: Vec<StoredChange>,
        myself: &ActorRef<FlowMsg>,
    ) -> Result<()> {
        self.commit_inner(session_id, before, changes, Some(session_id), None, myself)
            .await
    }

    /// [`FlowState::commit`]; `author`: the peer that made every one of `changes`
    /// (`None` when some were made by the hub, so the fan-out reaches the sender too);
    /// `notice`: sent to the peer after its ack.
    async fn commit_inner(
        &mut self,
        session_id: &str,
        before: Vec<ChangeHash>,
        changes: Vec<StoredChange>,
        author: Option<&str>,
        notice: Option<ServerMessage>,
        myself: &ActorRef<FlowMsg>,
    ) -> Result<()> {
        let user = self
            .peers
            .get(session_id)
            .map(|p| (p.user_id.clone(), p.name.clone()));
        if let Some((user_id, name)) = user {
            let refusal = match self.attribute(&changes, &user_id, &name).await {
                Ok(Ok(())) => None,
                Ok(Err(message)) => Some((ErrorCode::Forbidden, message)),
                Err(e) => {
                    warn!(error = %e, "recording who made the changes failed; rolling back");
                    Some((
                        ErrorCode::Internal,
                        "the store is unavailable; retry".into(),
                    ))
                }
            };
            if let Some((code, message)) = refusal {
                // Back to the store's document (the earlier, pending changes stored
                // first); then the refusal syncs the peer from it.
                self.drain(myself).await?;
                self.reload().await?;
                self.refuse(session_id, code, message);
                return Ok(());
            }
        }
        self.storing_bytes += changes.iter().map(|c| c.bytes.len()).sum::<usize>();
        self.queued.push(PendingCommit {
            session_id: session_id.to_owned(),
            before,
            after: self.doc.heads(),
            changes,
            author: author.map(str::to_owned),
            notice,
            taken_at: self.edit_taken_at.take(),
        });
        if self.appending.is_none() {
            self.start_append(myself);
        }
        Ok(())
    }

    /// Hands every queued commit to the store as one append, beside the actor; its
    /// result comes back as [`FlowMsg::Appended`] (or is awaited by `drain`).
    fn start_append(&mut self, myself: &ActorRef<FlowMsg>) {
        let commits = std::mem::take(&mut self.queued);
        let records: Vec<ChangeRecord> = commits
            .iter()
            .flat_map(|c| change_records(&c.changes))
            .collect();
        let id = self.next_append_id;
        self.next_append_id += 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let store = self.deps.store.clone();
        let flow_id = self.flow_id.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = store.append_changes(&flow_id, &records).await;
            let _ = tx.send((records, started.elapsed(), result.map_err(Into::into)));
            // Nobody listens when `drain` took the result already, or the actor stopped.
            let _ = me.cast(FlowMsg::Appended(id));
        });
        self.appending = Some(Append {
            id,
            commits,
            result: rx,
        });
    }

    /// [`FlowMsg::Appended`]: the append in flight finished (unless `drain` already
    /// took its result).
    async fn on_appended(&mut self, id: u64, myself: &ActorRef<FlowMsg>) -> Result<()> {
        if self.appending.as_ref().is_some_and(|a| a.id == id) {
            if let Some(append) = self.appending.take() {
                self.finish_append(append, myself).await?;
            }
        }
        Ok(())
    }

    /// Waits until every applied change is stored, acknowledged and fanned out (or
    /// refused, if the store failed).
    async fn drain(&mut self, myself: &ActorRef<FlowMsg>) -> Result<()> {
        if self.appending.is_none() && !self.queued.is_empty() {
            self.start_append(myself);
        }
        while let Some(append) = self.appending.take() {
            self.finish_append(append, myself).await?;
        }
        Ok(())
    }

    /// A peer's message was applied: when too much waits for the store, answer it
    /// only once that is stored, so a flooding peer's reader slows to the store's pace.
    async fn hold_back(&mut self, myself: &ActorRef<FlowMsg>) -> Result<()> {
        if self.queued.len() >= MAX_QUEUED_COMMITS || self.storing_bytes >= MAX_QUEUED_BYTES {
            self.drain(myself).await?;
        }
        Ok(())
    }

    /// An append's result: on success its commits are acknowledged, fanned out and
    /// published in order, and the queue behind it goes to the store next. On failure
    /// the document goes back to the store's, and every commit of the append and of
    /// the queue is refused (none was acknowledged or forwarded): the peers resend.
    async fn finish_append(&mut self, append: Append, myself: &ActorRef<FlowMsg>) -> Result<()> {
        let Append {
            commits, result, ..
        } = append;
        let (records, took, result) = result
            .await
            .unwrap_or_else(|_| (Vec::new(), Duration::ZERO, Err(ActorsError::AppendLost)));
        self.deps
            .metrics
            .observe_store_append(took, result.is_err());
        let stored_bytes: usize = records.iter().map(|r| r.bytes.len()).sum();
        self.storing_bytes = self.storing_bytes.saturating_sub(stored_bytes);
        if let Err(e) = result {
            warn!(error = %e, "store append failed; rolling the document back");
            let refused: Vec<String> = commits
                .into_iter()
                .chain(std::mem::take(&mut self.queued))
                .map(|c| c.session_id)
                .collect();
            self.storing_bytes = 0;
            self.reload().await?;
            for session_id in refused {
                self.refuse(
                    &session_id,
                    ErrorCode::Internal,
                    "the store is unavailable; retry".into(),
                );
            }
            return Ok(());
        }
        self.own_appends += 1;
        self.uncompacted
            .extend(records.iter().map(|r| r.hash.clone()));
        self.doc_bytes += stored_bytes;
        Metrics::add(&self.deps.metrics.edits_applied, records.len() as u64);
        // The document already holds every commit of the append: a sync round made
        // while an earlier one is fanned out would send the later ones too, and then a
        // peer current at a later one's `before` would be streamed them again. Sync
        // rounds wait until every commit was routed (`when_stored`).
        self.fanning_out = true;
        for commit in commits {
            if let Some(peer) = self.peers.get(&commit.session_id) {
                peer.out.send_control(ServerMessage::Ack {
                    id: None,
                    flow_id: Some(self.flow_id.clone()),
                    changes: commit.changes.iter().map(|c| c.hash.to_string()).collect(),
                });
                if let Some(notice) = &commit.notice {
                    peer.out.send_control(notice);
                }
            }
            self.deps.metrics.observe_edit_ack(commit.taken_at);
            self.fan_out(
                &commit.before,
                &commit.after,
                &commit.changes,
                commit.author.as_deref(),
            );
        }
        self.fanning_out = false;
        if !self.queued.is_empty() {
            // Before publishing: the store works on the next append meanwhile.
            self.start_append(myself);
        }
        self.publish(FlowBusMessage::Changes {
            origin: self.deps.node_id.clone(),
            changes: records.into_iter().map(|r| r.bytes).collect(),
        })
        .await;
        Ok(())
    }

    /// After each message: with nothing waiting for the store, the sync rounds held
    /// back meanwhile go out, and the change log is compacted when due.
    async fn when_stored(&mut self, myself: &ActorRef<FlowMsg>) {
        if self.appending.is_some() || !self.queued.is_empty() {
            return;
        }
        for id in std::mem::take(&mut self.sync_due) {
            self.sync_peer(&id);
        }
        self.maybe_compact(myself).await;
    }

    /// Changes now in the store (which took the document from `before` to `after`):
    /// counted, handed to the local peers (first: they should not wait for a round
    /// trip to Redis) and published on the bus.
    async fn share_stored(
        &mut self,
        before: &[ChangeHash],
        after: &[ChangeHash],
        changes: &[StoredChange],
        records: Vec<ChangeRecord>,
        author: Option<&str>,
    ) {
        Metrics::add(&self.deps.metrics.edits_applied, records.len() as u64);
        self.fan_out(before, after, changes, author);
        self.publish(FlowBusMessage::Changes {
            origin: self.deps.node_id.clone(),
            changes: records.into_iter().map(|r| r.bytes).collect(),
        })
        .await;
    }

    /// Records who made `changes` before they are stored: each change's Automerge
    /// actor is bound to the verified user whose session sent it (the hub's own actor,
    /// which authors repairs and JSON edits, to [`HUB_USER`]). An actor already bound
    /// to somebody else is refused (`Ok(Err(reason))`): otherwise a user could make
    /// changes that history shows as another's. Bindings are written once per actor
    /// (a client replica), not per change.
    async fn attribute(
        &mut self,
        changes: &[StoredChange],
        user_id: &str,
        name: &str,
    ) -> Result<std::result::Result<(), String>> {
        if self.owners.is_none() {
            let bound = self.deps.store.flow_actors(&self.flow_id).await?;
            self.owners = Some(bound.into_iter().map(|b| (b.actor, b.user_id)).collect());
        }
        let own = self.doc.actor_hex();
        let mut new: Vec<ActorBinding> = Vec::new();
        for change in changes {
            // From the change's bytes: asking the document would rebuild the change
            // from its op set, on every edit.
            let Some(actor) = change.actor_hex() else {
                continue;
            };
            let (user, user_name) = if actor == own {
                (HUB_USER, HUB_USER)
            } else {
                (user_id, name)
            };
            let owners = self.owners.get_or_insert_with(HashMap::new);
            match owners.get(&actor) {
                Some(owner) if owner == user => {}
                Some(_) => {
                    return Ok(Err(format!(
                        "changes by Automerge actor {actor} belong to another user"
                    )))
                }
                None if new.iter().any(|b| b.actor == actor) => {}
                None => new.push(ActorBinding {
                    actor,
                    user_id: user.to_owned(),
                    user_name: user_name.to_owned(),
                    first_seen_ms: now_ms(),
                }),
            }
        }
        if !new.is_empty() {
            self.deps.store.bind_actors(&self.flow_id, &new).await?;
            let owners = self.owners.get_or_insert_with(HashMap::new);
            for b in new {
                owners.insert(b.actor, b.user_id);
            }
        }
        Ok(Ok(()))
    }

    /// Tells a peer its sync message was refused and restarts its sync from scratch
    /// (the client rolls back by resyncing too); for [`OnInvalid::Repair`] peers, only
    /// tells it.
    fn refuse(&mut self, session_id: &str, code: ErrorCode, message: String) {
        Metrics::inc(&self.deps.metrics.edits_refused);
        debug!(session_id, %code, message, "sync message refused");
        if let Some(peer) = self.peers.get_mut(session_id) {
            peer.out
                .send_control(ServerMessage::error(code, message).with_flow(self.flow_id.clone()));
            if peer.on_invalid == OnInvalid::Repair && code != ErrorCode::Internal {
                // A peer that cannot roll back answers a fresh sync round by sending
                // the refused change again, and again: no round for it. Others'
                // edits still reach it, and it is never closed (see `OnInvalid`).
                return;
            }
            peer.link.reset();
        }
        self.sync_peer(session_id);
    }

    async fn persist(&mut self, records: &[ChangeRecord]) -> Result<()> {
        let started = Instant::now();
        let result = self.deps.store.append_changes(&self.flow_id, records).await;
        self.deps
            .metrics
            .observe_store_append(started.elapsed(), result.is_err());
        result?;
        self.own_appends += 1;
        self.uncompacted
            .extend(records.iter().map(|r| r.hash.clone()));
        self.doc_bytes += records.iter().map(|r| r.bytes.len()).sum::<usize>();
        Ok(())
    }

    async fn publish(&mut self, msg: FlowBusMessage) {
        let channel = channel::flow(&self.flow_id);
        match self
            .deps
            .bus
            .publish(&channel, msg.encode_as(self.deps.config.bus_format))
            .await
        {
            Ok(()) => Metrics::inc(&self.deps.metrics.bus_published),
            // At most once: other nodes catch up from the store via heads.
            Err(e) => debug!(error = %e, "bus publish failed"),
        }
    }

    /// Hands new changes (which took the document from `before` to `after`) to every
    /// local peer: the change frame, encoded once, to streaming peers that were
    /// current; a sync round to the others; nothing to an author that was current (see
    /// `flowhub_crdt::PeerLink::route`).
    fn fan_out(
        &mut self,
        before: &[ChangeHash],
        after: &[ChangeHash],
        changes: &[StoredChange],
        author: Option<&str>,
    ) {
        if changes.is_empty() {
            return;
        }
        let hashes: Vec<ChangeHash> = changes.iter().map(|c| c.hash).collect();
        let mut frame: Option<Arc<[u8]>> = None;
        let mut to_sync = Vec::new();
        let mut closed = Vec::new();
        let mut streamed = 0u64;
        for (id, peer) in self.peers.iter_mut() {
            let authored = author == Some(id.as_str());
            if peer.lagging {
                // Synced once its queue drains; its own changes never go back to it.
                if authored {
                    peer.link.authored(&hashes);
                }
                continue;
            }
            match peer.link.route(before, after, &hashes, authored) {
                Route::Nothing => {}
                Route::Sync if authored => {
                    // The author must hear our heads now that its changes are stored,
                    // even if it said meanwhile that it has them (while they were
                    // being stored, its sync messages found the document at its heads,
                    // and Automerge would then have nothing to say): otherwise a peer
                    // that goes quiet never learns that the hub has its edits.
                    peer.link.request_sync();
                    to_sync.push(id.clone());
                }
                Route::Sync => to_sync.push(id.clone()),
                Route::Stream => {
                    let frame = frame.get_or_insert_with(|| {
                        encode_flow_changes(&self.flow_id, changes.iter().map(|c| &c.bytes[..]))
                            .into()
                    });
                    match peer.out.try_send_shared(frame) {
                        Delivery::Queued => streamed += 1,
                        Delivery::Full => {
                            // Sync it once its queue drains (see on_tick), from
                            // exactly what it was sent.
                            peer.lagging = true;
                            peer.link.undelivered(before, &hashes);
                        }
                        Delivery::Closed => closed.push(id.clone()),
                    }
                }
            }
        }
        Metrics::add(&self.deps.metrics.frames_streamed, streamed);
        self.deps
            .metrics
            .observe_fan_out(streamed as usize + to_sync.len());
        for id in closed {
            self.peers.remove(&id);
        }
        for id in to_sync {
            self.sync_peer(&id);
        }
    }

    fn sync_peer(&mut self, session_id: &str) {
        if self.fanning_out || self.appending.is_some() || !self.queued.is_empty() {
            // A sync message is made from the whole document, which holds changes
            // the store does not have yet, or that are still being routed: later
            // (`when_stored`).
            self.sync_due.insert(session_id.to_owned());
            return;
        }
        let Some(peer) = self.peers.get_mut(session_id) else {
            return;
        };
        if peer.lagging {
            return;
        }
        // The protocol rarely needs more than one message per round; the bound only
        // guards against a livelock.
        for _ in 0..8 {
            if peer.out.capacity() == 0 {
                // Full before we generate: the sync state stays exact (everything
                // queued is still delivered), so the resync once the queue drains
                // sends just what the peer lacks, and nothing twice.
                peer.lagging = true;
                break;
            }
            let Some(msg) = peer.link.sync_message(&mut self.doc) else {
                break;
            };
            match peer.out.try_send_sync(&self.sync_flow_id, msg) {
                Delivery::Queued => {}
                Delivery::Full => {
                    // Filled up since the check (a control frame raced us). Never
                    // wait for a slow peer; forget what we think it has and start
                    // over once its queue drains (see on_tick).
                    peer.lagging = true;
                    peer.link.reset();
                    break;
                }
                Delivery::Closed => {
                    self.peers.remove(session_id);
                    break;
                }
            }
        }
    }

    async fn publish_presence(
        &mut self,
        full: bool,
        upserts: Vec<flowhub_protocol::PresenceEntry>,
        left: Vec<String>,
    ) {
        let update = PresenceUpdate {
            full,
            upserts,
            left,
        };
        let Ok(json) = serde_json::to_vec(&update) else {
            return;
        };
        self.publish(FlowBusMessage::Presence {
            origin: self.deps.node_id.clone(),
            json,
        })
        .await;
    }

    async fn on_bus(&mut self, bytes: Vec<u8>, myself: &ActorRef<FlowMsg>) -> Result<()> {
        Metrics::inc(&self.deps.metrics.bus_received);
        match FlowBusMessage::decode(&bytes) {
            Some(FlowBusMessage::Changes { origin, changes }) if origin != self.deps.node_id => {
                self.drain(myself).await?;
                let before = self.doc.heads();
                // In place (no O(document) snapshot per remote edit). A node
                // publishes only changes it validated and stored, so a failure here
                // is a corrupt message or a bug: keep the flow (and its sessions)
                // up, rebuilt from the store should Automerge have panicked
                // part-way; the store's copy reaches us by anti-entropy.
                let new = match self.doc.apply_changes(&changes) {
                    Ok(new) => new,
                    Err(e) => {
                        warn!(%origin, error = %e, "changes from the bus not applied");
                        return self.reload_if_poisoned(myself).await;
                    }
                };
                let after = self.doc.heads();
                // The origin persisted these before publishing; they count for our
                // next compaction too.
                self.uncompacted
                    .extend(new.iter().map(|c| c.hash.to_string()));
                // Before any catch-up: a change frame holds exactly what took the
                // document from `before` to the heads `fan_out` reads.
                self.fan_out(&before, &after, &new, None);
                if !self.doc.missing_deps().is_empty() {
                    self.catch_up_from_store().await?;
                }
            }
            Some(FlowBusMessage::Presence { origin, json }) if origin != self.deps.node_id => {
                if let Ok(update) = serde_json::from_slice::<PresenceUpdate>(&json) {
                    self.presence
                        .apply_remote(&origin, update.full, update.upserts, &update.left);
                    self.arm_presence_flush(myself);
                }
            }
            Some(FlowBusMessage::Member { origin, json }) if origin != self.deps.node_id => {
                if let Ok(update) = serde_json::from_slice::<crate::bus::MemberUpdate>(&json) {
                    let access = update.access.as_deref().and_then(MemberAccess::parse);
                    let _ = myself.cast(FlowMsg::MemberChanged {
                        user_id: update.user_id,
                        access,
                    });
                }
            }
            Some(FlowBusMessage::PresenceRequest { origin }) if origin != self.deps.node_id => {
                let own = self.presence.entries_of(&self.deps.node_id);
                self.publish_presence(true, own, Vec::new()).await;
            }
            Some(FlowBusMessage::Heads { origin, heads }) if origin != self.deps.node_id => {
                self.drain(myself).await?;
                let unknown = heads
                    .iter()
                    .any(|h| match ChangeHash::try_from(h.as_slice()) {
                        Ok(hash) => !self.doc.has_change(&hash),
                        Err(_) => false,
                    });
                if unknown {
                    self.catch_up_from_store().await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Anti-entropy: applies whatever the store has that this replica lacks. Returns
    /// the heads of the stored snapshot, now included in this replica.
    async fn catch_up_from_store(&mut self) -> Result<Option<Vec<String>>> {
        let stored = self.deps.store.load_flow(&self.flow_id).await?;
        self.versions_seen.changes = stored.versions.changes;
        self.own_appends = 0;
        let snapshot_heads = stored.snapshot_heads.clone();
        self.stored_snapshot_heads = Some(snapshot_heads.clone());
        // A snapshot whose heads this replica has holds nothing new (a change is only
        // ever stored with its dependencies): skip decoding it, the costly part.
        let snapshot_known = snapshot_heads.as_ref().is_some_and(|heads| {
            flowhub_crdt::parse_heads(heads)
                .is_ok_and(|hashes| hashes.iter().all(|h| self.doc.has_change(h)))
        });
        let mut raw: Vec<Vec<u8>> = Vec::new();
        if let Some(snapshot) = stored.snapshot.as_ref().filter(|_| !snapshot_known) {
            raw.extend(
                FlowDoc::load(snapshot)?
                    .all_changes()
                    .into_iter()
                    .map(|c| c.bytes),
            );
        }
        // The store keeps each change's hash beside it: skip those this replica has
        // without decoding them. Compaction comes through here every
        // `compact_after` changes, nearly all of them this replica's own, and
        // applying them again (a snapshot of the document, a decode and hash of each)
        // stalled a 1,000-node flow's actor, and its tokio worker, for milliseconds.
        let doc = &mut self.doc;
        raw.extend(
            stored
                .changes
                .into_iter()
                .filter(|c| {
                    !c.hash
                        .parse::<ChangeHash>()
                        .is_ok_and(|h| doc.has_change(&h))
                })
                .map(|c| c.bytes),
        );
        if raw.is_empty() {
            return Ok(snapshot_heads);
        }
        let before = self.doc.heads();
        // With the snapshot: this rare path has no `myself` to drain the appends in
        // flight before a reload, so a panic must restore the document instead.
        self.doc.validate_in_place(false);
        let new = self.doc.apply_changes(&raw);
        self.doc.validate_in_place(true);
        let new = new?;
        if !new.is_empty() {
            Metrics::add(&self.deps.metrics.antientropy_repairs, new.len() as u64);
            info!(repaired = new.len(), "caught up from the store");
            let after = self.doc.heads();
            self.fan_out(&before, &after, &new, None);
        }
        Ok(snapshot_heads)
    }

    /// What the store watch found. Another node's append shows as a change version
    /// beyond this actor's own appends; a membership change as a new members version.
    async fn on_store_versions(&mut self, versions: FlowVersions, myself: &ActorRef<FlowMsg>) {
        if versions.changes > self.versions_seen.changes + self.own_appends {
            debug!(
                seen = self.versions_seen.changes,
                own = self.own_appends,
                stored = versions.changes,
                "store has changes the bus did not bring"
            );
            if let Err(e) = self.catch_up_from_store().await {
                // The next poll tries again; the replica stays usable meanwhile.
                warn!(error = %e, "catching up from the store failed");
            }
        } else if versions.changes == self.versions_seen.changes + self.own_appends {
            self.versions_seen.changes = versions.changes;
            self.own_appends = 0;
        }
        if versions.members != self.versions_seen.members {
            let mut users: Vec<String> = self.peers.values().map(|p| p.user_id.clone()).collect();
            users.sort_unstable();
            users.dedup();
            for user_id in users {
                match self.deps.store.member_access(&self.flow_id, &user_id).await {
                    Ok(access) => self.apply_member_access(&user_id, access, myself),
                    Err(e) => {
                        // The version stays unseen: the next poll retries.
                        warn!(error = %e, "re-reading memberships failed");
                        return;
                    }
                }
            }
            info!(
                members_version = versions.members,
                "re-read memberships from the store"
            );
            self.versions_seen.members = versions.members;
        }
    }

    /// A `flow_members` override of `user_id` changed: every local session of that
    /// user gets the new effective role, or loses access.
    fn apply_member_access(
        &mut self,
        user_id: &str,
        access: Option<MemberAccess>,
        myself: &ActorRef<FlowMsg>,
    ) {
        let affected: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.user_id == user_id)
            .map(|(id, _)| id.clone())
            .collect();
        for session_id in affected {
            let Some(peer) = self.peers.get_mut(&session_id) else {
                continue;
            };
            match MemberAccess::effective(access, peer.token_role) {
                Some(role) => peer.role = role,
                None => self.revoke(&session_id, myself),
            }
        }
        let watchers: Vec<String> = self
            .json_watchers
            .iter()
            .filter(|(_, w)| {
                w.user_id == user_id && MemberAccess::effective(access, w.token_role).is_none()
            })
            .map(|(id, _)| id.clone())
            .collect();
        for session_id in watchers {
            self.revoke(&session_id, myself);
        }
    }

    /// The flow as JSON subscribers see it: `GET /v1/flows/{id}`'s body without
    /// `heads` (which travel beside it, and would otherwise be patched every time).
    fn json_body(&self, mut json: serde_json::Value) -> serde_json::Value {
        if let Some(obj) = json.as_object_mut() {
            obj.remove("heads");
            obj.insert("id".into(), self.flow_id.clone().into());
        }
        json
    }

    /// [`FlowMsg::JoinJson`].
    fn join_json(
        &mut self,
        session_id: String,
        user_id: String,
        token_role: Option<Role>,
        since_heads: &[String],
        out: Outbound,
    ) {
        let heads = self.doc.heads();
        let now = match &self.json_view {
            Some((at, json)) if *at == heads => json.clone(),
            _ => {
                let json = self.doc.to_json();
                self.json_body(json)
            }
        };
        let heads_hex = self.doc.heads_hex();
        let since = flowhub_crdt::parse_heads(since_heads)
            .ok()
            .filter(|h| !h.is_empty())
            .and_then(|h| self.doc.to_json_at(&h).ok().map(|json| (h, json)));
        let first = match since {
            Some((from, then)) => ServerMessage::FlowPatch {
                flow_id: self.flow_id.clone(),
                from_heads: from.iter().map(ToString::to_string).collect(),
                heads: heads_hex,
                patch: json_patch::diff(&self.json_body(then), &now),
                authors: self.authors_since(&from),
            },
            None => ServerMessage::FlowJson {
                flow_id: self.flow_id.clone(),
                heads: heads_hex,
                flow: now.clone(),
            },
        };
        out.send_control(first);
        self.json_view = Some((heads, now));
        self.json_watchers.insert(
            session_id,
            JsonWatcher {
                user_id,
                token_role,
                out,
                stale: false,
            },
        );
        self.empty_since = None;
    }

    /// The verified users whose changes took the flow from `from` to now (as far as
    /// this node attributed them: changes that came over the bus from another node
    /// are attributed there, and show here once the bindings are re-read).
    fn authors_since(&mut self, from: &[ChangeHash]) -> Vec<String> {
        let own = self.doc.actor_hex();
        let changes = self.doc.changes_since(from);
        let mut authors: Vec<String> = Vec::new();
        for change in &changes {
            let Some(actor) = change.actor_hex() else {
                continue;
            };
            let user = match self.owners.as_ref().and_then(|o| o.get(&actor)) {
                Some(user) if user != HUB_USER => user.clone(),
                Some(_) => hub_change_author(change),
                None if actor == own => hub_change_author(change),
                None => continue,
            };
            if !authors.contains(&user) {
                authors.push(user);
            }
        }
        authors
    }

    /// Sends JSON subscribers one patch for everything since their last message:
    /// computed once per tick for all of them (a whole-flow read, so at most once per
    /// tick however fast the flow changes). A subscriber whose queue is full gets the
    /// whole flow once it drains.
    fn send_json_patches(&mut self) {
        if self.json_watchers.is_empty() {
            self.json_view = None;
            return;
        }
        let heads = self.doc.heads();
        let changed = self.json_view.as_ref().is_none_or(|(at, _)| *at != heads);
        if changed {
            let json = self.doc.to_json();
            let now = self.json_body(json);
            if let Some((from, then)) = self.json_view.take() {
                let authors = self.authors_since(&from);
                let patch = ServerMessage::FlowPatch {
                    flow_id: self.flow_id.clone(),
                    from_heads: from.iter().map(ToString::to_string).collect(),
                    heads: heads.iter().map(ToString::to_string).collect(),
                    patch: json_patch::diff(&then, &now),
                    authors,
                };
                let patch = SharedMessage::new(patch);
                let mut closed = Vec::new();
                for (id, w) in self.json_watchers.iter_mut().filter(|(_, w)| !w.stale) {
                    match w.out.try_send_message(patch.clone()) {
                        Delivery::Queued => {}
                        Delivery::Full => w.stale = true,
                        Delivery::Closed => closed.push(id.clone()),
                    }
                }
                for id in closed {
                    self.json_watchers.remove(&id);
                }
            }
            self.json_view = Some((heads, now));
        }
        let Some((heads, now)) = &self.json_view else {
            return;
        };
        let mut full: Option<SharedMessage> = None;
        for w in self.json_watchers.values_mut() {
            if w.stale && w.out.capacity() * 2 >= w.out.max_capacity() {
                let msg = full.get_or_insert_with(|| {
                    SharedMessage::new(ServerMessage::FlowJson {
                        flow_id: self.flow_id.clone(),
                        heads: heads.iter().map(ToString::to_string).collect(),
                        flow: now.clone(),
                    })
                });
                if w.out.try_send_message(msg.clone()) == Delivery::Queued {
                    w.stale = false;
                }
            }
        }
    }

    async fn on_tick(&mut self) {
        // The document holds changes on their way to the store: the JSON patches and
        // the heads announcement wait for the next tick.
        let storing = self.appending.is_some() || !self.queued.is_empty();
        if !storing {
            self.send_json_patches();
        }
        let ids: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.lagging && p.out.capacity() * 2 >= p.out.max_capacity())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some(p) = self.peers.get_mut(&id) {
                p.lagging = false;
                Metrics::inc(&self.deps.metrics.resyncs);
            }
            self.sync_peer(&id);
        }
        let stale: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.presence_stale && p.out.capacity() * 2 >= p.out.max_capacity())
            .map(|(id, _)| id.clone())
            .collect();
        let entries = if stale.is_empty() {
            Vec::new()
        } else {
            self.presence.state_for_peer()
        };
        for id in stale {
            if let Some(p) = self.peers.get_mut(&id) {
                let state = ServerMessage::PresenceState {
                    flow_id: self.flow_id.clone(),
                    peers: entries.clone(),
                };
                if p.out.try_send_message(state) == Delivery::Queued {
                    p.presence_stale = false;
                }
            }
        }
        if !storing {
            self.announce_heads().await;
        }
    }

    /// Publishes the heads after they changed, then `heads_repeats` more times, then
    /// nothing until they change again (see [`FlowConfig::heads_interval`]).
    async fn announce_heads(&mut self) {
        let config = &self.deps.config;
        let heads = self.doc.heads();
        if heads != self.last_heads_published {
            self.doc.release_stale_sync_cache(&heads);
            self.last_heads_published = heads;
            self.last_heads_at = None;
            self.heads_announcements_due = 1 + config.heads_repeats;
        }
        let due = self
            .last_heads_at
            .is_none_or(|at| at.elapsed() >= config.heads_interval);
        if self.heads_announcements_due == 0 || !due {
            return;
        }
        self.heads_announcements_due -= 1;
        self.last_heads_at = Some(Instant::now());
        let heads = self
            .last_heads_published
            .iter()
            .map(|h| h.0.to_vec())
            .collect();
        self.publish(FlowBusMessage::Heads {
            origin: self.deps.node_id.clone(),
            heads,
        })
        .await;
    }

    /// Every `compact_after` stored changes: a snapshot of the document goes to the
    /// store, which then deletes the changes it covers. The store's write runs beside
    /// the actor (its outcome comes back as [`FlowMsg::Compacted`]): awaited here, it
    /// held the flow's edits for as long as the store took (tens of milliseconds on a
    /// busy SQLite).
    async fn maybe_compact(&mut self, myself: &ActorRef<FlowMsg>) {
        if self.compacting || self.uncompacted.len() < self.deps.config.compact_after {
            return;
        }
        let base_heads = match self.compaction_base().await {
            Ok(base) => base,
            Err(e) => return warn!(error = %e, "compaction skipped: cannot read the store"),
        };
        let bytes = self.doc.save();
        let size = bytes.len();
        let heads = self.doc.heads_hex();
        let snapshot = Snapshot {
            heads: heads.clone(),
            bytes,
            base_heads,
        };
        // Every hash in `uncompacted` is stored and in the document (no append is
        // pending here), so in the snapshot; later ones are appended behind them.
        let covered = self.uncompacted.clone();
        let done = Compacted {
            loads: self.loads,
            covered: covered.len(),
            heads,
            size,
            doc_bytes_then: self.doc_bytes,
            result: Ok(()),
        };
        self.compacting = true;
        let store = self.deps.store.clone();
        let flow_id = self.flow_id.clone();
        let me = myself.clone();
        tokio::spawn(
            async move {
                let result = store.compact(&flow_id, snapshot, &covered).await;
                // Nobody listens once the actor stopped; the store has the snapshot or
                // the change log, either way everything.
                let _ = me.cast(FlowMsg::Compacted(Compacted { result, ..done }));
            }
            .instrument(self.span.clone()),
        );
    }

    /// [`FlowMsg::Compacted`].
    fn on_compacted(&mut self, done: Compacted) {
        self.compacting = false;
        match done.result {
            Ok(()) if done.loads == self.loads => {
                Metrics::inc(&self.deps.metrics.compactions);
                info!(covered = done.covered, "compacted");
                self.uncompacted
                    .drain(..done.covered.min(self.uncompacted.len()));
                // The snapshot, plus what was stored since it was taken.
                self.doc_bytes = done.size + self.doc_bytes.saturating_sub(done.doc_bytes_then);
                self.stored_snapshot_heads = Some(Some(done.heads));
            }
            Ok(()) => {
                // Reloaded meanwhile: the loaded log may still list covered changes
                // (harmless: the next compaction deletes them again).
                Metrics::inc(&self.deps.metrics.compactions);
                self.stored_snapshot_heads = None;
            }
            // Harmless: the change log is intact; the next append retries, after a
            // full catch-up (another node may have written the snapshot).
            Err(e) => {
                self.stored_snapshot_heads = None;
                warn!(error = %e, "compaction failed");
            }
        }
    }

    /// The snapshot a compaction builds on, once the replica holds everything the store
    /// does: the new snapshot must include changes another node compacted, or stored
    /// without the bus bringing them. When the store's version shows that no other node
    /// wrote since this replica last read it, the replica has every stored change and
    /// knows the snapshot, and one indexed row says so. Otherwise (or when the snapshot
    /// is unknown) the stored flow is merged first, which reads every stored change:
    /// doing that every `compact_after` changes held a flow's actor, on a busy
    /// SQLite, for tens of milliseconds each time.
    async fn compaction_base(&mut self) -> Result<Option<Vec<String>>> {
        if let Some(known) = self.stored_snapshot_heads.clone() {
            let versions = self
                .deps
                .store
                .flow_versions(std::slice::from_ref(&self.flow_id))
                .await?;
            let stored = versions.first().map_or(0, |(_, v)| v.changes);
            if stored == self.versions_seen.changes + self.own_appends {
                return Ok(known);
            }
        }
        self.catch_up_from_store().await
    }
}

impl From<ractor::SpawnErr> for ActorsError {
    fn from(e: ractor::SpawnErr) -> Self {
        ActorsError::Spawn(e.to_string())
    }
}

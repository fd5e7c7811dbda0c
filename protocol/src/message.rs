//! Control messages (JSON text frames), tagged by `type`.

use serde::{Deserialize, Serialize};

use crate::presence::{Cursor, PresenceEntry};
use crate::run::{RunEvent, RunSnapshot, RunSummary};
use crate::ErrorCode;

/// A request id chosen by the client and echoed in the reply. Numbers and strings are
/// both accepted because JavaScript clients tend to use counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    Num(u64),
    Str(String),
}

impl From<u64> for RequestId {
    fn from(n: u64) -> Self {
        RequestId::Num(n)
    }
}

/// What a token allows on one flow. Ordered: `Viewer < Editor < Owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Editor,
    Owner,
}

impl Role {
    pub fn can_edit(self) -> bool {
        self >= Role::Editor
    }
}

/// Limits the hub enforces on this session, announced in `welcome` so a client can
/// stay inside them instead of discovering them by error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest text or binary frame answered with a typed error rather than a close.
    pub max_frame_bytes: usize,
    /// Most flows one session may subscribe to at once.
    pub max_subscriptions: usize,
}

/// Most hashes one `subscribe_flow` may report in `pending` (`too_large` above).
pub const MAX_PENDING_HASHES: usize = 10_000;

/// Messages a client sends in text frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Optional first message: names the protocol version the client speaks.
    Hello {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        protocol: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    /// Join a flow: the hub answers `flow_state`, then starts the Automerge sync.
    SubscribeFlow {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        flow_id: String,
        /// Hex hashes of this client's edits not acknowledged yet (typically after a
        /// reconnect). The hub acks, right after `flow_state`, those the flow already
        /// holds: the connection that stored them may have died before their ack.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pending: Vec<String>,
        /// The client takes change frames (binary kind `0x02`): once the sync
        /// protocol has brought it up to date, the hub sends new changes as they are,
        /// encoded once for every such peer, instead of running the sync protocol per
        /// peer and per edit. The client may send its own new changes the same way.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stream: bool,
        /// `json`: no Automerge at all. The hub sends the flow as JSON
        /// (`flow_json`), then RFC 6902 patches (`flow_patch`) as it changes; for
        /// phones, dashboards and scripts. Read-only: edits go through
        /// `POST /v1/flows/{id}/edits`.
        #[serde(default, skip_serializing_if = "FlowFormat::is_automerge")]
        format: FlowFormat,
        /// With `format: json`: the heads of the last `flow_json`/`flow_patch` this
        /// client applied (after a reconnect). The hub answers with one patch from
        /// there, or the whole flow when it does not know those heads.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        since_heads: Vec<String>,
    },
    /// Leave a flow; answered with `ack`.
    UnsubscribeFlow {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        flow_id: String,
    },
    /// Liveness check at the application level; answered with `pong`.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    /// Own cursor, selection and colour in a subscribed flow. Fields left out keep
    /// their previous value. Coalesced by the hub (last value wins); not answered.
    Presence {
        flow_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<Cursor>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        selection: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        color: Option<String>,
    },
    /// Watch a run: answered with `run_state`, then every event after `since_seq`
    /// (0 or absent: from the start), then live events, in order, without gaps.
    SubscribeRun {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        run_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_seq: Option<u64>,
    },
    UnsubscribeRun {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        run_id: String,
    },
    /// A feed of run started/finished summaries of one flow (`flow_run` messages).
    SubscribeFlowRuns {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        flow_id: String,
    },
    UnsubscribeFlowRuns {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        flow_id: String,
    },
    /// Replace the session's token (before it expires, or after a role change).
    /// Answered with `ack`; a bad token gets `unauthorized` and the old one stays.
    Reauth {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        token: String,
    },
}

impl ClientMessage {
    pub fn id(&self) -> Option<&RequestId> {
        match self {
            ClientMessage::Hello { id, .. }
            | ClientMessage::SubscribeFlow { id, .. }
            | ClientMessage::UnsubscribeFlow { id, .. }
            | ClientMessage::Ping { id }
            | ClientMessage::SubscribeRun { id, .. }
            | ClientMessage::UnsubscribeRun { id, .. }
            | ClientMessage::SubscribeFlowRuns { id, .. }
            | ClientMessage::UnsubscribeFlowRuns { id, .. }
            | ClientMessage::Reauth { id, .. } => id.as_ref(),
            ClientMessage::Presence { .. } => None,
        }
    }

    /// Sets the request id (no effect on `presence`, which is never answered).
    pub fn set_id(&mut self, new_id: RequestId) {
        match self {
            ClientMessage::Hello { id, .. }
            | ClientMessage::SubscribeFlow { id, .. }
            | ClientMessage::UnsubscribeFlow { id, .. }
            | ClientMessage::Ping { id }
            | ClientMessage::SubscribeRun { id, .. }
            | ClientMessage::UnsubscribeRun { id, .. }
            | ClientMessage::SubscribeFlowRuns { id, .. }
            | ClientMessage::UnsubscribeFlowRuns { id, .. }
            | ClientMessage::Reauth { id, .. } => *id = Some(new_id),
            ClientMessage::Presence { .. } => {}
        }
    }

    /// The `type` tag, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Hello { .. } => "hello",
            ClientMessage::SubscribeFlow { .. } => "subscribe_flow",
            ClientMessage::UnsubscribeFlow { .. } => "unsubscribe_flow",
            ClientMessage::Ping { .. } => "ping",
            ClientMessage::Presence { .. } => "presence",
            ClientMessage::SubscribeRun { .. } => "subscribe_run",
            ClientMessage::UnsubscribeRun { .. } => "unsubscribe_run",
            ClientMessage::SubscribeFlowRuns { .. } => "subscribe_flow_runs",
            ClientMessage::UnsubscribeFlowRuns { .. } => "unsubscribe_flow_runs",
            ClientMessage::Reauth { .. } => "reauth",
        }
    }
}

/// Every `type` a client may send, for precise "unknown type" errors.
pub const CLIENT_MESSAGE_TYPES: &[&str] = &[
    "hello",
    "subscribe_flow",
    "unsubscribe_flow",
    "ping",
    "presence",
    "subscribe_run",
    "unsubscribe_run",
    "subscribe_flow_runs",
    "unsubscribe_flow_runs",
    "reauth",
];

/// How a subscriber receives a flow (`subscribe_flow.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowFormat {
    /// The Automerge sync protocol (and change frames with `stream`).
    #[default]
    Automerge,
    /// The flow as JSON, then JSON Patch (RFC 6902) per change.
    Json,
}

impl FlowFormat {
    pub fn is_automerge(&self) -> bool {
        *self == FlowFormat::Automerge
    }
}

/// Messages the hub sends in text frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First message on every connection (and the reply to `hello`).
    Welcome {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        protocol: u32,
        session_id: String,
        user_id: String,
        name: String,
        node_id: String,
        limits: Limits,
    },
    /// Reply to `subscribe_flow`: the caller's role and the hub's current heads. The
    /// Automerge sync for the flow follows in binary frames; the client is caught up
    /// once its document contains every hash in `heads`.
    FlowState {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        flow_id: String,
        role: Role,
        heads: Vec<String>,
        /// The hub agreed to `subscribe_flow.stream`: change frames may follow.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stream: bool,
    },
    /// Acknowledges a request (with `id`), or changes that the hub has made durable
    /// (with `flow_id` and `changes`, the hex hashes now in the store).
    Ack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flow_id: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        changes: Vec<String>,
    },
    /// Reply to `ping`.
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    /// Everyone present in a flow; sent once after `flow_state`.
    PresenceState {
        flow_id: String,
        peers: Vec<PresenceEntry>,
    },
    /// Changes to a flow's presence since the last state or diff.
    PresenceDiff {
        flow_id: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        joined: Vec<PresenceEntry>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        updated: Vec<PresenceEntry>,
        /// Session ids that left.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        left: Vec<String>,
    },
    /// Reply to `subscribe_run`: the run's state; events after `since_seq` follow.
    RunState {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        run: RunSnapshot,
    },
    /// One run event, in sequence order.
    RunEvent { run_id: String, event: RunEvent },
    /// The watcher fell behind and events were skipped: subscribe again with
    /// `since_seq = seq` to get them; nothing is lost.
    ResumeFrom { run_id: String, seq: u64 },
    /// A run of a flow started or finished (`subscribe_flow_runs`).
    FlowRun { flow_id: String, run: RunSummary },
    /// The hub accepted a peer's changes that broke the flow schema and repaired the
    /// flow with a change of its own (`change`), which reaches every replica like any
    /// other edit. Sent only to peers that subscribed with the repair policy (stock
    /// automerge-repo peers, which cannot roll back); `problems` lists what was
    /// repaired, one schema error each (e.g. `nodes/n1/label: missing`).
    Repaired {
        flow_id: String,
        /// Hex hash of the hub's repair change.
        change: String,
        problems: Vec<String>,
    },
    /// The whole flow as JSON (`subscribe_flow` with `format: json`), as
    /// `GET /v1/flows/{id}` answers; `heads` are its version.
    FlowJson {
        flow_id: String,
        heads: Vec<String>,
        flow: serde_json::Value,
    },
    /// JSON Patch (RFC 6902) operations that take the flow from `from_heads` (the
    /// previous `flow_json` or `flow_patch`) to `heads`.
    FlowPatch {
        flow_id: String,
        from_heads: Vec<String>,
        heads: Vec<String>,
        patch: Vec<crate::json_patch::PatchOp>,
        /// The live history feed: the verified users (ids) whose changes this patch
        /// covers, in no particular order (`flowhub` for the hub's own changes;
        /// changes made through another node may be missing until this node has read
        /// their bindings). `GET /v1/flows/{id}/history` has the details.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        authors: Vec<String>,
    },
    /// A typed error. `id` echoes the failed request; `flow_id` names the flow when the
    /// error concerns a binary sync frame (which has no request id).
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flow_id: Option<String>,
        code: ErrorCode,
        message: String,
    },
}

impl ServerMessage {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            id: None,
            flow_id: None,
            code,
            message: message.into(),
        }
    }

    /// The same error with `id` echoed.
    pub fn with_id(mut self, request: Option<RequestId>) -> Self {
        match &mut self {
            ServerMessage::Welcome { id, .. }
            | ServerMessage::FlowState { id, .. }
            | ServerMessage::Ack { id, .. }
            | ServerMessage::Pong { id }
            | ServerMessage::RunState { id, .. }
            | ServerMessage::Error { id, .. } => *id = request,
            ServerMessage::PresenceState { .. }
            | ServerMessage::PresenceDiff { .. }
            | ServerMessage::RunEvent { .. }
            | ServerMessage::ResumeFrom { .. }
            | ServerMessage::Repaired { .. }
            | ServerMessage::FlowJson { .. }
            | ServerMessage::FlowPatch { .. }
            | ServerMessage::FlowRun { .. } => {}
        }
        self
    }

    /// The request id this message answers, if any.
    pub fn id(&self) -> Option<&RequestId> {
        match self {
            ServerMessage::Welcome { id, .. }
            | ServerMessage::FlowState { id, .. }
            | ServerMessage::Ack { id, .. }
            | ServerMessage::Pong { id }
            | ServerMessage::RunState { id, .. }
            | ServerMessage::Error { id, .. } => id.as_ref(),
            _ => None,
        }
    }

    /// The same error naming a flow.
    pub fn with_flow(mut self, flow: impl Into<String>) -> Self {
        if let ServerMessage::Error { flow_id, .. } = &mut self {
            *flow_id = Some(flow.into());
        }
        self
    }
}

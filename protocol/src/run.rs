//! Run progress: events reported by an execution engine, and the run state clients see.
//!
//! Field names of [`RunSnapshot`] and its parts are camelCase because engines and
//! dashboards already expect that shape; everything else in the protocol is snake_case.

use serde::{Deserialize, Serialize};

/// What happened in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RunEventKind {
    #[serde(rename = "run.started")]
    RunStarted,
    #[serde(rename = "step.started")]
    StepStarted,
    #[serde(rename = "step.succeeded")]
    StepSucceeded,
    #[serde(rename = "step.failed")]
    StepFailed,
    #[serde(rename = "step.retrying")]
    StepRetrying,
    #[serde(rename = "log")]
    Log,
    #[serde(rename = "run.finished")]
    RunFinished,
}

impl RunEventKind {
    /// Whether the event concerns one node of the flow (and so needs `node_id`).
    pub fn needs_node(self) -> bool {
        matches!(
            self,
            RunEventKind::StepStarted
                | RunEventKind::StepSucceeded
                | RunEventKind::StepFailed
                | RunEventKind::StepRetrying
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Running,
    Succeeded,
    Failed,
    Retrying,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// One event as an engine reports it (`POST /v1/runs/{run_id}/events`). `event_id`
/// makes re-posting harmless.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEventInput {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: RunEventKind,
    pub flow_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Milliseconds since the Unix epoch, from the engine's clock.
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// For `run.finished`: how it ended (default `succeeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// For `run.started`: the flow heads the engine ran; the hub records its own
    /// current heads when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_heads: Option<Vec<String>>,
}

/// A stored, sequenced event as watchers receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEvent {
    /// Per-run sequence number, 1, 2, 3, … with no gaps.
    pub seq: u64,
    #[serde(flatten)]
    pub event: RunEventInput,
}

/// Per-step state, keyed by the flow node the step executes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepState {
    pub node_id: String,
    pub status: StepStatus,
    pub attempt: u32,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    pub seq: u64,
    pub ts: u64,
    pub level: LogLevel,
    pub msg: String,
    pub node_id: Option<String>,
}

/// The state of a run (`GET /v1/runs/{id}` and `run_state`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSnapshot {
    pub id: String,
    pub flow_id: String,
    pub status: RunStatus,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// The flow's Automerge heads when the run started: the graph that actually ran
    /// (`GET /v1/flows/{flowId}?heads=…`).
    pub flow_heads: Vec<String>,
    pub last_seq: u64,
    pub steps: Vec<StepState>,
    /// Recent log lines only; older ones via `GET /v1/runs/{id}/events?since_seq=`.
    pub logs: Vec<LogLine>,
}

/// A run in a flow's feed (`subscribe_flow_runs`, `GET /v1/flows/{id}/runs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub id: String,
    pub flow_id: String,
    pub status: RunStatus,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub last_seq: u64,
}

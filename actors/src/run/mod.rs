//! Live run progress: one [`RunActor`] per active run, the [`RunRegistry`] that finds
//! or spawns it, the [`RunStore`] it persists to, and the per-flow runs feed.
//!
//! An execution engine reports events (`run.started`, `step.*`, `log`,
//! `run.finished`); the run actor numbers them 1, 2, 3, … per run, stores each batch,
//! and only then broadcasts it to watchers, who resume after a reconnect from the
//! last sequence number they saw, with no gap and no duplicate. See the [`actor`]
//! module for replay and backpressure.
//!
//! # Layout
//! - [`actor`]: the run actor: sequencing, idempotency, watchers, replay, lifetime.
//! - [`registry`]: get-or-spawn of run actors, and the calls the hub makes.
//! - [`store`]: the `RunStore` trait, its guarantees, and `MemoryRunStore`.
//! - [`feed`]: `flow_run` summaries for subscribers of a flow's runs.
//! - [`state`]: how events fold into a `RunSnapshot` (pure).
//! - [`validate`]: checks on what engines send, naming the bad field.

pub mod actor;
pub mod feed;
pub mod registry;
pub mod state;
pub mod store;
pub mod validate;

pub use actor::{IngestOutcome, RunActor, RunConfig, RunDeps, RunInfo, RunMsg, RunState};
pub use feed::FlowRunsFeed;
pub use registry::{RunRegistry, RunStats, WatchOutcome, WatchRequest};
pub use state::{apply, kind_str, new_snapshot, status_str, summary};
pub use store::{MemoryRunStore, RunStore, StoredRun};
pub use validate::{validate_batch, validate_run_id, InvalidEvent};

use crate::store::StoreError;

/// Why a run operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// What the engine sent is not acceptable (names the field).
    #[error(transparent)]
    Invalid(#[from] InvalidEvent),
    /// The store failed; nothing changed and retrying may succeed.
    #[error("run store failed: {0}")]
    Store(#[from] StoreError),
    /// The flow's heads could not be read for `run.started`; retrying may succeed.
    #[error("cannot read the flow's heads: {0}")]
    Flow(String),
    #[error("could not start the run actor: {0}")]
    Spawn(String),
    #[error("the run actor stopped before answering")]
    ActorGone,
}

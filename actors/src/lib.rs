//! The actors of a flowhub node.
//!
//! Each open flow is a [`FlowActor`](flow::FlowActor) holding the flow's Automerge
//! document; each WebSocket connection is a [`SessionActor`](session::SessionActor).
//! Actors do I/O only through two small traits: [`Store`](store::Store) (durable, every
//! acknowledged change) and [`Bus`](bus::Bus) (pub/sub between nodes, at most once).
//! Each has an in-process implementation here; the hub adds SQL and Redis ones.
//!
//! # Layout
//! - [`outbound`]: a session's bounded outbound queue with per-class policy; what flow,
//!   run and session actors all send into, so it sits below all three.
//! - [`directory`]: one live actor per key, spawned on first use (the flow and run
//!   registries are built on it).
//! - [`flow`]: the flow actor and the registry that gets-or-spawns exactly one per flow.
//! - [`session`]: the session actor, and the input limits (rate, bad frames) every
//!   transport applies.
//! - [`run`]: run actors (live run progress), their registry, `RunStore` and the runs feed.
//! - [`store`]: the `Store` trait, its guarantees, and `MemoryStore`.
//! - [`bus`]: the `Bus` trait (at most once), `MemoryBus`, and the bus message format.
//! - [`identity`]: who a session is and its role per flow, from a verified token.
//! - [`metrics`]: counters, gauges and histograms exposed by the hub on `/metrics`.
//! - [`error`]: this crate's error type.

pub mod bus;
pub mod directory;
pub mod error;
pub mod flow;
pub mod identity;
pub mod metrics;
pub mod outbound;
pub mod run;
pub mod session;
pub mod store;

pub use error::{ActorsError, Result};

/// The `tracing` target of the edit path's spans (`edit.frame`, `store.append`,
/// `store.commit`, `bus.publish`). They are at TRACE level and only the hub's optional
/// OpenTelemetry exporter (cargo feature `otlp`) enables them, so without it each costs
/// a disabled-callsite check and never reaches the logs.
pub const EDIT_PATH_TARGET: &str = "flowhub_edit";

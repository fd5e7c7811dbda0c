//! `flowhub-crdt`: automation flows as an Automerge document.
//!
//! A flow is a canvas of nodes (`trigger`, `http`, `decision`, ...) joined by
//! edges. [`FlowDoc`] stores it in Automerge so that any number of replicas
//! (browser tabs, the hub, offline clients) can edit concurrently and converge
//! to the same graph, and exposes typed edits, a deterministic read view,
//! strict schema validation, raw change exchange and the Automerge sync
//! protocol. The crate is sans-IO: no async, threads, files or clocks — callers
//! move the bytes.
//!
//! # Document schema
//!
//! ```text
//! ROOT (map)
//! ├── name: str
//! ├── nodes: map  node_id -> { kind: str, label: str,
//! │                            position: { x: f64, y: f64 },
//! │                            config: map (nested JSON) }
//! └── edges: map  edge_id -> { source: str, source_port: str,
//!                              target: str, target_port: str }
//! ```
//!
//! # Design points
//!
//! * **Deterministic genesis** ([`genesis`]): the root maps are created by one
//!   byte-identical change that every replica generates, so independently
//!   created documents share their root objects and merge without conflict.
//! * **Atomic positions** ([`FlowDoc::move_node`]): a move writes a fresh
//!   `position` map, so concurrent moves settle on one writer's `(x, y)` pair.
//! * **Dangling edges** ([`FlowDoc::repair`]): deleting a node deletes its edges
//!   in the same change, but an edge added concurrently can still outlive its
//!   node; the read view hides such edges deterministically and `repair` deletes
//!   them.
//! * **Guarded sync** ([`FlowDoc::receive_sync_message_validated`]): the hub
//!   applies a peer's changes only if the resulting document passes the schema,
//!   and otherwise restores the document exactly.
//!
//! # Layout
//!
//! * `error` — [`CrdtError`] and the crate [`Result`] alias.
//! * `model` — plain-data flow types ([`Node`], [`Edge`], [`FlowSnapshot`], [`NewNode`], ...).
//! * [`genesis`] — the fixed, shared genesis change and why it exists.
//! * `flow_doc` — the [`FlowDoc`] type, construction and shared plumbing (lookups, id generation, one-change edits).
//! * `edit` — typed edits (add/move/relabel/configure/delete node, connect/disconnect, repair).
//! * `view` — the tolerant, deterministic read view (`snapshot`, `node`, `to_json`).
//! * [`schema`] — the strict schema, [`SchemaError`] and `validate`.
//! * `json` — nested JSON <-> Automerge map/list conversion for node config.
//! * `guard` — containing Automerge panics on hostile changes by restoring a snapshot.
//! * `incremental` — validating only the nodes and edges a batch of patches touched.
//! * `history` — save/load, heads and raw change exchange ([`StoredChange`]).
//! * `chunks` — splitting raw Automerge chunk sequences found in sync messages.
//! * `sync` — the sync protocol ([`SyncState`], [`Applied`]) and its validated hub variant.

mod chunks;
mod edit;
mod error;
mod flow_doc;
pub mod genesis;
mod guard;
mod history;
mod incremental;
mod json;
mod model;
pub mod schema;
mod sync;
mod tree;
mod view;

pub use automerge::ChangeHash;
pub use edit::FlowTx;
pub use error::{CrdtError, Result};
pub use flow_doc::{genesis_hash, parse_heads, FlowDoc};
pub use history::StoredChange;
pub use json::MAX_CONFIG_DEPTH;
pub use model::{Edge, Endpoint, FlowSnapshot, NewNode, Node, Position};
pub use schema::SchemaError;
pub use sync::{Applied, SyncState};

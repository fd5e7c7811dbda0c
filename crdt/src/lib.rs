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
//! * **Repair instead of refusal** ([`FlowDoc::receive_sync_message_repairing`]): for
//!   peers that cannot roll back (stock automerge-repo), a schema-breaking change is
//!   accepted together with a repair change that makes the flow valid again.
//! * **Batches** ([`FlowDoc::batch`]): any number of typed edits committed as
//!   one change, all or nothing. Consecutive moves of a node in a batch are
//!   written once (only the final position is observable), so a drag that
//!   emits hundreds of moves costs about one move.
//! * **The past** ([`FlowDoc::to_json_at`], [`FlowDoc::snapshot_at`],
//!   [`FlowDoc::validate_at`]): the flow as it was at given heads (e.g. the
//!   graph a run actually ran), read in place without forking;
//!   [`FlowDoc::at_heads`] makes a detached replica at those heads, and
//!   [`parse_heads`] reads heads written as hex.
//!
//! # Performance (automerge 0.12, one core, release)
//!
//! * Reads — [`FlowDoc::snapshot`], [`FlowDoc::to_json`],
//!   [`FlowDoc::validate`] and their `_at` variants — make one pass over the
//!   document with automerge's document iterator (see the `tree` module)
//!   instead of opening each object separately (~3 µs per object): a
//!   1,000-node flow reads in ~6–8 ms instead of ~16 ms. The iterator itself
//!   is ~5 ms of that, the floor for a full read through automerge's API.
//! * Typed edits cost what their Automerge ops cost: each insertion into the
//!   columnar op set is one splice across all of its columns (~130–250k
//!   instructions on a 100-node flow, growing with the document), a commit
//!   ~40k more. A move writes its 3 ops in two splices (the new position
//!   map's `x` and `y` go in together, see `edit::put_position`): ~430k
//!   instructions, against ~110k for one put and commit into an empty
//!   document. FlowDoc's own share (checks, cached lookups, id generation)
//!   is under 1%; the `floor` benchmarks and `examples/edit_instructions`
//!   (instruction counts under callgrind) measure the bare Automerge cost of
//!   each edit for comparison.
//!
//! # Layout
//!
//! * `error` — [`CrdtError`] and the crate [`Result`] alias.
//! * `model` — plain-data flow types ([`Node`], [`Edge`], [`FlowSnapshot`], [`NewNode`], ...).
//! * [`genesis`] — the fixed, shared genesis change and why it exists.
//! * `flow_doc` — the [`FlowDoc`] type, construction, detached views at heads, and shared plumbing (cached lookups, id generation, one-change edits).
//! * `edit` — typed edits (add/move/relabel/configure/unconfigure/set kind/delete node,
//!   connect/disconnect, repair) and [`FlowTx`] batches.
//! * `ops` — typed edits as data ([`Edit`], JSON-tagged by `op`) and
//!   [`FlowDoc::apply_edits`], which applies a list of them as one change.
//! * `diff` — [`FlowDiff`]: the typed structural difference between two versions
//!   ([`FlowDoc::diff`] at heads, [`FlowDiff::between`] snapshots) and the edits
//!   that turn one into the other ([`FlowDiff::to_edits`]).
//! * `summary` — history for people: [`FlowDoc::change_summaries`] (each change with
//!   what it did, [`EditSummary`]) and [`group_sessions`] (changes into editing sessions).
//! * `undo` — [`UndoStack`]: one user's undo/redo as inverse typed edits, which
//!   leave alone whatever collaborators changed since (the rules are in its docs).
//! * `tree` — one-pass loading of the visible document (or a subtree) for the readers below.
//! * `view` — the tolerant, deterministic read view (`snapshot`, `node`, `to_json`, and `_at` variants).
//! * [`schema`] — the strict schema, [`SchemaError`] and `validate`.
//! * `repair` — [`FlowDoc::repair_schema`]: one change that makes an invalid document
//!   valid, for peers that cannot roll back a refused change ([`Repair`]).
//! * `json` — nested JSON <-> Automerge map/list conversion for node config.
//! * `guard` — containing Automerge panics on hostile changes by restoring a snapshot.
//! * `incremental` — validating only the nodes and edges a batch of patches touched.
//! * `history` — save/load, heads and raw change exchange ([`StoredChange`]).
//! * `chunks` — splitting raw Automerge chunk sequences found in sync messages.
//! * `sync` — the sync protocol ([`SyncState`], [`Applied`]) and its validated hub variant.
//! * `whole_history` — what sync messages take from the whole history (the saved
//!   document, the sorted hashes, the bloom filter), kept per heads.
//! * `stream` — change streaming: the hub's [`PeerLink`] and a client's [`HubLink`],
//!   which send new changes as they are to peers known to be current ([`Route`]).

mod chunks;
mod diff;
mod edit;
mod error;
mod flow_doc;
pub mod genesis;
mod guard;
mod history;
mod incremental;
mod json;
mod model;
mod ops;
mod repair;
pub mod schema;
mod stream;
mod summary;
mod sync;
mod tree;
mod undo;
mod view;
mod whole_history;

pub use automerge::ChangeHash;
pub use diff::{Changed, ConfigChange, FlowDiff, NodeChange};
pub use edit::FlowTx;
pub use error::{CrdtError, Result};
pub use flow_doc::{genesis_hash, parse_heads, FlowDoc};
pub use history::StoredChange;
pub use json::MAX_CONFIG_DEPTH;
pub use model::{Edge, Endpoint, FlowSnapshot, NewNode, Node, Position};
pub use ops::Edit;
pub use repair::{Repair, MAX_REPAIRS, UNKNOWN_KIND};
pub use schema::SchemaError;
pub use stream::{change_frame_hashes, ChangesOutcome, HubLink, Outgoing, PeerLink, Route};
pub use summary::{group_sessions, ChangeSummary, ConfigKey, EditSession, EditSummary};
pub use sync::{sync_message_hashes, Applied, Repaired, SyncState};
pub use undo::{SkipReason, Skipped, UndoStack, Undone, DEFAULT_UNDO_LIMIT};

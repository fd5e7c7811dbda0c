//! Plain-data types: what a flow looks like once read out of the CRDT.
//!
//! These types carry no Automerge handles, so they can be serialised, compared
//! and sent to clients freely.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node's position on the canvas.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Horizontal canvas coordinate.
    pub x: f64,
    /// Vertical canvas coordinate.
    pub y: f64,
}

impl Position {
    /// A position at `(x, y)`.
    pub fn new(x: f64, y: f64) -> Self {
        Self { x, y }
    }
}

/// One node of a flow, as read from the document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The node's key in the `nodes` map.
    pub id: String,
    /// Lowercase node kind, e.g. `trigger`, `http`, `decision`.
    pub kind: String,
    /// Human-readable label shown on the canvas.
    pub label: String,
    /// Canvas position.
    pub position: Position,
    /// Kind-specific configuration (arbitrary JSON object).
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// One end of an edge: a node and one of its ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// Node id.
    pub node: String,
    /// Port name on that node (e.g. `out`, `in`, `true`, `false`).
    pub port: String,
}

impl Endpoint {
    /// An endpoint at `node`'s `port`.
    pub fn new(node: impl Into<String>, port: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            port: port.into(),
        }
    }
}

/// A directed connection between two node ports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    /// The edge's key in the `edges` map.
    pub id: String,
    /// Where the edge starts.
    pub source: Endpoint,
    /// Where the edge ends.
    pub target: Endpoint,
}

/// The whole flow as one value: the deterministic read view of a document.
///
/// Dangling edges (an endpoint's node no longer exists) are omitted, so every
/// replica at the same heads produces an identical snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FlowSnapshot {
    /// Flow name.
    pub name: String,
    /// Nodes by id.
    pub nodes: BTreeMap<String, Node>,
    /// Edges by id (dangling edges omitted).
    pub edges: BTreeMap<String, Edge>,
}

/// Input to [`crate::FlowDoc::add_node`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewNode {
    /// Explicit id, or `None` to let the document generate a unique one.
    pub id: Option<String>,
    /// Node kind (1..=64 chars of `[a-z0-9_.-]`).
    pub kind: String,
    /// Label (at most 1000 chars).
    pub label: String,
    /// Initial position.
    pub position: Position,
    /// Initial configuration.
    pub config: serde_json::Map<String, serde_json::Value>,
}

impl NewNode {
    /// A node with a generated id and empty config.
    pub fn new(kind: impl Into<String>, label: impl Into<String>, position: Position) -> Self {
        Self {
            id: None,
            kind: kind.into(),
            label: label.into(),
            position,
            config: serde_json::Map::new(),
        }
    }

    /// Use an explicit id instead of a generated one.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Replace the whole initial configuration.
    pub fn with_config(mut self, config: serde_json::Map<String, serde_json::Value>) -> Self {
        self.config = config;
        self
    }

    /// Set one initial configuration key.
    pub fn config_entry(mut self, key: impl Into<String>, value: serde_json::Value) -> Self {
        self.config.insert(key.into(), value);
        self
    }
}

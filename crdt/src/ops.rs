//! Typed edits as data: [`Edit`], the JSON form of [`FlowDoc`]'s typed edits.
//!
//! Clients without an Automerge runtime (scripts, phones, the execution
//! engine) send a list of these; [`FlowDoc::apply_edits`] applies it as one
//! change with exactly the checks and errors of the typed edit methods. Diffs
//! ([`crate::FlowDiff::to_edits`]) and undo ([`crate::UndoStack`]) speak the
//! same vocabulary, so one applier serves all three.
//!
//! The JSON shape is internally tagged by `op`, with snake_case names:
//!
//! ```json
//! [{"op": "add_node", "id": "n1", "kind": "http", "label": "Fetch",
//!   "position": {"x": 0, "y": 0}, "config": {"url": "https://example.com"}},
//!  {"op": "move_node", "id": "n1", "to": {"x": 1, "y": 2}},
//!  {"op": "connect", "source": {"node": "n0", "port": "out"},
//!   "target": {"node": "n1", "port": "in"}}]
//! ```

use automerge::ChangeHash;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::edit::FlowTx;
use crate::error::Result;
use crate::flow_doc::FlowDoc;
use crate::model::{Endpoint, NewNode, Node, Position};

/// One typed edit as data. Each variant does what the [`FlowDoc`] method of
/// the same name does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Edit {
    /// [`FlowDoc::set_name`].
    SetName {
        /// The new flow name.
        name: String,
    },
    /// [`FlowDoc::add_node`]; `id: None` (or absent) generates one.
    AddNode {
        /// Explicit id, or none to generate one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// Node kind.
        kind: String,
        /// Label (empty if absent).
        #[serde(default)]
        label: String,
        /// Initial position.
        position: Position,
        /// Initial config (empty if absent).
        #[serde(default)]
        config: Map<String, Value>,
    },
    /// [`FlowDoc::move_node`].
    MoveNode {
        /// Node id.
        id: String,
        /// New position.
        to: Position,
    },
    /// [`FlowDoc::relabel_node`].
    RelabelNode {
        /// Node id.
        id: String,
        /// New label.
        label: String,
    },
    /// [`FlowDoc::set_node_kind`].
    SetNodeKind {
        /// Node id.
        id: String,
        /// New kind.
        kind: String,
    },
    /// [`FlowDoc::configure_node`]: set one config key (`null` keeps the key, as null).
    ConfigureNode {
        /// Node id.
        id: String,
        /// Config key.
        key: String,
        /// New value (any JSON).
        value: Value,
    },
    /// [`FlowDoc::unconfigure_node`]: remove one config key.
    UnconfigureNode {
        /// Node id.
        id: String,
        /// Config key.
        key: String,
    },
    /// [`FlowDoc::delete_node`] (its edges go with it).
    DeleteNode {
        /// Node id.
        id: String,
    },
    /// [`FlowDoc::connect`]; `id: None` (or absent) generates one.
    Connect {
        /// Explicit edge id, or none to generate one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// Where the edge starts.
        source: Endpoint,
        /// Where the edge ends.
        target: Endpoint,
    },
    /// [`FlowDoc::disconnect`].
    Disconnect {
        /// Edge id.
        id: String,
    },
}

impl Edit {
    /// The edit that adds `node` exactly as it is (same id, kind, label,
    /// position and config).
    pub fn add(node: Node) -> Self {
        Edit::AddNode {
            id: Some(node.id),
            kind: node.kind,
            label: node.label,
            position: node.position,
            config: node.config,
        }
    }
}

impl FlowTx<'_> {
    /// Apply one [`Edit`] inside the batch. Returns the id an `add_node` or
    /// `connect` used (generated or given), `None` for other edits.
    pub fn apply(&mut self, edit: &Edit) -> Result<Option<String>> {
        match edit {
            Edit::SetName { name } => self.set_name(name)?,
            Edit::AddNode {
                id,
                kind,
                label,
                position,
                config,
            } => {
                let node = NewNode {
                    id: id.clone(),
                    kind: kind.clone(),
                    label: label.clone(),
                    position: *position,
                    config: config.clone(),
                };
                return self.add_node(node).map(Some);
            }
            Edit::MoveNode { id, to } => self.move_node(id, *to)?,
            Edit::RelabelNode { id, label } => self.relabel_node(id, label)?,
            Edit::SetNodeKind { id, kind } => self.set_node_kind(id, kind)?,
            Edit::ConfigureNode { id, key, value } => {
                self.configure_node(id, key, value.clone())?
            }
            Edit::UnconfigureNode { id, key } => self.unconfigure_node(id, key)?,
            Edit::DeleteNode { id } => self.delete_node(id)?,
            Edit::Connect { id, source, target } => {
                return self
                    .connect(id.clone(), source.clone(), target.clone())
                    .map(Some)
            }
            Edit::Disconnect { id } => self.disconnect(id)?,
        }
        Ok(None)
    }
}

impl FlowDoc {
    /// Apply `edits` in order as **one** change (see [`FlowDoc::batch`]): all or
    /// nothing, each edit checked and failing exactly as the typed edit method
    /// of the same name. An empty list still commits one (empty) change, as
    /// every typed edit does.
    ///
    /// This is what a JSON edit endpoint calls with a client's request body.
    pub fn apply_edits(&mut self, edits: &[Edit]) -> Result<ChangeHash> {
        Ok(self.apply_edits_ids(edits)?.1)
    }

    /// [`FlowDoc::apply_edits`], also returning, per edit, the id an
    /// `add_node` or `connect` used (`None` for other edits), so a caller that
    /// let the document generate ids learns them.
    pub fn apply_edits_ids(&mut self, edits: &[Edit]) -> Result<(Vec<Option<String>>, ChangeHash)> {
        self.batch(|tx| edits.iter().map(|edit| tx.apply(edit)).collect())
    }

    /// [`FlowDoc::apply_edits`], writing `message` into the change (Automerge's change
    /// message), e.g. the hub's record of an idempotency key, which then travels with
    /// the change to every replica and survives any restart
    /// ([`FlowDoc::change_with_message`] finds it again).
    pub fn apply_edits_with_message(
        &mut self,
        edits: &[Edit],
        message: &str,
    ) -> Result<ChangeHash> {
        self.edit_message = Some(message.to_owned());
        let result = self.apply_edits(edits);
        self.edit_message = None;
        result
    }

    /// The newest applied change whose message is exactly `message`, if any. Reads
    /// the metadata of every change: callers that ask often keep their own index.
    pub fn change_with_message(&mut self, message: &str) -> Option<ChangeHash> {
        self.doc
            .get_changes_meta(&[])
            .into_iter()
            .rev()
            .find(|m| m.message.as_deref() == Some(message))
            .map(|m| m.hash)
    }
}

//! Structural diffs between two versions of a flow ([`FlowDiff`]).
//!
//! A diff compares two read views ([`FlowSnapshot`]s), not Automerge ops: it
//! answers "what does the flow look like differently" (the question a person
//! comparing the run that succeeded with the one that failed asks), however
//! many changes, merges or undone edits lie between the two versions. It is
//! typed so a UI can highlight added, removed and changed nodes, and it turns
//! back into [`Edit`]s ([`FlowDiff::to_edits`]) that make the first version
//! equal to the second — the basis of restore and undo.
//!
//! Everything is listed in id order, so equal inputs give identical diffs on
//! every replica.

use std::collections::{BTreeMap, BTreeSet};

use automerge::ChangeHash;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::Result;
use crate::flow_doc::FlowDoc;
use crate::model::{Edge, FlowSnapshot, Node, Position};
use crate::ops::Edit;

/// A value that changed from `old` to `new`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Changed<T> {
    /// The value in the first version.
    pub old: T,
    /// The value in the second version.
    pub new: T,
}

impl<T> Changed<T> {
    /// `old -> new`.
    pub fn new(old: T, new: T) -> Self {
        Self { old, new }
    }

    /// `new -> old`.
    pub fn inverted(self) -> Self {
        Self {
            old: self.new,
            new: self.old,
        }
    }
}

/// One config key's change. An absent side means the key did not exist in
/// that version (in JSON the field is omitted), which differs from a key
/// present with the value `null` (`"old": null`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigChange {
    /// The value in the first version; `None`: the key was added.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub old: Option<Value>,
    /// The value in the second version; `None`: the key was removed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub new: Option<Value>,
}

/// A field that is present is `Some`, even when it holds `null`; serde's
/// default for `Option` would read `null` as `None` and lose the difference.
fn present<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// How one node present in both versions differs. Only changed fields are set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeChange {
    /// The node id.
    pub id: String,
    /// The kind, if it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Changed<String>>,
    /// The label, if it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Changed<String>>,
    /// The position (moved from -> to), if it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Changed<Position>>,
    /// Each config key whose value changed, was added or was removed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, ConfigChange>,
}

impl NodeChange {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.kind.is_none()
            && self.label.is_none()
            && self.position.is_none()
            && self.config.is_empty()
    }

    /// The same change the other way round.
    pub fn inverted(self) -> Self {
        Self {
            id: self.id,
            kind: self.kind.map(Changed::inverted),
            label: self.label.map(Changed::inverted),
            position: self.position.map(Changed::inverted),
            config: self
                .config
                .into_iter()
                .map(|(k, c)| {
                    (
                        k,
                        ConfigChange {
                            old: c.new,
                            new: c.old,
                        },
                    )
                })
                .collect(),
        }
    }
}

/// What differs between two versions of a flow: see the module docs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FlowDiff {
    /// The flow name, if it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Changed<String>>,
    /// Nodes only in the second version, whole.
    #[serde(default)]
    pub nodes_added: Vec<Node>,
    /// Nodes only in the first version, whole.
    #[serde(default)]
    pub nodes_removed: Vec<Node>,
    /// Nodes in both versions that differ.
    #[serde(default)]
    pub nodes_changed: Vec<NodeChange>,
    /// Edges only in the second version.
    #[serde(default)]
    pub edges_added: Vec<Edge>,
    /// Edges only in the first version.
    #[serde(default)]
    pub edges_removed: Vec<Edge>,
    /// Edges in both versions whose endpoints differ.
    #[serde(default)]
    pub edges_changed: Vec<Changed<Edge>>,
}

/// Exact equality of positions: `0.0` and `-0.0` compare equal as floats but
/// are written differently in JSON, and a diff must not hide a difference a
/// reader of `to_json` can see.
pub(crate) fn same_position(a: Position, b: Position) -> bool {
    a.x.to_bits() == b.x.to_bits() && a.y.to_bits() == b.y.to_bits()
}

/// Per-field differences of one node present in both versions.
pub(crate) fn node_change(old: &Node, new: &Node) -> NodeChange {
    let changed = |a: &String, b: &String| (a != b).then(|| Changed::new(a.clone(), b.clone()));
    let mut config = BTreeMap::new();
    for (key, value) in &old.config {
        match new.config.get(key) {
            Some(v) if v == value => {}
            v => {
                config.insert(
                    key.clone(),
                    ConfigChange {
                        old: Some(value.clone()),
                        new: v.cloned(),
                    },
                );
            }
        }
    }
    for (key, value) in &new.config {
        if !old.config.contains_key(key) {
            config.insert(
                key.clone(),
                ConfigChange {
                    old: None,
                    new: Some(value.clone()),
                },
            );
        }
    }
    NodeChange {
        id: new.id.clone(),
        kind: changed(&old.kind, &new.kind),
        label: changed(&old.label, &new.label),
        position: (!same_position(old.position, new.position))
            .then(|| Changed::new(old.position, new.position)),
        config,
    }
}

impl FlowDiff {
    /// What differs from `old` to `new`.
    pub fn between(old: &FlowSnapshot, new: &FlowSnapshot) -> Self {
        let mut diff = FlowDiff {
            name: (old.name != new.name).then(|| Changed::new(old.name.clone(), new.name.clone())),
            ..Default::default()
        };
        for (id, node) in &old.nodes {
            match new.nodes.get(id) {
                None => diff.nodes_removed.push(node.clone()),
                Some(new_node) => {
                    let change = node_change(node, new_node);
                    if !change.is_empty() {
                        diff.nodes_changed.push(change);
                    }
                }
            }
        }
        diff.nodes_added = added(&old.nodes, &new.nodes);
        for (id, edge) in &old.edges {
            match new.edges.get(id) {
                None => diff.edges_removed.push(edge.clone()),
                Some(e) if e != edge => diff
                    .edges_changed
                    .push(Changed::new(edge.clone(), e.clone())),
                Some(_) => {}
            }
        }
        diff.edges_added = added(&old.edges, &new.edges);
        diff
    }

    /// Whether the two versions look the same.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.nodes_added.is_empty()
            && self.nodes_removed.is_empty()
            && self.nodes_changed.is_empty()
            && self.edges_added.is_empty()
            && self.edges_removed.is_empty()
            && self.edges_changed.is_empty()
    }

    /// Ids of every node added, removed or changed.
    pub fn node_ids(&self) -> BTreeSet<&str> {
        let added = self.nodes_added.iter().map(|n| n.id.as_str());
        let removed = self.nodes_removed.iter().map(|n| n.id.as_str());
        let changed = self.nodes_changed.iter().map(|n| n.id.as_str());
        added.chain(removed).chain(changed).collect()
    }

    /// Ids of every edge added, removed or changed.
    pub fn edge_ids(&self) -> BTreeSet<&str> {
        let added = self.edges_added.iter().map(|e| e.id.as_str());
        let removed = self.edges_removed.iter().map(|e| e.id.as_str());
        let changed = self.edges_changed.iter().map(|e| e.new.id.as_str());
        added.chain(removed).chain(changed).collect()
    }

    /// The diff from the second version back to the first.
    pub fn inverted(self) -> Self {
        FlowDiff {
            name: self.name.map(Changed::inverted),
            nodes_added: self.nodes_removed,
            nodes_removed: self.nodes_added,
            nodes_changed: self
                .nodes_changed
                .into_iter()
                .map(NodeChange::inverted)
                .collect(),
            edges_added: self.edges_removed,
            edges_removed: self.edges_added,
            edges_changed: self
                .edges_changed
                .into_iter()
                .map(Changed::inverted)
                .collect(),
        }
    }

    /// Edits that turn the first version into the second, for
    /// [`FlowDoc::apply_edits`] on a document showing the first version.
    ///
    /// Order matters and is: disconnect removed and re-pointed edges (while
    /// their nodes still exist), delete removed nodes, rename, add nodes,
    /// change nodes (kind, label, position, config keys), connect added and
    /// re-pointed edges (once all their nodes exist). A re-pointed edge is
    /// disconnected and connected again under the same id.
    pub fn to_edits(&self) -> Vec<Edit> {
        let mut edits = Vec::new();
        for edge in self
            .edges_removed
            .iter()
            .chain(self.edges_changed.iter().map(|c| &c.old))
        {
            edits.push(Edit::Disconnect {
                id: edge.id.clone(),
            });
        }
        for node in &self.nodes_removed {
            edits.push(Edit::DeleteNode {
                id: node.id.clone(),
            });
        }
        if let Some(name) = &self.name {
            edits.push(Edit::SetName {
                name: name.new.clone(),
            });
        }
        edits.extend(self.nodes_added.iter().cloned().map(Edit::add));
        for change in &self.nodes_changed {
            push_node_edits(&mut edits, change);
        }
        for edge in self
            .edges_added
            .iter()
            .chain(self.edges_changed.iter().map(|c| &c.new))
        {
            edits.push(Edit::Connect {
                id: Some(edge.id.clone()),
                source: edge.source.clone(),
                target: edge.target.clone(),
            });
        }
        edits
    }
}

/// The edits that apply one node's changes.
fn push_node_edits(edits: &mut Vec<Edit>, change: &NodeChange) {
    let id = &change.id;
    if let Some(kind) = &change.kind {
        edits.push(Edit::SetNodeKind {
            id: id.clone(),
            kind: kind.new.clone(),
        });
    }
    if let Some(label) = &change.label {
        edits.push(Edit::RelabelNode {
            id: id.clone(),
            label: label.new.clone(),
        });
    }
    if let Some(position) = &change.position {
        edits.push(Edit::MoveNode {
            id: id.clone(),
            to: position.new,
        });
    }
    for (key, value) in &change.config {
        edits.push(match &value.new {
            Some(value) => Edit::ConfigureNode {
                id: id.clone(),
                key: key.clone(),
                value: value.clone(),
            },
            None => Edit::UnconfigureNode {
                id: id.clone(),
                key: key.clone(),
            },
        });
    }
}

/// Values of `new` whose key `old` lacks, in key order.
fn added<T: Clone>(old: &BTreeMap<String, T>, new: &BTreeMap<String, T>) -> Vec<T> {
    new.iter()
        .filter(|(id, _)| !old.contains_key(*id))
        .map(|(_, v)| v.clone())
        .collect()
}

impl FlowDoc {
    /// What differs between the flow at heads `from` and at heads `to` (either
    /// may be older), both read in place as [`FlowDoc::snapshot_at`] does:
    /// nothing is forked. Costs two historical reads of the document.
    ///
    /// Fails with [`crate::CrdtError::UnknownHeads`] /
    /// [`crate::CrdtError::InvalidHeads`] as [`FlowDoc::snapshot_at`] does.
    pub fn diff(&mut self, from: &[ChangeHash], to: &[ChangeHash]) -> Result<FlowDiff> {
        let old = self.snapshot_at(from)?;
        let new = self.snapshot_at(to)?;
        Ok(FlowDiff::between(&old, &new))
    }
}

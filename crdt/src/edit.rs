//! Typed edits: the only writes clients and the hub should make.
//!
//! Each edit checks its input against the schema first (so a typed edit can never
//! produce a document `validate` rejects) and commits exactly one Automerge
//! change, returning its hash.

use std::collections::BTreeSet;
use std::ops::RangeFull;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValueRef, ValueRef};

use crate::error::{CrdtError, Result};
use crate::flow_doc::{map_child, FlowDoc};
use crate::json;
use crate::model::{Endpoint, NewNode, Position};
use crate::schema::{self, join};

impl FlowDoc {
    /// Rename the flow.
    pub fn set_name(&mut self, name: &str) -> Result<ChangeHash> {
        schema::check_label("name", name)?;
        let (_, hash) = self.edit(|this| Ok(this.doc.put(automerge::ROOT, "name", name)?))?;
        Ok(hash)
    }

    /// Add a node; generates a unique id when `node.id` is `None`.
    pub fn add_node(&mut self, node: NewNode) -> Result<(String, ChangeHash)> {
        let nodes = self.require_root_map("nodes")?;
        let id = match node.id {
            Some(id) => {
                schema::check_id(&join("nodes", &id), &id)?;
                if matches!(self.doc.get(&nodes, id.as_str()), Ok(Some(_))) {
                    return Err(CrdtError::DuplicateId(id));
                }
                id
            }
            None => self.fresh_id("n", &nodes),
        };
        let path = join("nodes", &id);
        schema::check_kind(&join(&path, "kind"), &node.kind)?;
        schema::check_label(&join(&path, "label"), &node.label)?;
        check_position(&path, node.position)?;
        let config = serde_json::Value::Object(node.config);
        schema::check_config_value(&join(&path, "config"), &config, 0)?;
        let serde_json::Value::Object(config) = config else {
            return Err(CrdtError::InvalidEdit("config must be an object".into()));
        };

        self.edit(|this| {
            let doc = &mut this.doc;
            let obj = doc.put_object(&nodes, id.as_str(), ObjType::Map)?;
            doc.put(&obj, "kind", node.kind.as_str())?;
            doc.put(&obj, "label", node.label.as_str())?;
            put_position(doc, &obj, node.position)?;
            let cfg = doc.put_object(&obj, "config", ObjType::Map)?;
            json::put_entries(doc, &cfg, &config)?;
            Ok(id)
        })
    }

    /// Move a node.
    ///
    /// Writes a *new* `position` map holding both coordinates instead of
    /// updating `x` and `y` in place. Concurrent moves of one node then conflict
    /// on the single `position` key, and Automerge picks one whole map as the
    /// winner on every replica: the node lands exactly where one user dropped it,
    /// never at x from one user and y from another.
    pub fn move_node(&mut self, id: &str, to: Position) -> Result<ChangeHash> {
        let obj = self.node_obj(id)?;
        check_position(&join("nodes", id), to)?;
        let (_, hash) = self.edit(|this| Ok(put_position(&mut this.doc, &obj, to)?))?;
        Ok(hash)
    }

    /// Change a node's label.
    pub fn relabel_node(&mut self, id: &str, label: &str) -> Result<ChangeHash> {
        let obj = self.node_obj(id)?;
        schema::check_label(&join(&join("nodes", id), "label"), label)?;
        let (_, hash) = self.edit(|this| Ok(this.doc.put(&obj, "label", label)?))?;
        Ok(hash)
    }

    /// Set one key of a node's config to a (possibly nested) JSON value.
    ///
    /// Only that key is written, so concurrent edits of different keys merge.
    /// Objects and arrays become Automerge maps and lists; `null` is stored as a
    /// null scalar (the key stays present).
    pub fn configure_node(
        &mut self,
        id: &str,
        key: &str,
        value: serde_json::Value,
    ) -> Result<ChangeHash> {
        let obj = self.node_obj(id)?;
        let path = join(&join("nodes", id), "config");
        let cfg = map_child(&self.doc, &obj, "config")
            .ok_or_else(|| CrdtError::InvalidDocument(format!("{path}: not a map")))?;
        schema::check_config_value(&join(&path, key), &value, 1)?;
        let (_, hash) = self.edit(|this| Ok(json::put_value(&mut this.doc, &cfg, key, &value)?))?;
        Ok(hash)
    }

    /// Delete a node and, in the same change, every edge touching it, so no
    /// replica ever observes the node gone but its edges still there.
    pub fn delete_node(&mut self, id: &str) -> Result<ChangeHash> {
        self.node_obj(id)?;
        let nodes = self.require_root_map("nodes")?;
        let edges = self.require_root_map("edges")?;
        let touching: Vec<String> = edge_endpoints(&self.doc, &edges)
            .into_iter()
            .filter(|(_, s, t)| s.as_deref() == Some(id) || t.as_deref() == Some(id))
            .map(|(edge, _, _)| edge)
            .collect();
        let (_, hash) = self.edit(|this| {
            for edge in &touching {
                this.doc.delete(&edges, edge.as_str())?;
            }
            this.doc.delete(&nodes, id)?;
            Ok(())
        })?;
        Ok(hash)
    }

    /// Connect `source` to `target`; both nodes must exist. Generates a unique
    /// id when `id` is `None`.
    pub fn connect(
        &mut self,
        id: Option<String>,
        source: Endpoint,
        target: Endpoint,
    ) -> Result<(String, ChangeHash)> {
        self.node_obj(&source.node)?;
        self.node_obj(&target.node)?;
        let edges = self.require_root_map("edges")?;
        let id = match id {
            Some(id) => {
                schema::check_id(&join("edges", &id), &id)?;
                if matches!(self.doc.get(&edges, id.as_str()), Ok(Some(_))) {
                    return Err(CrdtError::DuplicateId(id));
                }
                id
            }
            None => self.fresh_id("e", &edges),
        };
        self.edit(|this| {
            let doc = &mut this.doc;
            let obj = doc.put_object(&edges, id.as_str(), ObjType::Map)?;
            doc.put(&obj, "source", source.node.as_str())?;
            doc.put(&obj, "source_port", source.port.as_str())?;
            doc.put(&obj, "target", target.node.as_str())?;
            doc.put(&obj, "target_port", target.port.as_str())?;
            Ok(id)
        })
    }

    /// Remove an edge.
    pub fn disconnect(&mut self, edge_id: &str) -> Result<ChangeHash> {
        self.edge_obj(edge_id)?;
        let edges = self.require_root_map("edges")?;
        let (_, hash) = self.edit(|this| Ok(this.doc.delete(&edges, edge_id)?))?;
        Ok(hash)
    }

    /// Delete every dangling edge (an endpoint's node id is no longer a key of
    /// `nodes`, typically because another replica deleted the node while this one
    /// connected to it) in one change.
    ///
    /// Returns `None` when there is nothing to repair, so calling it after every
    /// merge is cheap and idempotent. Replicas repairing concurrently both delete
    /// the same keys, which merges cleanly.
    pub fn repair(&mut self) -> Result<Option<ChangeHash>> {
        let dangling = self.dangling_edges()?;
        if dangling.is_empty() {
            return Ok(None);
        }
        let edges = self.require_root_map("edges")?;
        let (_, hash) = self.edit(|this| {
            for edge in &dangling {
                this.doc.delete(&edges, edge.as_str())?;
            }
            Ok(())
        })?;
        Ok(Some(hash))
    }

    /// Ids of edges whose source or target is not a key of `nodes`.
    pub fn dangling_edges(&self) -> Result<Vec<String>> {
        let nodes = self.require_root_map("nodes")?;
        let edges = self.require_root_map("edges")?;
        let node_ids: BTreeSet<String> = self.doc.keys(&nodes).collect();
        let exists = |n: &Option<String>| n.as_ref().is_some_and(|n| node_ids.contains(n));
        Ok(edge_endpoints(&self.doc, &edges)
            .into_iter()
            .filter(|(_, s, t)| {
                // A malformed edge lacking an endpoint is a schema problem, not a
                // concurrency one: leave it for validation to report.
                (s.is_some() && !exists(s)) || (t.is_some() && !exists(t))
            })
            .map(|(edge, _, _)| edge)
            .collect())
    }
}

fn check_position(node_path: &str, p: Position) -> Result<(), schema::SchemaError> {
    let path = join(node_path, "position");
    schema::check_coordinate(&join(&path, "x"), p.x)?;
    schema::check_coordinate(&join(&path, "y"), p.y)
}

fn put_position(
    doc: &mut AutoCommit,
    node: &ObjId,
    p: Position,
) -> Result<(), automerge::AutomergeError> {
    let pos = doc.put_object(node, "position", ObjType::Map)?;
    doc.put(&pos, "x", p.x)?;
    doc.put(&pos, "y", p.y)?;
    Ok(())
}

/// `(edge id, source node, target node)` for every edge map; endpoints are
/// `None` when missing or not strings.
fn edge_endpoints(
    doc: &AutoCommit,
    edges: &ObjId,
) -> Vec<(String, Option<String>, Option<String>)> {
    doc.map_range(edges, RangeFull)
        .filter(|item| matches!(item.value, ValueRef::Object(ObjType::Map)))
        .map(|item| {
            let obj = item.id();
            let (mut source, mut target) = (None, None);
            for field in doc.map_range(&obj, RangeFull) {
                if let ValueRef::Scalar(ScalarValueRef::Str(s)) = &field.value {
                    match field.key.as_ref() {
                        "source" => source = Some(s.to_string()),
                        "target" => target = Some(s.to_string()),
                        _ => {}
                    }
                }
            }
            (item.key.into_owned(), source, target)
        })
        .collect()
}

//! The read view: a deterministic, tolerant projection of the document.
//!
//! Determinism matters more than completeness here: every replica at the same
//! heads must show the same graph, so every rule below depends only on document
//! content (winning values), never on local history.
//! * Malformed entries (wrong types, missing fields, non-finite coordinates) are
//!   skipped instead of failing the whole read, so one bad node cannot blank a
//!   flow that predates a schema rule.
//! * Dangling edges — an endpoint's node is absent from the view — are omitted.
//!   Concurrency produces them (one replica deletes a node while another
//!   connects to it); [`FlowDoc::repair`] deletes them for good.

use std::collections::BTreeMap;

use automerge::{ChangeHash, ObjType, ScalarValueRef, ValueRef, ROOT};
use serde_json::{Map, Value};

use crate::error::Result;
use crate::flow_doc::FlowDoc;
use crate::json;
use crate::model::{Edge, Endpoint, FlowSnapshot, Node, Position};
use crate::tree::{Slot, Tree, Val};

impl FlowDoc {
    /// The whole flow as plain data, dangling edges omitted.
    ///
    /// One pass over the document (see the `tree` module): a few milliseconds
    /// for a 1,000-node flow.
    pub fn snapshot(&self) -> FlowSnapshot {
        snapshot_of(&Tree::load(&self.doc, &ROOT, ObjType::Map, None))
    }

    /// The flow as it was at `heads` (e.g. the heads a run was started at),
    /// read in place: nothing is forked or replayed.
    ///
    /// Fails with [`crate::CrdtError::UnknownHeads`] naming every hash this
    /// document does not have (changes still queued for missing dependencies
    /// count as unknown), and with [`crate::CrdtError::InvalidHeads`] for an
    /// empty list.
    pub fn snapshot_at(&mut self, heads: &[ChangeHash]) -> Result<FlowSnapshot> {
        let heads = self.known_heads(heads)?;
        Ok(snapshot_of(&Tree::load(
            &self.doc,
            &ROOT,
            ObjType::Map,
            Some(&heads),
        )))
    }

    /// One node, if present and well-formed.
    pub fn node(&self, id: &str) -> Option<Node> {
        let nodes = self.root_map("nodes")?;
        let obj = crate::flow_doc::map_child(&self.doc, &nodes, id)?;
        read_node(&Tree::load(&self.doc, &obj, ObjType::Map, None), id, 0)
    }

    /// The snapshot as JSON plus the heads it was taken at:
    /// `{"name", "heads": [hex..], "nodes": {id: Node}, "edges": {id: Edge}}`.
    pub fn to_json(&mut self) -> Value {
        let snapshot = self.snapshot();
        snapshot_json(snapshot, self.heads_hex())
    }

    /// [`FlowDoc::to_json`] as of `heads`, read in place (see
    /// [`FlowDoc::snapshot_at`]); `"heads"` is the given heads, deduplicated
    /// and sorted as hex. Errors as for [`FlowDoc::snapshot_at`].
    pub fn to_json_at(&mut self, heads: &[ChangeHash]) -> Result<Value> {
        let heads = self.known_heads(heads)?;
        let snapshot = snapshot_of(&Tree::load(&self.doc, &ROOT, ObjType::Map, Some(&heads)));
        Ok(snapshot_json(snapshot, hex_sorted(&heads)))
    }

    /// Check the document as of `heads` against the strict schema (see
    /// [`FlowDoc::validate`]). Errors as for [`FlowDoc::snapshot_at`].
    pub fn validate_at(&mut self, heads: &[ChangeHash]) -> Result<()> {
        let heads = self.known_heads(heads)?;
        Ok(crate::schema::validate_at(&self.doc, Some(&heads))?)
    }
}

/// Hashes as sorted lowercase hex.
pub(crate) fn hex_sorted(heads: &[ChangeHash]) -> Vec<String> {
    let mut hex: Vec<String> = heads.iter().map(ChangeHash::to_string).collect();
    hex.sort();
    hex
}

/// The read view of a tree loaded from the root.
pub(crate) fn snapshot_of(tree: &Tree<'_>) -> FlowSnapshot {
    let name = match tree.root_get("name") {
        Some(Val::Scalar(ScalarValueRef::Str(s))) => s.to_string(),
        _ => String::new(),
    };
    let mut nodes = BTreeMap::new();
    if let Some(slot) = tree.root_get("nodes").and_then(|v| tree.as_map(v)) {
        for (id, val) in tree.entries(slot) {
            if let Some(node) = tree.as_map(val).and_then(|s| read_node(tree, id, s)) {
                nodes.insert(id.to_string(), node);
            }
        }
    }
    let mut edges = BTreeMap::new();
    if let Some(slot) = tree.root_get("edges").and_then(|v| tree.as_map(v)) {
        for (id, val) in tree.entries(slot) {
            if let Some(edge) = tree.as_map(val).and_then(|s| read_edge(tree, id, s)) {
                if nodes.contains_key(&edge.source.node) && nodes.contains_key(&edge.target.node) {
                    edges.insert(id.to_string(), edge);
                }
            }
        }
    }
    FlowSnapshot { name, nodes, edges }
}

/// The `to_json` shape. Built by hand rather than through `serde_json::to_value`
/// so node configs move into the result instead of being cloned; it is the
/// same value the serde derives produce (a test pins that).
fn snapshot_json(snapshot: FlowSnapshot, heads: Vec<String>) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), snapshot.name.into());
    out.insert("heads".into(), heads.into());
    let nodes: Map<String, Value> = snapshot
        .nodes
        .into_iter()
        .map(|(id, node)| (id, node_json(node)))
        .collect();
    out.insert("nodes".into(), Value::Object(nodes));
    let edges: Map<String, Value> = snapshot
        .edges
        .into_iter()
        .map(|(id, edge)| (id, edge_json(edge)))
        .collect();
    out.insert("edges".into(), Value::Object(edges));
    Value::Object(out)
}

fn node_json(node: Node) -> Value {
    let mut position = Map::new();
    position.insert("x".into(), node.position.x.into());
    position.insert("y".into(), node.position.y.into());
    let mut out = Map::new();
    out.insert("id".into(), node.id.into());
    out.insert("kind".into(), node.kind.into());
    out.insert("label".into(), node.label.into());
    out.insert("position".into(), Value::Object(position));
    out.insert("config".into(), Value::Object(node.config));
    Value::Object(out)
}

fn endpoint_json(endpoint: Endpoint) -> Value {
    let mut out = Map::new();
    out.insert("node".into(), endpoint.node.into());
    out.insert("port".into(), endpoint.port.into());
    Value::Object(out)
}

fn edge_json(edge: Edge) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), edge.id.into());
    out.insert("source".into(), endpoint_json(edge.source));
    out.insert("target".into(), endpoint_json(edge.target));
    Value::Object(out)
}

fn str_of(value: &ValueRef<'_>) -> Option<String> {
    match value {
        ValueRef::Scalar(ScalarValueRef::Str(s)) => Some(s.to_string()),
        _ => None,
    }
}

fn number_of(value: &ValueRef<'_>) -> Option<f64> {
    let v = match value {
        ValueRef::Scalar(ScalarValueRef::F64(f)) => *f,
        ValueRef::Scalar(ScalarValueRef::Int(i)) => *i as f64,
        ValueRef::Scalar(ScalarValueRef::Uint(u)) => *u as f64,
        _ => return None,
    };
    v.is_finite().then_some(v)
}

/// Read the node map in `slot`; `None` if a required field is missing or mistyped.
pub(crate) fn read_node(tree: &Tree<'_>, id: &str, slot: Slot) -> Option<Node> {
    let (mut kind, mut label, mut position, mut config) = (None, None, None, None);
    for (key, val) in tree.entries(slot) {
        match key.as_ref() {
            "kind" => kind = str_of(&tree.value_ref(val)),
            "label" => label = str_of(&tree.value_ref(val)),
            "position" => position = tree.as_map(val).and_then(|s| read_position(tree, s)),
            "config" => config = tree.as_map(val).map(|s| json::read_map(tree, s, 1)),
            _ => {}
        }
    }
    Some(Node {
        id: id.to_owned(),
        kind: kind?,
        label: label?,
        position: position?,
        config: config?,
    })
}

fn read_position(tree: &Tree<'_>, slot: Slot) -> Option<Position> {
    let (mut x, mut y) = (None, None);
    for (key, val) in tree.entries(slot) {
        match key.as_ref() {
            "x" => x = number_of(&tree.value_ref(val)),
            "y" => y = number_of(&tree.value_ref(val)),
            _ => {}
        }
    }
    Some(Position { x: x?, y: y? })
}

fn read_edge(tree: &Tree<'_>, id: &str, slot: Slot) -> Option<Edge> {
    let mut fields: [Option<String>; 4] = Default::default();
    for (key, val) in tree.entries(slot) {
        let idx = match key.as_ref() {
            "source" => 0,
            "source_port" => 1,
            "target" => 2,
            "target_port" => 3,
            _ => continue,
        };
        fields[idx] = str_of(&tree.value_ref(val));
    }
    let [source, source_port, target, target_port] = fields;
    Some(Edge {
        id: id.to_owned(),
        source: Endpoint::new(source?, source_port?),
        target: Endpoint::new(target?, target_port?),
    })
}

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
use std::ops::RangeFull;

use automerge::{AutoCommit, ObjId, ObjType, ReadDoc, ScalarValueRef, ValueRef, ROOT};

use crate::flow_doc::FlowDoc;
use crate::json;
use crate::model::{Edge, Endpoint, FlowSnapshot, Node, Position};

impl FlowDoc {
    /// The whole flow as plain data, dangling edges omitted.
    pub fn snapshot(&self) -> FlowSnapshot {
        let doc = &self.doc;
        let name = match doc.get(ROOT, "name") {
            Ok(Some((automerge::Value::Scalar(s), _))) => s.as_str().unwrap_or_default().to_owned(),
            _ => String::new(),
        };
        let mut nodes = BTreeMap::new();
        if let Some(obj) = self.root_map("nodes") {
            for item in doc.map_range(&obj, RangeFull) {
                if let ValueRef::Object(ObjType::Map) = item.value {
                    if let Some(node) = read_node(doc, &item.key, &item.id()) {
                        nodes.insert(item.key.into_owned(), node);
                    }
                }
            }
        }
        let mut edges = BTreeMap::new();
        if let Some(obj) = self.root_map("edges") {
            for item in doc.map_range(&obj, RangeFull) {
                if let ValueRef::Object(ObjType::Map) = item.value {
                    if let Some(edge) = read_edge(doc, &item.key, &item.id()) {
                        if nodes.contains_key(&edge.source.node)
                            && nodes.contains_key(&edge.target.node)
                        {
                            edges.insert(item.key.into_owned(), edge);
                        }
                    }
                }
            }
        }
        FlowSnapshot { name, nodes, edges }
    }

    /// One node, if present and well-formed.
    pub fn node(&self, id: &str) -> Option<Node> {
        let nodes = self.root_map("nodes")?;
        let obj = crate::flow_doc::map_child(&self.doc, &nodes, id)?;
        read_node(&self.doc, id, &obj)
    }

    /// The snapshot as JSON plus the heads it was taken at:
    /// `{"name", "heads": [hex..], "nodes": {id: Node}, "edges": {id: Edge}}`.
    pub fn to_json(&mut self) -> serde_json::Value {
        let snapshot = self.snapshot();
        let mut out = serde_json::Map::new();
        out.insert("name".into(), snapshot.name.into());
        out.insert("heads".into(), self.heads_hex().into());
        // Node and Edge hold only strings, finite f64s and JSON values, which
        // always serialise; `Null` would only ever mask a bug, never bad input.
        out.insert(
            "nodes".into(),
            serde_json::to_value(&snapshot.nodes).unwrap_or(serde_json::Value::Null),
        );
        out.insert(
            "edges".into(),
            serde_json::to_value(&snapshot.edges).unwrap_or(serde_json::Value::Null),
        );
        serde_json::Value::Object(out)
    }
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

/// Read a node map; `None` if a required field is missing or mistyped.
pub(crate) fn read_node(doc: &AutoCommit, id: &str, obj: &ObjId) -> Option<Node> {
    let (mut kind, mut label, mut position, mut config) = (None, None, None, None);
    for item in doc.map_range(obj, RangeFull) {
        match (item.key.as_ref(), &item.value) {
            ("kind", v) => kind = str_of(v),
            ("label", v) => label = str_of(v),
            ("position", ValueRef::Object(ObjType::Map)) => {
                position = read_position(doc, &item.id())
            }
            ("config", ValueRef::Object(ObjType::Map)) => {
                config = Some(json::read_map(doc, &item.id(), 1))
            }
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

fn read_position(doc: &AutoCommit, obj: &ObjId) -> Option<Position> {
    let (mut x, mut y) = (None, None);
    for item in doc.map_range(obj, RangeFull) {
        match item.key.as_ref() {
            "x" => x = number_of(&item.value),
            "y" => y = number_of(&item.value),
            _ => {}
        }
    }
    Some(Position { x: x?, y: y? })
}

fn read_edge(doc: &AutoCommit, id: &str, obj: &ObjId) -> Option<Edge> {
    let mut fields: [Option<String>; 4] = Default::default();
    for item in doc.map_range(obj, RangeFull) {
        let idx = match item.key.as_ref() {
            "source" => 0,
            "source_port" => 1,
            "target" => 2,
            "target_port" => 3,
            _ => continue,
        };
        fields[idx] = str_of(&item.value);
    }
    let [source, source_port, target, target_port] = fields;
    Some(Edge {
        id: id.to_owned(),
        source: Endpoint::new(source?, source_port?),
        target: Endpoint::new(target?, target_port?),
    })
}

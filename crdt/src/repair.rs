//! Schema repair: one change that makes an invalid document valid again.
//!
//! The hub refuses a flowhub client's schema-breaking change and the client rolls
//! back. A stock automerge-repo peer cannot roll back: it keeps the change and sends
//! it again on every sync, so refusing it would lock the peer out for good. For such
//! peers the hub accepts the change and immediately authors a repair
//! ([`FlowDoc::repair_schema`]): the smallest edits that turn each schema error into
//! valid data, so every replica (the peer's included) converges on a valid flow and
//! the peer's later edits land.
//!
//! Each error is repaired where it is, keeping as much of the peer's intent as the
//! schema allows:
//!
//! | error | repair |
//! |---|---|
//! | unknown key (root, node, position, edge) | delete the key |
//! | a text object where a string belongs (Automerge 3 writes JS strings as text) | the same characters as a plain string |
//! | missing `name` / `label` | `""` |
//! | missing or malformed `kind` | `"unknown"`, or the kind lowercased with other characters as `-` |
//! | missing or malformed `position` / `config` | `{x: 0, y: 0}` / `{}` |
//! | a coordinate that is missing, not a number or not finite | the number a string spells, else `0` |
//! | a label or name over the length limit | cut to the limit |
//! | a node or edge entry that is not a map, or has a bad id | delete the entry |
//! | an edge field that is missing or not a string | delete the edge |
//! | config: too deep, or bytes / unknown scalar | delete the value |
//! | config: counter or timestamp | its integer; a non-finite float: `null` |
//! | root `nodes` / `edges` not a map | an empty map |

use automerge::transaction::Transactable;
use automerge::{ObjId, ObjType, Prop, ReadDoc, ScalarValue, Value, ROOT};

use crate::error::{CrdtError, Result};
use crate::flow_doc::FlowDoc;
use crate::history::StoredChange;
use crate::schema::{self, SchemaError, MAX_KIND_LEN, MAX_LABEL_LEN};

/// The most errors one repair fixes. Each fix re-validates the document, so this
/// bounds the work a single hostile change can cause; past it the change is refused.
pub const MAX_REPAIRS: usize = 256;

/// Kind given to a node whose kind is missing or unusable.
pub const UNKNOWN_KIND: &str = "unknown";

/// A repair change the document made ([`FlowDoc::repair_schema`]).
#[derive(Debug, Clone)]
pub struct Repair {
    /// The change, authored by this replica's actor.
    pub change: StoredChange,
    /// The schema errors it repaired, in the order they were found.
    pub problems: Vec<SchemaError>,
}

impl FlowDoc {
    /// Makes the document valid, as **one** change authored by this replica, if it
    /// is not (see the module docs for what each repair does). `Ok(None)`: it was
    /// valid. Fails with the error it could not repair (more than [`MAX_REPAIRS`], or
    /// a fix that changed nothing), leaving the document as it was.
    pub fn repair_schema(&mut self) -> Result<Option<Repair>> {
        let Err(first) = schema::validate(&self.doc) else {
            return Ok(None);
        };
        if self.doc.pending_ops() > 0 {
            self.doc.commit();
        }
        // Written through the raw document: the edit cache must not survive.
        self.cache = None;
        let mut problems: Vec<SchemaError> = Vec::new();
        let mut next = Some(first);
        while let Some(error) = next {
            let stuck = problems.len() >= MAX_REPAIRS || problems.last() == Some(&error);
            if stuck || !fix(&mut self.doc, &error)? {
                self.doc.rollback();
                return Err(CrdtError::Schema(error));
            }
            problems.push(error);
            next = schema::validate(&self.doc).err();
        }
        let hash = self
            .doc
            .commit()
            .ok_or_else(|| CrdtError::InvalidDocument("the repair wrote no ops".into()))?;
        let change = self
            .doc
            .get_change_by_hash(&hash)
            .map(|change| StoredChange::from_change(&change))
            .ok_or_else(|| CrdtError::InvalidDocument("the repair change is missing".into()))?;
        Ok(Some(Repair { change, problems }))
    }
}

/// The keys of a schema error's path (JSON-Pointer escaping undone).
fn segments(path: &str) -> Vec<String> {
    if path.is_empty() {
        return Vec::new();
    }
    path.split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// The object at `segs` (every segment but the last names a map key or list index).
fn resolve(doc: &automerge::AutoCommit, segs: &[String]) -> Option<(ObjId, ObjType)> {
    let mut obj = ROOT;
    let mut ty = ObjType::Map;
    for seg in segs {
        let prop = prop_in(ty, seg)?;
        match doc.get(&obj, prop).ok()?? {
            (Value::Object(child_ty), id) => {
                obj = id;
                ty = child_ty;
            }
            _ => return None,
        }
    }
    Some((obj, ty))
}

fn prop_in(ty: ObjType, seg: &str) -> Option<Prop> {
    match ty {
        ObjType::Map | ObjType::Table => Some(Prop::Map(seg.to_owned())),
        ObjType::List | ObjType::Text => seg.parse::<usize>().ok().map(Prop::Seq),
    }
}

/// What is at `prop` of `obj` now, as a string if it can be read as one: a plain
/// string, a text object's characters, or a number or boolean written out.
fn as_string(doc: &automerge::AutoCommit, obj: &ObjId, prop: Prop) -> Option<String> {
    match doc.get(obj, prop).ok()?? {
        (Value::Object(ObjType::Text), id) => doc.text(&id).ok(),
        (Value::Scalar(s), _) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            ScalarValue::Int(i) => Some(i.to_string()),
            ScalarValue::Uint(u) => Some(u.to_string()),
            ScalarValue::F64(f) if f.is_finite() => Some(f.to_string()),
            ScalarValue::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// A usable kind from whatever was written: lowercase, other characters as `-`.
fn sanitize_kind(raw: Option<String>) -> String {
    let kind: String = raw
        .unwrap_or_default()
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_KIND_LEN)
        .collect();
    if kind.is_empty() {
        UNKNOWN_KIND.to_owned()
    } else {
        kind
    }
}

fn coordinate(raw: Option<String>) -> f64 {
    raw.and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|f| f.is_finite())
        .unwrap_or(0.0)
}

fn put_origin(doc: &mut automerge::AutoCommit, obj: &ObjId, key: &str) -> Result<()> {
    let position = doc.put_object(obj, key, ObjType::Map)?;
    doc.put(&position, "x", 0.0)?;
    doc.put(&position, "y", 0.0)?;
    Ok(())
}

/// Fixes one schema error in place (uncommitted). `false`: the error's path could
/// not be found, so nothing was done.
fn fix(doc: &mut automerge::AutoCommit, error: &SchemaError) -> Result<bool> {
    let segs = segments(error.path());
    let Some((last, parents)) = segs.split_last() else {
        return Ok(false);
    };
    let Some((parent, parent_ty)) = resolve(doc, parents) else {
        return Ok(false);
    };
    let Some(prop) = prop_in(parent_ty, last) else {
        return Ok(false);
    };
    let key = last.as_str();
    let delete = |doc: &mut automerge::AutoCommit, obj: &ObjId, prop: Prop| -> Result<bool> {
        doc.delete(obj, prop)?;
        Ok(true)
    };
    let unexpected = matches!(error, SchemaError::UnexpectedKey { .. });
    let seg = |i: usize| segs.get(i).map(String::as_str);
    match (segs.len(), seg(0), seg(2)) {
        // Root keys.
        (1, _, _) => match key {
            _ if unexpected => delete(doc, &parent, prop),
            "name" => {
                let name = as_string(doc, &parent, prop).unwrap_or_default();
                doc.put(&parent, key, truncate(&name, MAX_LABEL_LEN))?;
                Ok(true)
            }
            "nodes" | "edges" => {
                doc.put_object(&parent, key, ObjType::Map)?;
                Ok(true)
            }
            _ => Ok(false),
        },
        // A node or edge entry: not a map, or a bad id.
        (2, Some("nodes" | "edges"), _) => delete(doc, &parent, prop),
        // A field of a node.
        (3, Some("nodes"), _) => match key {
            _ if unexpected => delete(doc, &parent, prop),
            "kind" => {
                let kind = sanitize_kind(as_string(doc, &parent, prop));
                doc.put(&parent, key, kind)?;
                Ok(true)
            }
            "label" => {
                let label = as_string(doc, &parent, prop).unwrap_or_default();
                doc.put(&parent, key, truncate(&label, MAX_LABEL_LEN))?;
                Ok(true)
            }
            "position" => {
                put_origin(doc, &parent, key)?;
                Ok(true)
            }
            "config" => {
                doc.put_object(&parent, key, ObjType::Map)?;
                Ok(true)
            }
            _ => Ok(false),
        },
        // A coordinate of a node's position.
        (4, Some("nodes"), Some("position")) => {
            if unexpected {
                return delete(doc, &parent, prop);
            }
            let value = coordinate(as_string(doc, &parent, prop.clone()));
            doc.put(&parent, prop, value)?;
            Ok(true)
        }
        // Anything inside a node's config.
        (n, Some("nodes"), Some("config")) if n >= 4 => fix_config_value(doc, &parent, prop, error),
        // A field of an edge: an edge without both endpoints means nothing.
        (3, Some("edges"), _) => {
            if unexpected {
                return delete(doc, &parent, prop);
            }
            if let Ok(Some((Value::Object(ObjType::Text), id))) = doc.get(&parent, prop.clone()) {
                let text = doc.text(&id)?;
                doc.put(&parent, prop, text)?;
                return Ok(true);
            }
            let (Some(edges), Some(edge)) = (resolve(doc, &segs[..1]), seg(1)) else {
                return Ok(false);
            };
            delete(doc, &edges.0, Prop::Map(edge.to_owned()))
        }
        _ => Ok(false),
    }
}

fn fix_config_value(
    doc: &mut automerge::AutoCommit,
    parent: &ObjId,
    prop: Prop,
    error: &SchemaError,
) -> Result<bool> {
    let current = doc.get(parent, prop.clone())?;
    let replacement: Option<ScalarValue> = match (error, current) {
        (SchemaError::TooDeep { .. }, _) => None,
        (_, Some((Value::Object(ObjType::Text), id))) => {
            Some(ScalarValue::Str(doc.text(&id)?.into()))
        }
        (_, Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Counter(c) => Some(ScalarValue::Int(i64::from(c))),
            ScalarValue::Timestamp(t) => Some(ScalarValue::Int(*t)),
            ScalarValue::F64(f) if !f.is_finite() => Some(ScalarValue::Null),
            _ => None,
        },
        _ => None,
    };
    match replacement {
        Some(value) => doc.put(parent, prop, value)?,
        None => doc.delete(parent, prop)?,
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewNode, Position};

    fn with_node() -> (FlowDoc, String) {
        let mut doc = FlowDoc::new();
        let (id, _) = doc
            .add_node(NewNode::new("http", "Fetch", Position::new(1.0, 2.0)))
            .unwrap();
        (doc, id)
    }

    fn node_map(doc: &FlowDoc, id: &str) -> ObjId {
        let nodes = doc.root_map("nodes").unwrap();
        crate::flow_doc::map_child(&doc.doc, &nodes, id).unwrap()
    }

    #[test]
    fn a_valid_document_needs_no_repair() {
        let (mut doc, _) = with_node();
        assert!(doc.repair_schema().unwrap().is_none());
    }

    #[test]
    fn text_label_becomes_a_plain_string() {
        let (mut doc, id) = with_node();
        let node = node_map(&doc, &id);
        let raw = doc.doc_mut();
        let text = raw.put_object(&node, "label", ObjType::Text).unwrap();
        raw.splice_text(&text, 0, 0, "Typed in JS").unwrap();
        raw.commit();
        assert!(doc.validate().is_err());
        let repair = doc.repair_schema().unwrap().unwrap();
        assert_eq!(repair.problems.len(), 1);
        doc.validate().unwrap();
        assert_eq!(doc.node(&id).unwrap().label, "Typed in JS");
    }

    #[test]
    fn every_kind_of_damage_is_repaired_in_one_change() {
        let (mut doc, id) = with_node();
        let node = node_map(&doc, &id);
        let nodes = doc.root_map("nodes").unwrap();
        let raw = doc.doc_mut();
        raw.delete(&node, "label").unwrap();
        raw.put(&node, "kind", "HTTP Request").unwrap();
        raw.put(&node, "colour", "red").unwrap();
        let pos = raw.put_object(&node, "position", ObjType::Map).unwrap();
        raw.put(&pos, "x", "12.5").unwrap();
        raw.put(&pos, "y", f64::NAN).unwrap();
        let config = raw.put_object(&node, "config", ObjType::Map).unwrap();
        raw.put(&config, "count", ScalarValue::counter(3)).unwrap();
        raw.put(&config, "blob", ScalarValue::Bytes(vec![1, 2]))
            .unwrap();
        raw.put(&config, "ok", true).unwrap();
        raw.put(automerge::ROOT, "extra", 1).unwrap();
        let orphan = raw.put_object(&nodes, "bare", ObjType::Map).unwrap();
        raw.put(&orphan, "kind", "action").unwrap();
        raw.put(&nodes, "scalar", 5).unwrap();
        raw.commit();
        let heads_before = doc.heads();
        let repair = doc.repair_schema().unwrap().unwrap();
        doc.validate().unwrap();
        assert_eq!(doc.heads(), vec![repair.change.hash]);
        assert_ne!(doc.heads(), heads_before);
        let n = doc.node(&id).unwrap();
        assert_eq!(n.kind, "http-request");
        assert_eq!(n.label, "");
        assert_eq!(n.position, Position::new(12.5, 0.0));
        assert_eq!(n.config.get("count"), Some(&serde_json::json!(3)));
        assert_eq!(n.config.get("ok"), Some(&serde_json::json!(true)));
        assert!(n.config.get("blob").is_none());
        let bare = doc.node("bare").unwrap();
        assert_eq!((bare.kind.as_str(), bare.label.as_str()), ("action", ""));
        assert!(doc.node("scalar").is_none());
        assert!(doc.to_json().get("extra").is_none());
    }

    #[test]
    fn a_broken_edge_is_deleted_and_a_text_endpoint_kept() {
        let mut doc = FlowDoc::new();
        let (a, _) = doc
            .add_node(NewNode::new("http", "A", Position::new(0.0, 0.0)))
            .unwrap();
        let (b, _) = doc
            .add_node(NewNode::new("http", "B", Position::new(0.0, 0.0)))
            .unwrap();
        let edges = doc.root_map("edges").unwrap();
        let raw = doc.doc_mut();
        let broken = raw.put_object(&edges, "broken", ObjType::Map).unwrap();
        raw.put(&broken, "source", a.as_str()).unwrap();
        let texty = raw.put_object(&edges, "texty", ObjType::Map).unwrap();
        for (k, v) in [("source", a.as_str()), ("target", b.as_str())] {
            let t = raw.put_object(&texty, k, ObjType::Text).unwrap();
            raw.splice_text(&t, 0, 0, v).unwrap();
        }
        raw.put(&texty, "source_port", "out").unwrap();
        raw.put(&texty, "target_port", "in").unwrap();
        raw.commit();
        doc.repair_schema().unwrap().unwrap();
        doc.validate().unwrap();
        let snap = doc.snapshot();
        assert_eq!(snap.edges.len(), 1);
        assert_eq!(snap.edges["texty"].source.node, a);
    }

    #[test]
    fn missing_root_maps_come_back_empty() {
        let mut doc = FlowDoc::new();
        let raw = doc.doc_mut();
        raw.put(automerge::ROOT, "nodes", "oops").unwrap();
        raw.delete(automerge::ROOT, "name").unwrap();
        raw.commit();
        doc.repair_schema().unwrap().unwrap();
        doc.validate().unwrap();
        assert_eq!(doc.snapshot().nodes.len(), 0);
    }

    #[test]
    fn the_repair_reaches_other_replicas_as_an_ordinary_change() {
        let (mut doc, id) = with_node();
        let mut other = doc.fork();
        let node = node_map(&doc, &id);
        let raw = doc.doc_mut();
        let text = raw.put_object(&node, "label", ObjType::Text).unwrap();
        raw.splice_text(&text, 0, 0, "x").unwrap();
        raw.commit();
        let repair = doc.repair_schema().unwrap().unwrap();
        let all: Vec<Vec<u8>> = doc.all_changes().into_iter().map(|c| c.bytes).collect();
        other.apply_changes(&all).unwrap();
        other.validate().unwrap();
        assert!(other.has_change(&repair.change.hash));
        assert_eq!(other.to_json(), doc.to_json());
    }
}

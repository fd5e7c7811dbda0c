//! The strict flow schema, checked by [`crate::FlowDoc::validate`].
//!
//! The hub validates every document a peer's changes would produce before it
//! accepts them, so these rules are what keeps one buggy or hostile client from
//! poisoning a flow for everyone. The read view ([`crate::FlowDoc::snapshot`]) is
//! deliberately more tolerant than this, so that a document persisted under
//! older rules still renders.
//!
//! Things that are *not* schema errors, because ordinary concurrency produces them:
//! * Automerge conflicts on a key: only the winning value (the one every replica
//!   reads) is checked.
//! * Dangling edges whose node was deleted concurrently: the read view hides
//!   them and [`crate::FlowDoc::repair`] removes them.

use std::ops::RangeFull;

use automerge::{AutoCommit, ObjId, ObjType, ReadDoc, ScalarValueRef, ValueRef, ROOT};

use crate::json::MAX_CONFIG_DEPTH;

/// Maximum length of a node kind, in chars.
pub const MAX_KIND_LEN: usize = 64;
/// Maximum length of a node label or flow name, in chars.
pub const MAX_LABEL_LEN: usize = 1000;
/// Maximum length of a node or edge id, in chars.
pub const MAX_ID_LEN: usize = 128;

/// A schema violation. Every variant names the offending path, written as
/// `/`-separated keys (a `/` or `~` inside a key is escaped as `~1` / `~0`, as in
/// JSON Pointer), e.g. `nodes/n1/kind: expected string`.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum SchemaError {
    /// A required key is absent.
    #[error("{path}: missing")]
    Missing {
        /// Path of the absent key.
        path: String,
    },
    /// A value has the wrong type.
    #[error("{path}: expected {expected}")]
    WrongType {
        /// Path of the value.
        path: String,
        /// What the schema wants there.
        expected: &'static str,
    },
    /// A key the schema does not know.
    #[error("{path}: unexpected key")]
    UnexpectedKey {
        /// Path of the unknown key.
        path: String,
    },
    /// A value of the right type that breaks a constraint (length, charset, finiteness).
    #[error("{path}: {reason}")]
    InvalidValue {
        /// Path of the value.
        path: String,
        /// The constraint that failed.
        reason: String,
    },
    /// Config nested deeper than [`MAX_CONFIG_DEPTH`].
    #[error("{path}: nested deeper than {max} levels")]
    TooDeep {
        /// Path of the first container past the limit.
        path: String,
        /// The limit.
        max: usize,
    },
}

impl SchemaError {
    /// The path this error is about.
    pub fn path(&self) -> &str {
        match self {
            Self::Missing { path }
            | Self::WrongType { path, .. }
            | Self::UnexpectedKey { path }
            | Self::InvalidValue { path, .. }
            | Self::TooDeep { path, .. } => path,
        }
    }
}

/// `parent/key`, escaping the key JSON-Pointer style so paths stay unambiguous.
pub(crate) fn join(parent: &str, key: &str) -> String {
    let key = if key.contains(['/', '~']) {
        key.replace('~', "~0").replace('/', "~1")
    } else {
        key.to_owned()
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}/{key}")
    }
}

fn invalid(path: String, reason: impl Into<String>) -> SchemaError {
    SchemaError::InvalidValue {
        path,
        reason: reason.into(),
    }
}

/// Node and edge ids: 1..=128 chars, no control characters (they end up in
/// URLs, logs and DOM attributes).
pub(crate) fn check_id(path: &str, id: &str) -> Result<(), SchemaError> {
    let len = id.chars().count();
    if len == 0 || len > MAX_ID_LEN {
        return Err(invalid(
            path.to_owned(),
            format!("id must be 1..={MAX_ID_LEN} chars"),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(invalid(
            path.to_owned(),
            "id must not contain control characters",
        ));
    }
    Ok(())
}

/// Kinds are short lowercase identifiers so they can key executor registries.
pub(crate) fn check_kind(path: &str, kind: &str) -> Result<(), SchemaError> {
    let ok_len = (1..=MAX_KIND_LEN).contains(&kind.len());
    let ok_chars = kind
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(invalid(
            path.to_owned(),
            format!("kind must be 1..={MAX_KIND_LEN} chars of [a-z0-9_.-]"),
        ))
    }
}

/// Labels and the flow name: at most [`MAX_LABEL_LEN`] chars.
pub(crate) fn check_label(path: &str, label: &str) -> Result<(), SchemaError> {
    if label.chars().count() > MAX_LABEL_LEN {
        return Err(invalid(
            path.to_owned(),
            format!("must be at most {MAX_LABEL_LEN} chars"),
        ));
    }
    Ok(())
}

/// Coordinates must be finite: NaN breaks equality and JSON.
pub(crate) fn check_coordinate(path: &str, v: f64) -> Result<(), SchemaError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(invalid(path.to_owned(), "must be a finite number"))
    }
}

/// Config values handed to a typed edit: bounded depth so readers never recurse
/// unboundedly. `base` is the nesting level of the container receiving `value`.
pub(crate) fn check_config_value(
    path: &str,
    value: &serde_json::Value,
    base: usize,
) -> Result<(), SchemaError> {
    if base + crate::json::json_depth(value) > MAX_CONFIG_DEPTH {
        return Err(SchemaError::TooDeep {
            path: path.to_owned(),
            max: MAX_CONFIG_DEPTH,
        });
    }
    Ok(())
}

fn expect_str<'a>(path: &str, value: &'a ValueRef<'_>) -> Result<&'a str, SchemaError> {
    match value {
        ValueRef::Scalar(ScalarValueRef::Str(s)) => Ok(s),
        _ => Err(SchemaError::WrongType {
            path: path.to_owned(),
            expected: "string",
        }),
    }
}

fn expect_map(path: &str, value: &ValueRef<'_>) -> Result<(), SchemaError> {
    match value {
        ValueRef::Object(ObjType::Map) => Ok(()),
        _ => Err(SchemaError::WrongType {
            path: path.to_owned(),
            expected: "map",
        }),
    }
}

fn expect_number(path: &str, value: &ValueRef<'_>) -> Result<f64, SchemaError> {
    match value {
        ValueRef::Scalar(ScalarValueRef::F64(f)) => Ok(*f),
        ValueRef::Scalar(ScalarValueRef::Int(i)) => Ok(*i as f64),
        ValueRef::Scalar(ScalarValueRef::Uint(u)) => Ok(*u as f64),
        _ => Err(SchemaError::WrongType {
            path: path.to_owned(),
            expected: "number",
        }),
    }
}

fn require<T>(path: &str, key: &str, found: Option<T>) -> Result<T, SchemaError> {
    found.ok_or_else(|| SchemaError::Missing {
        path: join(path, key),
    })
}

/// Check the root map: exactly `name` (string), `nodes` (map), `edges` (map).
/// Returns the `nodes` and `edges` objects. Cheap: it does not descend.
pub(crate) fn validate_root(doc: &AutoCommit) -> Result<(ObjId, ObjId), SchemaError> {
    let (mut name, mut nodes, mut edges) = (None, None, None);
    for item in doc.map_range(ROOT, RangeFull) {
        let key = item.key.as_ref();
        let path = join("", key);
        match key {
            "name" => {
                check_label(&path, expect_str(&path, &item.value)?)?;
                name = Some(());
            }
            "nodes" => {
                expect_map(&path, &item.value)?;
                nodes = Some(item.id());
            }
            "edges" => {
                expect_map(&path, &item.value)?;
                edges = Some(item.id());
            }
            _ => return Err(SchemaError::UnexpectedKey { path }),
        }
    }
    require("", "name", name)?;
    Ok((require("", "nodes", nodes)?, require("", "edges", edges)?))
}

/// Check the whole document against the flow schema.
pub(crate) fn validate(doc: &AutoCommit) -> Result<(), SchemaError> {
    let (nodes, edges) = validate_root(doc)?;
    for item in doc.map_range(&nodes, RangeFull) {
        validate_entry(doc, "nodes", &item.key, &item.value, &item.id())?;
    }
    for item in doc.map_range(&edges, RangeFull) {
        validate_entry(doc, "edges", &item.key, &item.value, &item.id())?;
    }
    Ok(())
}

/// Check one entry of `nodes` or `edges` (`collection`) given its winning value.
pub(crate) fn validate_entry(
    doc: &AutoCommit,
    collection: &str,
    id: &str,
    value: &ValueRef<'_>,
    obj: &ObjId,
) -> Result<(), SchemaError> {
    let path = join(collection, id);
    check_id(&path, id)?;
    expect_map(&path, value)?;
    if collection == "nodes" {
        validate_node(doc, &path, obj)
    } else {
        validate_edge(doc, &path, obj)
    }
}

/// Check one node map at `path`.
fn validate_node(doc: &AutoCommit, path: &str, obj: &ObjId) -> Result<(), SchemaError> {
    let (mut kind, mut label, mut position, mut config) = (None, None, None, None);
    for item in doc.map_range(obj, RangeFull) {
        let key = item.key.as_ref();
        let p = join(path, key);
        match key {
            "kind" => {
                check_kind(&p, expect_str(&p, &item.value)?)?;
                kind = Some(());
            }
            "label" => {
                check_label(&p, expect_str(&p, &item.value)?)?;
                label = Some(());
            }
            "position" => {
                expect_map(&p, &item.value)?;
                validate_position(doc, &p, &item.id())?;
                position = Some(());
            }
            "config" => {
                expect_map(&p, &item.value)?;
                validate_config(doc, &p, &item.id(), 1)?;
                config = Some(());
            }
            _ => return Err(SchemaError::UnexpectedKey { path: p }),
        }
    }
    require(path, "kind", kind)?;
    require(path, "label", label)?;
    require(path, "position", position)?;
    require(path, "config", config)?;
    Ok(())
}

fn validate_position(doc: &AutoCommit, path: &str, obj: &ObjId) -> Result<(), SchemaError> {
    let (mut x, mut y) = (None, None);
    for item in doc.map_range(obj, RangeFull) {
        let key = item.key.as_ref();
        let p = join(path, key);
        let slot = match key {
            "x" => &mut x,
            "y" => &mut y,
            _ => return Err(SchemaError::UnexpectedKey { path: p }),
        };
        check_coordinate(&p, expect_number(&p, &item.value)?)?;
        *slot = Some(());
    }
    require(path, "x", x)?;
    require(path, "y", y)?;
    Ok(())
}

/// Config containers: maps and lists of JSON scalars, at most [`MAX_CONFIG_DEPTH`]
/// deep (`depth` is the level of `obj` itself).
fn validate_config(
    doc: &AutoCommit,
    path: &str,
    obj: &ObjId,
    depth: usize,
) -> Result<(), SchemaError> {
    // Map and list children are walked the same way; only how they are listed differs.
    let children: Vec<(String, ValueRef<'_>, ObjId)> = match doc.object_type(obj) {
        Ok(ObjType::List) => doc
            .list_range(obj, RangeFull)
            .map(|i| (i.index.to_string(), i.value.clone(), i.id()))
            .collect(),
        _ => doc
            .map_range(obj, RangeFull)
            .map(|i| (i.key.to_string(), i.value.clone(), i.id()))
            .collect(),
    };
    for (key, value, id) in children {
        let p = join(path, &key);
        match value {
            ValueRef::Object(ObjType::Map | ObjType::List) => {
                if depth >= MAX_CONFIG_DEPTH {
                    return Err(SchemaError::TooDeep {
                        path: p,
                        max: MAX_CONFIG_DEPTH,
                    });
                }
                validate_config(doc, &p, &id, depth + 1)?;
            }
            ValueRef::Scalar(ScalarValueRef::F64(f)) if !f.is_finite() => {
                return Err(invalid(p, "must be a finite number"));
            }
            ValueRef::Scalar(
                ScalarValueRef::Str(_)
                | ScalarValueRef::Int(_)
                | ScalarValueRef::Uint(_)
                | ScalarValueRef::F64(_)
                | ScalarValueRef::Boolean(_)
                | ScalarValueRef::Null,
            ) => {}
            _ => {
                return Err(SchemaError::WrongType {
                    path: p,
                    expected: "JSON value (map, list, string, number, boolean or null)",
                })
            }
        }
    }
    Ok(())
}

/// Check one edge map at `path`: exactly the four string fields.
fn validate_edge(doc: &AutoCommit, path: &str, obj: &ObjId) -> Result<(), SchemaError> {
    let mut seen = [false; 4];
    for item in doc.map_range(obj, RangeFull) {
        let key = item.key.as_ref();
        let p = join(path, key);
        let idx = match key {
            "source" => 0,
            "source_port" => 1,
            "target" => 2,
            "target_port" => 3,
            _ => return Err(SchemaError::UnexpectedKey { path: p }),
        };
        expect_str(&p, &item.value)?;
        seen[idx] = true;
    }
    for (idx, key) in ["source", "source_port", "target", "target_port"]
        .iter()
        .enumerate()
    {
        if !seen[idx] {
            return Err(SchemaError::Missing {
                path: join(path, key),
            });
        }
    }
    Ok(())
}

impl crate::FlowDoc {
    /// Check the document against the strict flow schema (see the module docs).
    /// Only winning values are checked; dangling edges are allowed.
    pub fn validate(&self) -> Result<(), SchemaError> {
        validate(&self.doc)
    }
}

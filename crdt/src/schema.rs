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

use automerge::{AutoCommit, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValueRef, ValueRef, ROOT};

use crate::json::MAX_CONFIG_DEPTH;
use crate::tree::{Obj, Slot, Tree, Val};

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

/// Append `key`, escaped JSON-Pointer style so paths stay unambiguous.
fn push_escaped(out: &mut String, key: &str) {
    if key.contains(['/', '~']) {
        out.push_str(&key.replace('~', "~0").replace('/', "~1"));
    } else {
        out.push_str(key);
    }
}

/// A schema path built on the stack and rendered to a string only when an
/// error needs it, so validating a valid document allocates no paths.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Path<'p> {
    parent: Option<&'p Path<'p>>,
    key: Seg<'p>,
}

#[derive(Debug, Clone, Copy)]
enum Seg<'p> {
    Root,
    Key(&'p str),
    Index(usize),
}

impl<'p> Path<'p> {
    /// The root path (renders as the empty string).
    pub(crate) const ROOT: Path<'static> = Path {
        parent: None,
        key: Seg::Root,
    };

    /// `self/key`.
    pub(crate) fn key<'q>(&'q self, key: &'q str) -> Path<'q> {
        Path {
            parent: Some(self),
            key: Seg::Key(key),
        }
    }

    /// `self/index`.
    pub(crate) fn index<'q>(&'q self, index: usize) -> Path<'q> {
        Path {
            parent: Some(self),
            key: Seg::Index(index),
        }
    }

    /// The path as `/`-separated, escaped keys.
    pub(crate) fn render(&self) -> String {
        let mut segs = Vec::new();
        let mut cur = Some(self);
        while let Some(p) = cur {
            segs.push(p.key);
            cur = p.parent;
        }
        let mut out = String::new();
        for seg in segs.iter().rev() {
            let text = match seg {
                Seg::Root => continue,
                Seg::Key(k) => std::borrow::Cow::Borrowed(*k),
                Seg::Index(i) => std::borrow::Cow::Owned(i.to_string()),
            };
            if !out.is_empty() {
                out.push('/');
            }
            push_escaped(&mut out, &text);
        }
        out
    }
}

fn invalid(path: &Path<'_>, reason: impl Into<String>) -> SchemaError {
    SchemaError::InvalidValue {
        path: path.render(),
        reason: reason.into(),
    }
}

fn wrong_type(path: &Path<'_>, expected: &'static str) -> SchemaError {
    SchemaError::WrongType {
        path: path.render(),
        expected,
    }
}

/// Node and edge ids: 1..=128 chars, no control characters (they end up in
/// URLs, logs and DOM attributes).
pub(crate) fn check_id(path: &Path<'_>, id: &str) -> Result<(), SchemaError> {
    // At most MAX_ID_LEN bytes is at most that many chars: skip the count.
    if id.is_empty() || (id.len() > MAX_ID_LEN && id.chars().count() > MAX_ID_LEN) {
        return Err(invalid(path, format!("id must be 1..={MAX_ID_LEN} chars")));
    }
    if id.chars().any(char::is_control) {
        return Err(invalid(path, "id must not contain control characters"));
    }
    Ok(())
}

/// Kinds are short lowercase identifiers so they can key executor registries.
pub(crate) fn check_kind(path: &Path<'_>, kind: &str) -> Result<(), SchemaError> {
    let ok_len = (1..=MAX_KIND_LEN).contains(&kind.len());
    let ok_chars = kind
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!("kind must be 1..={MAX_KIND_LEN} chars of [a-z0-9_.-]"),
        ))
    }
}

/// Labels and the flow name: at most [`MAX_LABEL_LEN`] chars.
pub(crate) fn check_label(path: &Path<'_>, label: &str) -> Result<(), SchemaError> {
    // At most MAX_LABEL_LEN bytes is at most that many chars: skip the count.
    if label.len() > MAX_LABEL_LEN && label.chars().count() > MAX_LABEL_LEN {
        return Err(invalid(
            path,
            format!("must be at most {MAX_LABEL_LEN} chars"),
        ));
    }
    Ok(())
}

/// Coordinates must be finite: NaN breaks equality and JSON.
pub(crate) fn check_coordinate(path: &Path<'_>, v: f64) -> Result<(), SchemaError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(invalid(path, "must be a finite number"))
    }
}

/// Config values handed to a typed edit: bounded depth so readers never recurse
/// unboundedly. `base` is the nesting level of the container receiving `value`.
pub(crate) fn check_config_value(
    path: &Path<'_>,
    value: &serde_json::Value,
    base: usize,
) -> Result<(), SchemaError> {
    // Scalars (the common case) have depth 0: no walk needed.
    let depth = match value {
        serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
            crate::json::json_depth(value)
        }
        _ => 0,
    };
    if base + depth > MAX_CONFIG_DEPTH {
        return Err(SchemaError::TooDeep {
            path: path.render(),
            max: MAX_CONFIG_DEPTH,
        });
    }
    Ok(())
}

fn expect_str<'v>(path: &Path<'_>, value: &'v ValueRef<'_>) -> Result<&'v str, SchemaError> {
    match value {
        ValueRef::Scalar(ScalarValueRef::Str(s)) => Ok(s),
        _ => Err(wrong_type(path, "string")),
    }
}

fn expect_map(path: &Path<'_>, value: &ValueRef<'_>) -> Result<(), SchemaError> {
    match value {
        ValueRef::Object(ObjType::Map) => Ok(()),
        _ => Err(wrong_type(path, "map")),
    }
}

fn expect_number(path: &Path<'_>, value: &ValueRef<'_>) -> Result<f64, SchemaError> {
    match value {
        ValueRef::Scalar(ScalarValueRef::F64(f)) => Ok(*f),
        ValueRef::Scalar(ScalarValueRef::Int(i)) => Ok(*i as f64),
        ValueRef::Scalar(ScalarValueRef::Uint(u)) => Ok(*u as f64),
        _ => Err(wrong_type(path, "number")),
    }
}

fn require<T>(path: &Path<'_>, key: &str, found: Option<T>) -> Result<T, SchemaError> {
    found.ok_or_else(|| SchemaError::Missing {
        path: path.key(key).render(),
    })
}

/// Check root entries: exactly `name` (string), `nodes` (map), `edges` (map).
/// Returns the handles (`T`) of `nodes` and `edges`.
fn check_root<'v, K: AsRef<str>, T>(
    entries: impl IntoIterator<Item = (K, ValueRef<'v>, T)>,
) -> Result<(T, T), SchemaError> {
    let (mut name, mut nodes, mut edges) = (None, None, None);
    for (key, value, handle) in entries {
        let key = key.as_ref();
        let path = Path::ROOT.key(key);
        match key {
            "name" => {
                check_label(&path, expect_str(&path, &value)?)?;
                name = Some(());
            }
            "nodes" => {
                expect_map(&path, &value)?;
                nodes = Some(handle);
            }
            "edges" => {
                expect_map(&path, &value)?;
                edges = Some(handle);
            }
            _ => {
                return Err(SchemaError::UnexpectedKey {
                    path: path.render(),
                })
            }
        }
    }
    require(&Path::ROOT, "name", name)?;
    Ok((
        require(&Path::ROOT, "nodes", nodes)?,
        require(&Path::ROOT, "edges", edges)?,
    ))
}

/// Check the root map: exactly `name` (string), `nodes` (map), `edges` (map).
/// Returns the `nodes` and `edges` objects. Cheap: it does not descend.
pub(crate) fn validate_root(doc: &AutoCommit) -> Result<(ObjId, ObjId), SchemaError> {
    check_root(
        doc.map_range(ROOT, RangeFull)
            .map(|item| (item.key.clone(), item.value.clone(), item.id())),
    )
}

/// Check the whole document (as of `heads`, or now) against the flow schema.
pub(crate) fn validate_at(
    doc: &AutoCommit,
    heads: Option<&[ChangeHash]>,
) -> Result<(), SchemaError> {
    let tree = Tree::load(doc, &ROOT, ObjType::Map, heads);
    validate_tree(&tree)
}

/// Check the whole document against the flow schema.
pub(crate) fn validate(doc: &AutoCommit) -> Result<(), SchemaError> {
    validate_at(doc, None)
}

/// Check a whole document loaded from the root.
pub(crate) fn validate_tree(tree: &Tree<'_>) -> Result<(), SchemaError> {
    let (nodes, edges) = check_root(
        tree.entries(0)
            .iter()
            .map(|(k, v)| (k.as_ref(), tree.value_ref(v), v)),
    )?;
    for (collection, val) in [("nodes", nodes), ("edges", edges)] {
        // `check_root` saw a map there, so this is a slot.
        let Some(slot) = tree.as_map(val) else {
            continue;
        };
        let path = Path::ROOT.key(collection);
        for (id, val) in tree.entries(slot) {
            let value = tree.value_ref(val);
            check_entry(tree, &path, collection, id, &value, tree.as_map(val))?;
        }
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
    let path = Path::ROOT.key(collection);
    if let ValueRef::Object(ObjType::Map) = value {
        let tree = Tree::load(doc, obj, ObjType::Map, None);
        check_entry(&tree, &path, collection, id, value, Some(0))
    } else {
        check_entry(&Tree::empty(), &path, collection, id, value, None)
    }
}

/// Check one collection entry; `slot` is its map in `tree` (if it is a map).
fn check_entry(
    tree: &Tree<'_>,
    collection_path: &Path<'_>,
    collection: &str,
    id: &str,
    value: &ValueRef<'_>,
    slot: Option<Slot>,
) -> Result<(), SchemaError> {
    let path = collection_path.key(id);
    check_id(&path, id)?;
    expect_map(&path, value)?;
    let Some(slot) = slot else {
        return Err(wrong_type(&path, "map"));
    };
    if collection == "nodes" {
        validate_node(tree, &path, slot)
    } else {
        validate_edge(tree, &path, slot)
    }
}

/// Check one node map at `path`.
fn validate_node(tree: &Tree<'_>, path: &Path<'_>, slot: Slot) -> Result<(), SchemaError> {
    let (mut kind, mut label, mut position, mut config) = (None, None, None, None);
    for (key, val) in tree.entries(slot) {
        let p = path.key(key);
        let value = tree.value_ref(val);
        match key.as_ref() {
            "kind" => {
                check_kind(&p, expect_str(&p, &value)?)?;
                kind = Some(());
            }
            "label" => {
                check_label(&p, expect_str(&p, &value)?)?;
                label = Some(());
            }
            "position" => {
                expect_map(&p, &value)?;
                if let Some(child) = tree.as_map(val) {
                    validate_position(tree, &p, child)?;
                }
                position = Some(());
            }
            "config" => {
                expect_map(&p, &value)?;
                if let Some(child) = tree.as_map(val) {
                    validate_config(tree, &p, child, 1)?;
                }
                config = Some(());
            }
            _ => return Err(SchemaError::UnexpectedKey { path: p.render() }),
        }
    }
    require(path, "kind", kind)?;
    require(path, "label", label)?;
    require(path, "position", position)?;
    require(path, "config", config)?;
    Ok(())
}

fn validate_position(tree: &Tree<'_>, path: &Path<'_>, slot: Slot) -> Result<(), SchemaError> {
    let (mut x, mut y) = (None, None);
    for (key, val) in tree.entries(slot) {
        let p = path.key(key);
        let slot = match key.as_ref() {
            "x" => &mut x,
            "y" => &mut y,
            _ => return Err(SchemaError::UnexpectedKey { path: p.render() }),
        };
        check_coordinate(&p, expect_number(&p, &tree.value_ref(val))?)?;
        *slot = Some(());
    }
    require(path, "x", x)?;
    require(path, "y", y)?;
    Ok(())
}

/// Config containers: maps and lists of JSON scalars, at most [`MAX_CONFIG_DEPTH`]
/// deep (`depth` is the level of `slot` itself).
fn validate_config(
    tree: &Tree<'_>,
    path: &Path<'_>,
    slot: Slot,
    depth: usize,
) -> Result<(), SchemaError> {
    match tree.obj(slot) {
        Obj::List(items) => {
            for (index, (_, val)) in items.iter().enumerate() {
                validate_config_value(tree, &path.index(index), val, depth)?;
            }
        }
        Obj::Map(entries) => {
            for (key, val) in entries {
                validate_config_value(tree, &path.key(key), val, depth)?;
            }
        }
        // Only maps and lists are ever passed in.
        Obj::Text(_) => {}
    }
    Ok(())
}

/// One value inside a config container at level `depth`.
fn validate_config_value(
    tree: &Tree<'_>,
    p: &Path<'_>,
    val: &Val<'_>,
    depth: usize,
) -> Result<(), SchemaError> {
    match tree.value_ref(val) {
        ValueRef::Object(ObjType::Map | ObjType::List) => {
            if depth >= MAX_CONFIG_DEPTH {
                return Err(SchemaError::TooDeep {
                    path: p.render(),
                    max: MAX_CONFIG_DEPTH,
                });
            }
            if let Val::Obj(child) = val {
                validate_config(tree, p, *child, depth + 1)?;
            }
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
            return Err(wrong_type(
                p,
                "JSON value (map, list, string, number, boolean or null)",
            ))
        }
    }
    Ok(())
}

/// Check one edge map at `path`: exactly the four string fields.
fn validate_edge(tree: &Tree<'_>, path: &Path<'_>, slot: Slot) -> Result<(), SchemaError> {
    const FIELDS: [&str; 4] = ["source", "source_port", "target", "target_port"];
    let mut seen = [false; 4];
    for (key, val) in tree.entries(slot) {
        let p = path.key(key);
        let Some(idx) = FIELDS.iter().position(|f| *f == key.as_ref()) else {
            return Err(SchemaError::UnexpectedKey { path: p.render() });
        };
        expect_str(&p, &tree.value_ref(val))?;
        seen[idx] = true;
    }
    for (idx, key) in FIELDS.iter().enumerate() {
        if !seen[idx] {
            return Err(SchemaError::Missing {
                path: path.key(key).render(),
            });
        }
    }
    Ok(())
}

impl crate::FlowDoc {
    /// Check the document against the strict flow schema (see the module docs).
    /// Only winning values are checked; dangling edges are allowed.
    ///
    /// One pass over the document (see the `tree` module): a few milliseconds
    /// for a 1,000-node flow.
    pub fn validate(&self) -> Result<(), SchemaError> {
        validate(&self.doc)
    }
}

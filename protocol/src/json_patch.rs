//! JSON Patch (RFC 6902): the operations `flow_patch` carries, how the hub computes
//! them from two versions of a flow, and how a client applies them.
//!
//! The hub only ever emits `add`, `remove` and `replace`. Objects are diffed key by
//! key (a node moved is one `replace` of its `position`), arrays are replaced whole
//! (they only appear inside node config, and are small). Paths are JSON Pointers
//! (RFC 6901): `/nodes/n1/label`, with `~` and `/` in keys escaped as `~0` and `~1`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One RFC 6902 operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PatchOp {
    Add { path: String, value: Value },
    Remove { path: String },
    Replace { path: String, value: Value },
}

/// Why a patch does not apply to a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("{0}: no such path")]
    NoSuchPath(String),
    #[error("{0}: not a JSON Pointer")]
    BadPath(String),
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The operations that turn `old` into `new`.
pub fn diff(old: &Value, new: &Value) -> Vec<PatchOp> {
    let mut ops = Vec::new();
    diff_at(&mut String::new(), old, new, &mut ops);
    ops
}

fn diff_at(path: &mut String, old: &Value, new: &Value, ops: &mut Vec<PatchOp>) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let len = path.len();
                path.push('/');
                path.push_str(&escape(key));
                match b.get(key) {
                    Some(other) => diff_at(path, value, other, ops),
                    None => ops.push(PatchOp::Remove { path: path.clone() }),
                }
                path.truncate(len);
            }
            for (key, value) in b {
                if !a.contains_key(key) {
                    ops.push(PatchOp::Add {
                        path: format!("{path}/{}", escape(key)),
                        value: value.clone(),
                    });
                }
            }
        }
        _ => ops.push(PatchOp::Replace {
            path: path.clone(),
            value: new.clone(),
        }),
    }
}

/// Applies `ops` to `doc` in order (all object paths; array indices are accepted in
/// `replace`/`remove` for completeness). On an error `doc` may be partly patched.
pub fn apply(doc: &mut Value, ops: &[PatchOp]) -> Result<(), PatchError> {
    for op in ops {
        match op {
            PatchOp::Add { path, value } | PatchOp::Replace { path, value } => {
                if path.is_empty() {
                    *doc = value.clone();
                    continue;
                }
                let (parent, key) = split(path)?;
                match pointer_mut(doc, parent, path)? {
                    Value::Object(map) => {
                        map.insert(key, value.clone());
                    }
                    Value::Array(items) => {
                        let i = index(&key, path)?;
                        match (op, i.cmp(&items.len())) {
                            (PatchOp::Add { .. }, std::cmp::Ordering::Greater) => {
                                return Err(PatchError::NoSuchPath(path.clone()))
                            }
                            (PatchOp::Add { .. }, _) => items.insert(i, value.clone()),
                            (_, std::cmp::Ordering::Less) => items[i] = value.clone(),
                            _ => return Err(PatchError::NoSuchPath(path.clone())),
                        }
                    }
                    _ => return Err(PatchError::NoSuchPath(path.clone())),
                }
            }
            PatchOp::Remove { path } => {
                let (parent, key) = split(path)?;
                let removed = match pointer_mut(doc, parent, path)? {
                    Value::Object(map) => map.remove(&key).is_some(),
                    Value::Array(items) => {
                        let i = index(&key, path)?;
                        (i < items.len()).then(|| items.remove(i)).is_some()
                    }
                    _ => false,
                };
                if !removed {
                    return Err(PatchError::NoSuchPath(path.clone()));
                }
            }
        }
    }
    Ok(())
}

fn split(path: &str) -> Result<(&str, String), PatchError> {
    let at = path
        .rfind('/')
        .ok_or_else(|| PatchError::BadPath(path.to_owned()))?;
    let key = path[at + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..at], key))
}

fn index(key: &str, path: &str) -> Result<usize, PatchError> {
    key.parse()
        .map_err(|_| PatchError::NoSuchPath(path.to_owned()))
}

fn pointer_mut<'v>(
    doc: &'v mut Value,
    pointer: &str,
    path: &str,
) -> Result<&'v mut Value, PatchError> {
    doc.pointer_mut(pointer)
        .ok_or_else(|| PatchError::NoSuchPath(path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_diff_applied_to_the_old_document_gives_the_new_one() {
        let old = json!({"name": "a", "nodes": {"n1": {"label": "x", "position": {"x": 1, "y": 2}, "config": {"list": [1, 2]}},
                                                "n/2": {"label": "gone"}}, "edges": {}});
        let new = json!({"name": "b", "nodes": {"n1": {"label": "x", "position": {"x": 5, "y": 2}, "config": {"list": [1, 2, 3], "k": null}},
                                                "n~3": {"label": "new"}}, "edges": {"e1": {"source": "n1"}}});
        let ops = diff(&old, &new);
        let mut doc = old.clone();
        apply(&mut doc, &ops).unwrap();
        assert_eq!(doc, new);
        assert!(ops.contains(&PatchOp::Remove {
            path: "/nodes/n~12".into()
        }));
        assert!(ops.contains(&PatchOp::Replace {
            path: "/nodes/n1/position/x".into(),
            value: json!(5)
        }));
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn ops_serialise_as_rfc_6902() {
        let op = PatchOp::Replace {
            path: "/name".into(),
            value: json!("b"),
        };
        assert_eq!(
            serde_json::to_value(&op).unwrap(),
            json!({"op": "replace", "path": "/name", "value": "b"})
        );
        let mut doc = json!({"a": 1});
        assert_eq!(
            apply(&mut doc, &[PatchOp::Remove { path: "/b".into() }]),
            Err(PatchError::NoSuchPath("/b".into()))
        );
    }
}

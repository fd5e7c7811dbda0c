//! Nested JSON <-> Automerge conversion for node `config`.
//!
//! JSON objects become Automerge maps and arrays become lists (rather than one
//! opaque string) so that two users editing different keys of the same config
//! object merge cleanly instead of one overwriting the other.

use automerge::{AutoCommit, AutomergeError, ObjId, ObjType, ScalarValue, ScalarValueRef};
use serde_json::{Map, Number, Value};

use crate::tree::{Obj, Slot, Tree, Val};

/// Maximum container nesting inside a node, counting the `config` map itself.
///
/// Bounded so that reading and validating a peer-supplied document can never
/// recurse deep enough to overflow the stack.
pub const MAX_CONFIG_DEPTH: usize = 32;

/// Container nesting depth of a JSON value (scalars are 0, `{}` is 1).
///
/// Iterative on purpose: the value may come from an untrusted client.
pub(crate) fn json_depth(value: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            Value::Object(m) => {
                max = max.max(depth + 1);
                stack.extend(m.values().map(|c| (c, depth + 1)));
            }
            Value::Array(a) => {
                max = max.max(depth + 1);
                stack.extend(a.iter().map(|c| (c, depth + 1)));
            }
            _ => max = max.max(depth),
        }
    }
    max
}

/// The Automerge scalar for a JSON scalar; `None` for containers.
fn json_scalar(value: &Value) -> Option<ScalarValue> {
    Some(match value {
        Value::Null => ScalarValue::Null,
        Value::Bool(b) => ScalarValue::Boolean(*b),
        Value::String(s) => ScalarValue::Str(s.as_str().into()),
        Value::Number(n) => number_scalar(n),
        Value::Object(_) | Value::Array(_) => return None,
    })
}

/// Integers stay integers (so `3` does not come back as `3.0`); everything else is f64.
fn number_scalar(n: &Number) -> ScalarValue {
    if let Some(i) = n.as_i64() {
        ScalarValue::Int(i)
    } else if let Some(u) = n.as_u64() {
        ScalarValue::Uint(u)
    } else {
        // serde_json numbers are always finite, so this is a plain f64.
        ScalarValue::F64(n.as_f64().unwrap_or(0.0))
    }
}

/// Write every entry of `map` into the Automerge map `obj`.
pub(crate) fn put_entries(
    doc: &mut AutoCommit,
    obj: &ObjId,
    map: &Map<String, Value>,
) -> Result<(), AutomergeError> {
    for (key, value) in map {
        put_value(doc, obj, key, value)?;
    }
    Ok(())
}

/// Put `value` at `key` of the Automerge map `obj`, creating nested objects.
///
/// Callers bound the depth first (see [`json_depth`]), so the recursion is shallow.
pub(crate) fn put_value(
    doc: &mut AutoCommit,
    obj: &ObjId,
    key: &str,
    value: &Value,
) -> Result<(), AutomergeError> {
    use automerge::transaction::Transactable;
    match value {
        Value::Object(m) => {
            let child = doc.put_object(obj, key, ObjType::Map)?;
            put_entries(doc, &child, m)
        }
        Value::Array(items) => {
            let child = doc.put_object(obj, key, ObjType::List)?;
            insert_items(doc, &child, items)
        }
        scalar => match json_scalar(scalar) {
            Some(s) => doc.put(obj, key, s),
            None => Ok(()),
        },
    }
}

fn insert_items(doc: &mut AutoCommit, list: &ObjId, items: &[Value]) -> Result<(), AutomergeError> {
    use automerge::transaction::Transactable;
    for (index, value) in items.iter().enumerate() {
        match value {
            Value::Object(m) => {
                let child = doc.insert_object(list, index, ObjType::Map)?;
                put_entries(doc, &child, m)?;
            }
            Value::Array(inner) => {
                let child = doc.insert_object(list, index, ObjType::List)?;
                insert_items(doc, &child, inner)?;
            }
            scalar => {
                if let Some(s) = json_scalar(scalar) {
                    doc.insert(list, index, s)?;
                }
            }
        }
    }
    Ok(())
}

/// JSON for an Automerge scalar, or `None` when JSON cannot represent it
/// (bytes, unknown types, non-finite floats).
pub(crate) fn scalar_json(s: &ScalarValueRef<'_>) -> Option<Value> {
    Some(match s {
        ScalarValueRef::Str(s) => Value::String(s.to_string()),
        ScalarValueRef::Int(i) => Value::from(*i),
        ScalarValueRef::Uint(u) => Value::from(*u),
        ScalarValueRef::F64(f) => Value::Number(Number::from_f64(*f)?),
        ScalarValueRef::Counter(c) => Value::from(*c),
        ScalarValueRef::Timestamp(t) => Value::from(*t),
        ScalarValueRef::Boolean(b) => Value::Bool(*b),
        ScalarValueRef::Null => Value::Null,
        ScalarValueRef::Bytes(_) | ScalarValueRef::Unknown { .. } => return None,
    })
}

/// Tolerant read of one value; `depth` is the nesting level of the container
/// holding it. Unrepresentable values (and containers beyond
/// [`MAX_CONFIG_DEPTH`]) yield `None`.
fn read_value(tree: &Tree<'_>, value: &Val<'_>, depth: usize) -> Option<Value> {
    match value {
        Val::Scalar(s) => scalar_json(s),
        Val::Obj(_) if depth >= MAX_CONFIG_DEPTH => None,
        Val::Obj(slot) => Some(match tree.obj(*slot) {
            Obj::Map(_) => Value::Object(read_map(tree, *slot, depth + 1)),
            Obj::List(items) => Value::Array(
                items
                    .iter()
                    // Unrepresentable items become `null` so indices stay
                    // aligned with the document.
                    .map(|(_, item)| read_value(tree, item, depth + 1).unwrap_or(Value::Null))
                    .collect(),
            ),
            Obj::Text(text) => Value::String(text.to_owned()),
        }),
    }
}

/// Tolerant read of the map (or table) in `slot` as a JSON object (`depth` is
/// the map's own nesting level). Unrepresentable entries are omitted.
pub(crate) fn read_map(tree: &Tree<'_>, slot: Slot, depth: usize) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in tree.entries(slot) {
        if let Some(v) = read_value(tree, value, depth) {
            out.insert(key.to_string(), v);
        }
    }
    out
}

//! Property: the one-pass read view and validation (`snapshot`, `node`,
//! `validate`, and their `_at` variants) agree exactly with a straightforward
//! object-by-object reader — the implementation they replaced, kept here as
//! the oracle — on arbitrary, often malformed documents, now and at older
//! heads.

mod common;

use std::collections::BTreeMap;
use std::ops::RangeFull;

use automerge::transaction::Transactable;
use automerge::{
    AutoCommit, ObjId, ObjType, ReadDoc, ScalarValue, ScalarValueRef, Value, ValueRef, ROOT,
};
use common::abc;
use flowhub_crdt::{
    Edge, Endpoint, FlowDoc, FlowSnapshot, Node, Position, SchemaError, MAX_CONFIG_DEPTH,
};
use proptest::prelude::*;
use serde_json::{Map, Number, Value as Json};

// ---------------------------------------------------------------------------
// The oracle: read every object with its own `map_range` / `list_range`.
// ---------------------------------------------------------------------------

fn scalar_json(s: &ScalarValueRef<'_>) -> Option<Json> {
    Some(match s {
        ScalarValueRef::Str(s) => Json::String(s.to_string()),
        ScalarValueRef::Int(i) => Json::from(*i),
        ScalarValueRef::Uint(u) => Json::from(*u),
        ScalarValueRef::F64(f) => Json::Number(Number::from_f64(*f)?),
        ScalarValueRef::Counter(c) => Json::from(*c),
        ScalarValueRef::Timestamp(t) => Json::from(*t),
        ScalarValueRef::Boolean(b) => Json::Bool(*b),
        ScalarValueRef::Null => Json::Null,
        ScalarValueRef::Bytes(_) | ScalarValueRef::Unknown { .. } => return None,
    })
}

fn o_read_value(doc: &AutoCommit, value: &ValueRef<'_>, id: &ObjId, depth: usize) -> Option<Json> {
    match value {
        ValueRef::Scalar(s) => scalar_json(s),
        ValueRef::Object(_) if depth >= MAX_CONFIG_DEPTH => None,
        ValueRef::Object(ObjType::Map | ObjType::Table) => {
            Some(Json::Object(o_read_map(doc, id, depth + 1)))
        }
        ValueRef::Object(ObjType::List) => Some(Json::Array(
            doc.list_range(id, RangeFull)
                .map(|i| o_read_value(doc, &i.value, &i.id(), depth + 1).unwrap_or(Json::Null))
                .collect(),
        )),
        ValueRef::Object(ObjType::Text) => doc.text(id).ok().map(Json::String),
    }
}

fn o_read_map(doc: &AutoCommit, obj: &ObjId, depth: usize) -> Map<String, Json> {
    let mut out = Map::new();
    for item in doc.map_range(obj, RangeFull) {
        if let Some(v) = o_read_value(doc, &item.value, &item.id(), depth) {
            out.insert(item.key.into_owned(), v);
        }
    }
    out
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

fn o_read_node(doc: &AutoCommit, id: &str, obj: &ObjId) -> Option<Node> {
    let (mut kind, mut label, mut position, mut config) = (None, None, None, None);
    for item in doc.map_range(obj, RangeFull) {
        match (item.key.as_ref(), &item.value) {
            ("kind", v) => kind = str_of(v),
            ("label", v) => label = str_of(v),
            ("position", ValueRef::Object(ObjType::Map)) => {
                let (mut x, mut y) = (None, None);
                for p in doc.map_range(item.id(), RangeFull) {
                    match p.key.as_ref() {
                        "x" => x = number_of(&p.value),
                        "y" => y = number_of(&p.value),
                        _ => {}
                    }
                }
                position = x.zip(y).map(|(x, y)| Position { x, y });
            }
            ("config", ValueRef::Object(ObjType::Map)) => {
                config = Some(o_read_map(doc, &item.id(), 1))
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

fn o_read_edge(doc: &AutoCommit, id: &str, obj: &ObjId) -> Option<Edge> {
    let mut f: [Option<String>; 4] = Default::default();
    for item in doc.map_range(obj, RangeFull) {
        let idx = match item.key.as_ref() {
            "source" => 0,
            "source_port" => 1,
            "target" => 2,
            "target_port" => 3,
            _ => continue,
        };
        f[idx] = str_of(&item.value);
    }
    let [s, sp, t, tp] = f;
    Some(Edge {
        id: id.to_owned(),
        source: Endpoint::new(s?, sp?),
        target: Endpoint::new(t?, tp?),
    })
}

fn root_map(doc: &AutoCommit, key: &str) -> Option<ObjId> {
    match doc.get(ROOT, key) {
        Ok(Some((Value::Object(ObjType::Map), id))) => Some(id),
        _ => None,
    }
}

fn o_snapshot(doc: &AutoCommit) -> FlowSnapshot {
    let name = match doc.get(ROOT, "name") {
        Ok(Some((Value::Scalar(s), _))) => s.as_str().unwrap_or_default().to_owned(),
        _ => String::new(),
    };
    let mut nodes = BTreeMap::new();
    if let Some(obj) = root_map(doc, "nodes") {
        for item in doc.map_range(&obj, RangeFull) {
            if let ValueRef::Object(ObjType::Map) = item.value {
                if let Some(n) = o_read_node(doc, &item.key, &item.id()) {
                    nodes.insert(item.key.into_owned(), n);
                }
            }
        }
    }
    let mut edges = BTreeMap::new();
    if let Some(obj) = root_map(doc, "edges") {
        for item in doc.map_range(&obj, RangeFull) {
            if let ValueRef::Object(ObjType::Map) = item.value {
                if let Some(e) = o_read_edge(doc, &item.key, &item.id()) {
                    if nodes.contains_key(&e.source.node) && nodes.contains_key(&e.target.node) {
                        edges.insert(item.key.into_owned(), e);
                    }
                }
            }
        }
    }
    FlowSnapshot { name, nodes, edges }
}

// The oracle's validation, with the same rules, order and paths.

fn join(parent: &str, key: &str) -> String {
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

fn invalid(path: String, reason: &str) -> SchemaError {
    SchemaError::InvalidValue {
        path,
        reason: reason.to_owned(),
    }
}

fn wrong(path: &str, expected: &'static str) -> SchemaError {
    SchemaError::WrongType {
        path: path.to_owned(),
        expected,
    }
}

fn e_str<'a>(p: &str, v: &'a ValueRef<'_>) -> Result<&'a str, SchemaError> {
    match v {
        ValueRef::Scalar(ScalarValueRef::Str(s)) => Ok(s),
        _ => Err(wrong(p, "string")),
    }
}

fn e_map(p: &str, v: &ValueRef<'_>) -> Result<(), SchemaError> {
    match v {
        ValueRef::Object(ObjType::Map) => Ok(()),
        _ => Err(wrong(p, "map")),
    }
}

fn c_label(p: &str, s: &str) -> Result<(), SchemaError> {
    if s.chars().count() > 1000 {
        return Err(invalid(p.to_owned(), "must be at most 1000 chars"));
    }
    Ok(())
}

fn c_id(p: &str, id: &str) -> Result<(), SchemaError> {
    let len = id.chars().count();
    if len == 0 || len > 128 {
        return Err(invalid(p.to_owned(), "id must be 1..=128 chars"));
    }
    if id.chars().any(char::is_control) {
        return Err(invalid(
            p.to_owned(),
            "id must not contain control characters",
        ));
    }
    Ok(())
}

fn c_kind(p: &str, k: &str) -> Result<(), SchemaError> {
    let ok = (1..=64).contains(&k.len())
        && k.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            p.to_owned(),
            "kind must be 1..=64 chars of [a-z0-9_.-]",
        ))
    }
}

fn missing(p: &str, k: &str) -> SchemaError {
    SchemaError::Missing { path: join(p, k) }
}

fn o_validate(doc: &AutoCommit) -> Result<(), SchemaError> {
    let (mut name, mut nodes, mut edges) = (false, None, None);
    for item in doc.map_range(ROOT, RangeFull) {
        let p = join("", &item.key);
        match item.key.as_ref() {
            "name" => {
                c_label(&p, e_str(&p, &item.value)?)?;
                name = true;
            }
            "nodes" => {
                e_map(&p, &item.value)?;
                nodes = Some(item.id());
            }
            "edges" => {
                e_map(&p, &item.value)?;
                edges = Some(item.id());
            }
            _ => return Err(SchemaError::UnexpectedKey { path: p }),
        }
    }
    if !name {
        return Err(missing("", "name"));
    }
    let nodes = nodes.ok_or_else(|| missing("", "nodes"))?;
    let edges = edges.ok_or_else(|| missing("", "edges"))?;
    for (coll, obj) in [("nodes", &nodes), ("edges", &edges)] {
        for item in doc.map_range(obj, RangeFull) {
            let path = join(coll, &item.key);
            c_id(&path, &item.key)?;
            e_map(&path, &item.value)?;
            if coll == "nodes" {
                o_validate_node(doc, &path, &item.id())?;
            } else {
                o_validate_edge(doc, &path, &item.id())?;
            }
        }
    }
    Ok(())
}

fn o_validate_node(doc: &AutoCommit, path: &str, obj: &ObjId) -> Result<(), SchemaError> {
    let mut seen = [false; 4];
    for item in doc.map_range(obj, RangeFull) {
        let p = join(path, &item.key);
        match item.key.as_ref() {
            "kind" => {
                c_kind(&p, e_str(&p, &item.value)?)?;
                seen[0] = true;
            }
            "label" => {
                c_label(&p, e_str(&p, &item.value)?)?;
                seen[1] = true;
            }
            "position" => {
                e_map(&p, &item.value)?;
                let (mut x, mut y) = (false, false);
                for c in doc.map_range(item.id(), RangeFull) {
                    let cp = join(&p, &c.key);
                    let slot = match c.key.as_ref() {
                        "x" => &mut x,
                        "y" => &mut y,
                        _ => return Err(SchemaError::UnexpectedKey { path: cp }),
                    };
                    let n = match &c.value {
                        ValueRef::Scalar(ScalarValueRef::F64(f)) => *f,
                        ValueRef::Scalar(ScalarValueRef::Int(i)) => *i as f64,
                        ValueRef::Scalar(ScalarValueRef::Uint(u)) => *u as f64,
                        _ => return Err(wrong(&cp, "number")),
                    };
                    if !n.is_finite() {
                        return Err(invalid(cp, "must be a finite number"));
                    }
                    *slot = true;
                }
                if !x {
                    return Err(missing(&p, "x"));
                }
                if !y {
                    return Err(missing(&p, "y"));
                }
                seen[2] = true;
            }
            "config" => {
                e_map(&p, &item.value)?;
                o_validate_config(doc, &p, &item.id(), 1)?;
                seen[3] = true;
            }
            _ => return Err(SchemaError::UnexpectedKey { path: p }),
        }
    }
    for (i, k) in ["kind", "label", "position", "config"].iter().enumerate() {
        if !seen[i] {
            return Err(missing(path, k));
        }
    }
    Ok(())
}

fn o_validate_config(
    doc: &AutoCommit,
    path: &str,
    obj: &ObjId,
    depth: usize,
) -> Result<(), SchemaError> {
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
                o_validate_config(doc, &p, &id, depth + 1)?;
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
                return Err(wrong(
                    &p,
                    "JSON value (map, list, string, number, boolean or null)",
                ))
            }
        }
    }
    Ok(())
}

fn o_validate_edge(doc: &AutoCommit, path: &str, obj: &ObjId) -> Result<(), SchemaError> {
    let keys = ["source", "source_port", "target", "target_port"];
    let mut seen = [false; 4];
    for item in doc.map_range(obj, RangeFull) {
        let p = join(path, &item.key);
        let Some(i) = keys.iter().position(|k| *k == item.key.as_ref()) else {
            return Err(SchemaError::UnexpectedKey { path: p });
        };
        e_str(&p, &item.value)?;
        seen[i] = true;
    }
    for (i, k) in keys.iter().enumerate() {
        if !seen[i] {
            return Err(missing(path, k));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Random documents.
// ---------------------------------------------------------------------------

const TARGETS: &[&[&str]] = &[
    &[],
    &["nodes"],
    &["edges"],
    &["nodes", "a"],
    &["nodes", "b"],
    &["nodes", "a", "position"],
    &["nodes", "a", "config"],
    &["nodes", "a", "config", "nested"],
    &["nodes", "a", "config", "nested", "deep"],
    &["nodes", "b", "config"],
    &["nodes", "b", "config", "list"],
    &["edges", "ab"],
    &["nodes", "n/1"],
];
const KEYS: &[&str] = &[
    "kind", "label", "position", "config", "x", "y", "source", "target", "name", "nodes", "edges",
    "a", "b", "ab", "n/1", "nested", "deep", "list", "evil", "",
];

#[derive(Debug, Clone)]
enum Raw {
    Put {
        target: usize,
        key: usize,
        value: usize,
    },
    Delete {
        target: usize,
        key: usize,
    },
    Typed(usize),
    /// Record the heads here for an `_at` comparison.
    Mark,
}

fn scalar(i: usize) -> Option<ScalarValue> {
    Some(match i {
        0 => ScalarValue::Str("http".into()),
        1 => ScalarValue::Str("Not A Kind".into()),
        2 => ScalarValue::Int(-3),
        3 => ScalarValue::F64(1.5),
        4 => ScalarValue::F64(f64::NAN),
        5 => ScalarValue::Null,
        6 => ScalarValue::Boolean(true),
        7 => ScalarValue::counter(1),
        8 => ScalarValue::Bytes(vec![1, 2]),
        9 => ScalarValue::Uint(7),
        10 => ScalarValue::Timestamp(5),
        _ => return None,
    })
}

/// The object at `path`: map keys, or index 0 when passing through a list.
fn resolve(doc: &AutoCommit, path: &[&str]) -> Option<ObjId> {
    let mut cur = ROOT;
    for key in path {
        let next = match doc.object_type(&cur).ok()? {
            ObjType::List => doc.get(&cur, 0usize).ok()??,
            _ => doc.get(&cur, *key).ok()??,
        };
        cur = match next {
            (Value::Object(ObjType::Map | ObjType::List), id) => id,
            _ => return None,
        };
    }
    Some(cur)
}

fn apply(doc: &mut FlowDoc, op: &Raw) {
    match *op {
        Raw::Mark => {}
        Raw::Typed(i) => {
            let _ = match i % 7 {
                0 => doc.move_node("b", Position::new(1.0, 2.0)).map(drop),
                1 => doc.relabel_node("a", "fine").map(drop),
                2 => doc
                    .connect(None, Endpoint::new("a", "o"), Endpoint::new("c", "i"))
                    .map(drop),
                3 => doc
                    .configure_node("a", "nested", serde_json::json!({"deep": [1, {"x": null}]}))
                    .map(drop),
                4 => doc
                    .configure_node("b", "list", serde_json::json!([[1.5], "s", true]))
                    .map(drop),
                5 => doc.delete_node("c").map(drop),
                _ => doc
                    .add_node(common::node("n/1", "http").config_entry("k", 1.into()))
                    .map(drop),
            };
        }
        Raw::Put { target, key, value } => {
            let d = doc.doc_mut();
            let Some(obj) = resolve(d, TARGETS[target % TARGETS.len()]) else {
                return;
            };
            let is_list = matches!(d.object_type(&obj), Ok(ObjType::List));
            let key = KEYS[key % KEYS.len()];
            let _ = match (scalar(value % 15), is_list) {
                (Some(s), false) => d.put(&obj, key, s),
                (Some(s), true) => d.insert(&obj, 0, s),
                (None, list) => {
                    let typ = [ObjType::Map, ObjType::List, ObjType::Text, ObjType::Map][value % 4];
                    let made = if list {
                        d.insert_object(&obj, 0, typ)
                    } else {
                        d.put_object(&obj, key, typ)
                    };
                    match made {
                        Ok(child) if typ == ObjType::Text => d.splice_text(&child, 0, 0, "tx"),
                        Ok(_) => Ok(()),
                        Err(e) => Err(e),
                    }
                }
            };
            d.commit();
        }
        Raw::Delete { target, key } => {
            let d = doc.doc_mut();
            if let Some(obj) = resolve(d, TARGETS[target % TARGETS.len()]) {
                if matches!(d.object_type(&obj), Ok(ObjType::List)) {
                    let _ = d.delete(&obj, 0usize);
                } else {
                    let _ = d.delete(&obj, KEYS[key % KEYS.len()]);
                }
                d.commit();
            }
        }
    }
}

fn raw() -> impl Strategy<Value = Raw> {
    prop_oneof![
        4 => (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(target, key, value)| Raw::Put { target, key, value }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(target, key)| Raw::Delete { target, key }),
        2 => any::<usize>().prop_map(Raw::Typed),
        1 => Just(Raw::Mark),
    ]
}

fn start() -> FlowDoc {
    let mut doc = abc();
    doc.configure_node("a", "nested", serde_json::json!({"deep": {"er": [1, 2]}}))
        .unwrap();
    doc.configure_node("b", "list", serde_json::json!([{"k": "v"}, [1]]))
        .unwrap();
    doc
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn one_pass_reads_match_object_by_object_reads(
        left in proptest::collection::vec(raw(), 1..10),
        right in proptest::collection::vec(raw(), 0..6),
    ) {
        // Two replicas edit concurrently (so conflicts arise), then merge.
        let mut doc = start();
        let mut other = doc.fork();
        let mut marks = Vec::new();
        for op in &left {
            if let Raw::Mark = op {
                marks.push(doc.heads());
            }
            apply(&mut doc, op);
        }
        for op in &right {
            apply(&mut other, op);
        }
        common::sync_pair(&mut doc, &mut other, false).unwrap();
        marks.push(doc.heads());

        prop_assert_eq!(doc.snapshot(), o_snapshot(doc.doc()));
        prop_assert_eq!(doc.validate(), o_validate(doc.doc()));
        for id in ["a", "b", "c", "n/1", "zz"] {
            let oracle = root_map(doc.doc(), "nodes")
                .and_then(|nodes| match doc.doc().get(&nodes, id) {
                    Ok(Some((Value::Object(ObjType::Map), obj))) => o_read_node(doc.doc(), id, &obj),
                    _ => None,
                });
            prop_assert_eq!(doc.node(id), oracle);
        }
        for heads in &marks {
            let mut past = doc.at_heads(heads).unwrap();
            prop_assert_eq!(&past.heads(), heads);
            let want = o_snapshot(past.doc());
            prop_assert_eq!(doc.snapshot_at(heads).unwrap(), want.clone());
            prop_assert_eq!(past.snapshot(), want);
            let want_valid = o_validate(past.doc());
            prop_assert_eq!(
                doc.validate_at(heads).map_err(|e| e.to_string()),
                want_valid.map_err(|e| flowhub_crdt::CrdtError::from(e).to_string())
            );
            prop_assert_eq!(doc.to_json_at(heads).unwrap(), past.to_json());
        }
    }
}

//! One-pass reads: the visible part of the document (or of one subtree)
//! loaded into a flat arena that borrows from the document.
//!
//! Opening a `map_range` on an object costs a few microseconds in automerge
//! 0.12 (each of a dozen columns seeks into its slab tree), so reading a
//! 1,000-node flow object by object (~6,000 objects) took ~16 ms. Automerge's
//! document iterator ([`ReadDoc::iter_at`]) instead walks every visible object
//! in op-set order with one set of column cursors that only move forward,
//! which is several times cheaper. It yields a flat stream of
//! `(containing object, key or index, winning value)` items, parents before
//! children, so we rebuild the tree here: every object becomes an arena slot,
//! and an item whose value is an object points at the child's slot.
//!
//! The walk is iterative (no recursion), so even a hostile, absurdly deep
//! document cannot overflow the stack while loading; the readers on top
//! ([`crate::view`], [`crate::schema`]) recurse only up to
//! [`crate::MAX_CONFIG_DEPTH`], as before.
//!
//! Only winning values are loaded, exactly what `map_range` / `list_range` /
//! `get` returned, so the read view and validation keep their semantics.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use automerge::iter::DocItem;
use automerge::{AutoCommit, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValueRef, Span, ValueRef};

/// Index of an object in a [`Tree`].
pub(crate) type Slot = usize;

/// A value held by a map key or list element.
#[derive(Debug, Clone)]
pub(crate) enum Val<'a> {
    /// A scalar, borrowed from the document where possible.
    Scalar(ScalarValueRef<'a>),
    /// A child object (its slot in the tree).
    Obj(Slot),
}

/// One object of the tree.
#[derive(Debug)]
pub(crate) enum Obj<'a> {
    /// A map (or legacy table), keys in document (sorted) order.
    Map(ObjType, Vec<(Cow<'a, str>, Val<'a>)>),
    /// A list, in index order.
    List(Vec<Val<'a>>),
    /// A text object, as its string content.
    Text(String),
}

impl Obj<'_> {
    fn empty(typ: ObjType) -> Self {
        match typ {
            ObjType::Map | ObjType::Table => Obj::Map(typ, Vec::new()),
            ObjType::List => Obj::List(Vec::new()),
            ObjType::Text => Obj::Text(String::new()),
        }
    }

    /// The automerge type of this object.
    pub(crate) fn typ(&self) -> ObjType {
        match self {
            Obj::Map(t, _) => *t,
            Obj::List(_) => ObjType::List,
            Obj::Text(_) => ObjType::Text,
        }
    }
}

/// The visible content of an object and everything below it.
#[derive(Debug)]
pub(crate) struct Tree<'a> {
    objs: Vec<Obj<'a>>,
}

impl<'a> Tree<'a> {
    /// Load `root` (an object of type `typ`) and all its visible descendants,
    /// as of `heads` (`None`: the current state, pending ops included).
    pub(crate) fn load(
        doc: &'a AutoCommit,
        root: &ObjId,
        typ: ObjType,
        heads: Option<&[ChangeHash]>,
    ) -> Self {
        let mut objs = vec![Obj::empty(typ)];
        let mut slots: HashMap<ObjId, Slot> = HashMap::new();
        slots.insert(root.clone(), 0);
        // Items of one object arrive together and share one `Arc`, so the
        // hash lookup runs once per object rather than once per item.
        let mut current: Option<(Arc<ObjId>, Option<Slot>)> = None;
        for item in doc.iter_at(root, heads) {
            let slot = match &current {
                Some((obj, slot)) if Arc::ptr_eq(obj, &item.obj) => *slot,
                _ => {
                    let slot = slots.get(&*item.obj).copied();
                    current = Some((item.obj.clone(), slot));
                    slot
                }
            };
            // Objects we never registered (e.g. the block markers inside a
            // text object) are not part of the tree.
            let Some(slot) = slot else { continue };
            match item.item {
                DocItem::Map(m) => {
                    let id = matches!(m.value, ValueRef::Object(_)).then(|| m.id());
                    let val = child(&mut objs, &mut slots, m.value, id);
                    if let Obj::Map(_, entries) = &mut objs[slot] {
                        entries.push((m.key, val));
                    }
                }
                DocItem::List(l) => {
                    let id = matches!(l.value, ValueRef::Object(_)).then(|| l.id());
                    let val = child(&mut objs, &mut slots, l.value, id);
                    if let Obj::List(items) = &mut objs[slot] {
                        items.push(val);
                    }
                }
                DocItem::Text(span) => {
                    if let Obj::Text(text) = &mut objs[slot] {
                        match span {
                            Span::Text { text: t, .. } => text.push_str(&t),
                            // What `ReadDoc::text` shows for a block marker.
                            Span::Block(_) => text.push('\u{fffc}'),
                        }
                    }
                }
            }
        }
        Self { objs }
    }

    /// A tree holding just an empty map (for checks that need no document).
    pub(crate) fn empty() -> Self {
        Self {
            objs: vec![Obj::empty(ObjType::Map)],
        }
    }

    /// The object loaded from `root`.
    pub(crate) fn root(&self) -> &Obj<'a> {
        &self.objs[0]
    }

    /// The object in `slot`.
    pub(crate) fn obj(&self, slot: Slot) -> &Obj<'a> {
        &self.objs[slot]
    }

    /// The entries of the map in `slot` (empty if it is not a map).
    pub(crate) fn entries(&self, slot: Slot) -> &[(Cow<'a, str>, Val<'a>)] {
        match &self.objs[slot] {
            Obj::Map(_, entries) => entries,
            _ => &[],
        }
    }

    /// The value at `key` of the root map, if any.
    pub(crate) fn root_get(&self, key: &str) -> Option<&Val<'a>> {
        match self.root() {
            Obj::Map(_, entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The `ValueRef` an automerge read would have returned for `val`.
    pub(crate) fn value_ref(&self, val: &Val<'a>) -> ValueRef<'a> {
        match val {
            Val::Scalar(s) => ValueRef::Scalar(s.clone()),
            Val::Obj(slot) => ValueRef::Object(self.objs[*slot].typ()),
        }
    }

    /// The slot of `val` if it is a map object (not a table).
    pub(crate) fn as_map(&self, val: &Val<'a>) -> Option<Slot> {
        match val {
            Val::Obj(slot) if self.objs[*slot].typ() == ObjType::Map => Some(*slot),
            _ => None,
        }
    }
}

/// Turn an item's value into a [`Val`], registering a new slot for an object
/// (`id` is the object's id).
fn child<'a>(
    objs: &mut Vec<Obj<'a>>,
    slots: &mut HashMap<ObjId, Slot>,
    value: ValueRef<'a>,
    id: Option<ObjId>,
) -> Val<'a> {
    match (value, id) {
        (ValueRef::Object(typ), Some(id)) => {
            let slot = objs.len();
            objs.push(Obj::empty(typ));
            slots.insert(id, slot);
            Val::Obj(slot)
        }
        (ValueRef::Scalar(s), _) => Val::Scalar(s),
        // Not reached: callers pass the id of every object value.
        (ValueRef::Object(_), None) => Val::Scalar(ScalarValueRef::Null),
    }
}

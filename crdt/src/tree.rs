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
//! children and each object's items together, so we rebuild the tree here:
//! every object becomes a slot whose entries are one contiguous range of a
//! single entry vector, and an entry whose value is an object points at the
//! child's slot. (No per-object allocations: on a 1,000-node flow the walk
//! itself is ~80% of the cost, automerge's iterator the rest.)
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
use std::ops::Range;
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

/// A map key (empty for list elements) and its value.
pub(crate) type Entry<'a> = (Cow<'a, str>, Val<'a>);

/// One object of the tree, as stored.
#[derive(Debug)]
struct Rec {
    typ: ObjType,
    /// Its entries in `Tree::entries` (map keys in document order, which is
    /// sorted; list elements in index order).
    entries: Range<usize>,
    /// Text content, for text objects.
    text: String,
}

impl Rec {
    fn new(typ: ObjType) -> Self {
        Self {
            typ,
            entries: 0..0,
            text: String::new(),
        }
    }
}

/// A view of one object of a [`Tree`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Obj<'t, 'a> {
    /// A map (or legacy table).
    Map(&'t [Entry<'a>]),
    /// A list; keys are empty.
    List(&'t [Entry<'a>]),
    /// A text object's content.
    Text(&'t str),
}

/// The visible content of an object and everything below it.
#[derive(Debug)]
pub(crate) struct Tree<'a> {
    objs: Vec<Rec>,
    entries: Vec<Entry<'a>>,
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
        let mut tree = Tree {
            objs: vec![Rec::new(typ)],
            entries: Vec::new(),
        };
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
                    if let Some(slot) = slot {
                        let start = tree.entries.len();
                        tree.objs[slot].entries = start..start;
                    }
                    current = Some((item.obj.clone(), slot));
                    slot
                }
            };
            // Objects we never registered (e.g. the block markers inside a
            // text object) are not part of the tree.
            let Some(slot) = slot else { continue };
            let (key, value, id) = match item.item {
                DocItem::Map(m) => {
                    let id = matches!(m.value, ValueRef::Object(_)).then(|| m.id());
                    (m.key, m.value, id)
                }
                DocItem::List(l) => {
                    let id = matches!(l.value, ValueRef::Object(_)).then(|| l.id());
                    (Cow::Borrowed(""), l.value, id)
                }
                DocItem::Text(span) => {
                    let text = &mut tree.objs[slot].text;
                    match span {
                        Span::Text { text: t, .. } => text.push_str(&t),
                        // What `ReadDoc::text` shows for a block marker.
                        Span::Block(_) => text.push('\u{fffc}'),
                    }
                    continue;
                }
            };
            let val = match (value, id) {
                (ValueRef::Object(typ), Some(id)) => {
                    let child = tree.objs.len();
                    tree.objs.push(Rec::new(typ));
                    slots.insert(id, child);
                    Val::Obj(child)
                }
                (ValueRef::Scalar(s), _) => Val::Scalar(s),
                // Not reached: every object value comes with its id.
                (ValueRef::Object(_), None) => Val::Scalar(ScalarValueRef::Null),
            };
            tree.entries.push((key, val));
            // An object's items are contiguous (see the module docs), so its
            // range simply grows.
            tree.objs[slot].entries.end = tree.entries.len();
        }
        tree
    }

    /// A tree holding just an empty map (for checks that need no document).
    pub(crate) fn empty() -> Self {
        Self {
            objs: vec![Rec::new(ObjType::Map)],
            entries: Vec::new(),
        }
    }

    /// The object in `slot`.
    pub(crate) fn obj(&self, slot: Slot) -> Obj<'_, 'a> {
        let rec = &self.objs[slot];
        let entries = &self.entries[rec.entries.clone()];
        match rec.typ {
            ObjType::Map | ObjType::Table => Obj::Map(entries),
            ObjType::List => Obj::List(entries),
            ObjType::Text => Obj::Text(&rec.text),
        }
    }

    /// The entries of the map in `slot` (empty if it is not a map).
    pub(crate) fn entries(&self, slot: Slot) -> &[Entry<'a>] {
        match self.obj(slot) {
            Obj::Map(entries) => entries,
            _ => &[],
        }
    }

    /// The value at `key` of the root map, if any.
    pub(crate) fn root_get(&self, key: &str) -> Option<&Val<'a>> {
        self.entries(0)
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The `ValueRef` an automerge read would have returned for `val`.
    pub(crate) fn value_ref(&self, val: &Val<'a>) -> ValueRef<'a> {
        match val {
            Val::Scalar(s) => ValueRef::Scalar(s.clone()),
            Val::Obj(slot) => ValueRef::Object(self.objs[*slot].typ),
        }
    }

    /// The slot of `val` if it is a map object (not a table).
    pub(crate) fn as_map(&self, val: &Val<'a>) -> Option<Slot> {
        match val {
            Val::Obj(slot) if self.objs[*slot].typ == ObjType::Map => Some(*slot),
            _ => None,
        }
    }
}

//! Incremental validation: re-check only what a batch of changes touched.
//!
//! Even in one pass (see the `tree` module), validating a 1,000-node flow from
//! scratch takes milliseconds — too slow to do on every keystroke a hub
//! relays. Instead the
//! guarded receive records Automerge patches while applying a message; each
//! patch carries its path from the root, which names the node or edge it lands
//! in. We then re-check the (cheap) root map plus just those entries, in their
//! *current* state.
//!
//! Patches describe changes to the visible document only, which is exactly what
//! validation is about: writes into an object no one can see (a losing conflict
//! value, a deleted node) produce no patch, and if such an object later becomes
//! visible (its rival is deleted) that surfaces as a patch on its parent key,
//! so the entry is re-checked then. Anything we cannot attribute to a single
//! entry (e.g. the `nodes` map itself being replaced) falls back to a full
//! validation.

use std::collections::BTreeSet;

use automerge::{AutoCommit, Patch, PatchAction, Prop, ReadDoc};

use crate::schema::{self, SchemaError};

/// The entries a set of patches touched.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Touched {
    /// Re-validate everything.
    pub(crate) everything: bool,
    /// Node ids whose entry (or anything inside it) changed.
    pub(crate) nodes: BTreeSet<String>,
    /// Edge ids whose entry (or anything inside it) changed.
    pub(crate) edges: BTreeSet<String>,
}

impl Touched {
    /// Classify each patch by the first two props of its full path.
    pub(crate) fn from_patches(patches: &[Patch]) -> Self {
        let mut touched = Self::default();
        for patch in patches {
            let own: Option<Prop> = match &patch.action {
                PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } => {
                    Some(Prop::Map(key.clone()))
                }
                PatchAction::Increment { prop, .. } | PatchAction::Conflict { prop } => {
                    Some(prop.clone())
                }
                _ => None,
            };
            // `path` leads from the root to `patch.obj`; the action's own key
            // (if any) extends it by one.
            let full: Vec<&Prop> = patch
                .path
                .iter()
                .map(|(_, prop)| prop)
                .chain(own.as_ref())
                .collect();
            match full.as_slice() {
                // Something at the root: `name`, a foreign key, or `nodes`/`edges`
                // themselves. The root check sees the first two; a replaced
                // collection needs everything re-checked.
                [Prop::Map(root)] => {
                    if root == "nodes" || root == "edges" {
                        touched.everything = true;
                    }
                }
                [Prop::Map(root), Prop::Map(id), ..] if root == "nodes" => {
                    touched.nodes.insert(id.clone());
                }
                [Prop::Map(root), Prop::Map(id), ..] if root == "edges" => {
                    touched.edges.insert(id.clone());
                }
                // Inside some other root value (e.g. a text object at `name`, or
                // a foreign root key): the root check rejects those.
                [Prop::Map(_), _, ..] => {}
                // A patch we cannot place: be safe.
                _ => touched.everything = true,
            }
        }
        touched
    }
}

/// Validate the root plus the touched entries (everything if so flagged).
pub(crate) fn validate_touched(doc: &AutoCommit, touched: &Touched) -> Result<(), SchemaError> {
    if touched.everything {
        return schema::validate(doc);
    }
    let (nodes, edges) = schema::validate_root(doc)?;
    for (collection, obj, ids) in [
        ("nodes", &nodes, &touched.nodes),
        ("edges", &edges, &touched.edges),
    ] {
        for id in ids {
            // A deleted entry has nothing left to check.
            if let Ok(Some((value, entry))) = doc.get(obj, id.as_str()) {
                let value = match value {
                    automerge::Value::Object(t) => automerge::ValueRef::Object(t),
                    // Any scalar is wrong here; pass a stand-in so the error is uniform.
                    automerge::Value::Scalar(_) => {
                        automerge::ValueRef::Scalar(automerge::ScalarValueRef::Null)
                    }
                };
                schema::validate_entry(doc, collection, id, &value, &entry)?;
            }
        }
    }
    Ok(())
}

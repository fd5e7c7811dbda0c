//! Per-user undo and redo: [`UndoStack`].
//!
//! Automerge has no undo: every replica only ever adds changes. So undo here is
//! a *new* change made of inverse typed edits, and a client keeps an
//! [`UndoStack`] beside its [`FlowDoc`] holding only its own user's edits. It
//! records what each local edit did as a [`FlowDiff`] (the read view before →
//! after, so the inverse of any batch is known exactly: a move's old position,
//! a deleted node whole with its edges, a config key's old value or its
//! absence); undo applies the inverse as one change and pushes what that did
//! onto the redo stack; redo does the same the other way; a new local edit
//! clears redo.
//!
//! # Concurrency: undo never overwrites a collaborator's later work
//!
//! Between an edit and its undo, other users' changes may have merged in. Undo
//! works *per property* and reverts a property only if it still holds the value
//! the user's edit left there; otherwise someone changed it since, and their
//! value stays. The undo applies the rest and reports each part it left alone
//! as [`Skipped`] (path and [`SkipReason`]), so a UI can say "the node was moved
//! by someone else since". In detail (old = before the user's edit, new = after):
//!
//! | the user's edit | undo does | unless (skipped, reason) |
//! |---|---|---|
//! | rename, move, relabel, set kind, one config key | puts `old` back | the property is no longer `new` (`ChangedSince`), or the node is gone (`Gone`) |
//! | add node | deletes it | anyone changed the node or connected to it since (`ChangedSince`); already deleted (`Gone`) |
//! | delete node | adds it back as it was (id, kind, label, position, config) | the id is in use again (`Taken`) |
//! | connect | disconnects | the edge was re-pointed (`ChangedSince`) or is gone (`Gone`) |
//! | disconnect, or edges a node deletion took | connects again, same id | the id is in use (`Taken`) or an endpoint node is gone (`Gone`) |
//!
//! So undoing a move after someone else moved the node later leaves the node
//! where they put it, and undoing an add never deletes a node a collaborator
//! has since worked on. The check compares values, not authorship: if someone
//! changed a property and then changed it back, undo treats it as untouched.
//! The user's own later edits are undone first (the stack is last in, first
//! out), so they never block an earlier undo.
//!
//! An undo whose every part is skipped commits nothing (`change: None`) and
//! leaves nothing to redo. If applying the inverse fails (a hidden dangling
//! edge holding the id of an edge to restore, the only case known), the error
//! is returned and the entry stays on its stack.
//!
//! The stack is plain data (serde), so a client can keep it across a
//! reconnect or a reload; it never refers to Automerge state. Recording costs
//! two reads of the whole flow (before and after the edit, see
//! [`FlowDoc::snapshot`]): a few milliseconds for a 1,000-node flow.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::diff::{same_position, Changed, FlowDiff, NodeChange};
use crate::error::Result;
use crate::flow_doc::FlowDoc;
use crate::model::FlowSnapshot;
use crate::ops::Edit;
use crate::ChangeHash;

/// How many edits an [`UndoStack`] remembers by default.
pub const DEFAULT_UNDO_LIMIT: usize = 200;

/// One user's undo and redo history for one flow (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UndoStack {
    /// What each recorded action did (before → after), oldest first.
    undo: Vec<FlowDiff>,
    /// What each undo did, most recent last.
    redo: Vec<FlowDiff>,
    /// The most entries `undo` keeps; the oldest are dropped first.
    limit: usize,
}

impl Default for UndoStack {
    fn default() -> Self {
        Self::new()
    }
}

/// What an [`UndoStack::undo`] or [`UndoStack::redo`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Undone {
    /// The change it committed; `None` if every part was skipped.
    pub change: Option<ChangeHash>,
    /// The parts it left alone, and why.
    pub skipped: Vec<Skipped>,
}

/// A part of an undo or redo that was left alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// What was left alone, as a schema path: `name`, `nodes/<id>`,
    /// `nodes/<id>/position` (or `kind`, `label`, `config/<key>`), `edges/<id>`.
    /// Ids and keys are written as they are, unescaped.
    pub path: String,
    /// Why.
    pub reason: SkipReason,
}

/// Why part of an undo or redo was left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Someone changed it after the edit being undone.
    ChangedSince,
    /// The node or edge (or an edge's endpoint node) no longer exists.
    Gone,
    /// The node or edge id to restore is in use again.
    Taken,
}

impl UndoStack {
    /// An empty stack keeping up to [`DEFAULT_UNDO_LIMIT`] edits.
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_UNDO_LIMIT)
    }

    /// An empty stack keeping up to `limit` edits (at least one).
    pub fn with_limit(limit: usize) -> Self {
        Self {
            undo: Vec::new(),
            redo: Vec::new(),
            limit: limit.max(1),
        }
    }

    /// Apply `edits` as one change ([`FlowDoc::apply_edits`]) and record them
    /// as one undoable step.
    pub fn apply(&mut self, doc: &mut FlowDoc, edits: &[Edit]) -> Result<ChangeHash> {
        self.record(doc, |doc| doc.apply_edits(edits))
    }

    /// Run local typed edits (`f`, e.g. `|d| d.move_node("n1", to)` or a
    /// [`FlowDoc::batch`]) and record their combined effect as one undoable
    /// step. Nothing is recorded if `f` fails or changes nothing visible.
    pub fn record<T>(
        &mut self,
        doc: &mut FlowDoc,
        f: impl FnOnce(&mut FlowDoc) -> Result<T>,
    ) -> Result<T> {
        let before = doc.snapshot();
        let value = f(doc)?;
        self.push(FlowDiff::between(&before, &doc.snapshot()));
        Ok(value)
    }

    /// Record a local step whose effect the caller already knows (the diff of
    /// the read view before → after it). An empty diff is ignored; any other
    /// clears the redo stack.
    pub fn push(&mut self, step: FlowDiff) {
        if step.is_empty() {
            return;
        }
        self.redo.clear();
        self.push_undo(step);
    }

    fn push_undo(&mut self, step: FlowDiff) {
        self.undo.push(step);
        if self.undo.len() > self.limit {
            self.undo.remove(0);
        }
    }

    /// Whether there is a step to undo.
    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    /// Whether there is an undone step to redo.
    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    /// Forget everything.
    pub fn clear(&mut self) {
        self.undo.clear();
        self.redo.clear();
    }

    /// Revert the most recent recorded step as one new change, leaving alone
    /// whatever others changed since (see the module docs). `Ok(None)`:
    /// nothing to undo.
    pub fn undo(&mut self, doc: &mut FlowDoc) -> Result<Option<Undone>> {
        let Some(step) = self.undo.pop() else {
            return Ok(None);
        };
        match revert(doc, &step) {
            Ok((undone, done)) => {
                if let Some(done) = done {
                    self.redo.push(done);
                }
                Ok(Some(undone))
            }
            Err(e) => {
                self.undo.push(step);
                Err(e)
            }
        }
    }

    /// Revert the most recent undo, with the same rules. `Ok(None)`: nothing
    /// to redo.
    pub fn redo(&mut self, doc: &mut FlowDoc) -> Result<Option<Undone>> {
        let Some(step) = self.redo.pop() else {
            return Ok(None);
        };
        match revert(doc, &step) {
            Ok((undone, done)) => {
                if let Some(done) = done {
                    self.push_undo(done);
                }
                Ok(Some(undone))
            }
            Err(e) => {
                self.redo.push(step);
                Err(e)
            }
        }
    }
}

/// Apply the parts of the inverse of `step` that nobody overwrote since, as one
/// change. Returns the report and what the change did (for the other stack).
fn revert(doc: &mut FlowDoc, step: &FlowDiff) -> Result<(Undone, Option<FlowDiff>)> {
    let current = doc.snapshot();
    let (applicable, skipped) = rebase(step.clone().inverted(), &current);
    if applicable.is_empty() {
        let undone = Undone {
            change: None,
            skipped,
        };
        return Ok((undone, None));
    }
    let change = doc.apply_edits(&applicable.to_edits())?;
    let done = FlowDiff::between(&current, &doc.snapshot());
    let undone = Undone {
        change: Some(change),
        skipped,
    };
    Ok((undone, Some(done)))
}

/// The part of `wanted` (a diff whose `old` side is what the user's step left)
/// that still applies to `current`: each property whose current value is
/// still that `old` side. The rest is reported.
fn rebase(wanted: FlowDiff, current: &FlowSnapshot) -> (FlowDiff, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let mut skip = |path: String, reason| skipped.push(Skipped { path, reason });
    let mut out = FlowDiff::default();

    if let Some(name) = wanted.name {
        if current.name == name.old {
            out.name = Some(name);
        } else {
            skip("name".into(), SkipReason::ChangedSince);
        }
    }

    for node in wanted.nodes_added {
        if current.nodes.contains_key(&node.id) {
            skip(format!("nodes/{}", node.id), SkipReason::Taken);
        } else {
            out.nodes_added.push(node);
        }
    }

    for node in wanted.nodes_removed {
        let path = format!("nodes/{}", node.id);
        match current.nodes.get(&node.id) {
            None => skip(path, SkipReason::Gone),
            Some(now) if !same_node(now, &node) => skip(path, SkipReason::ChangedSince),
            Some(_) => {
                // Deleting the node takes its edges along: only those this
                // revert removes anyway, never a connection someone else made.
                let foreign_edge = current.edges.values().any(|e| {
                    (e.source.node == node.id || e.target.node == node.id)
                        && !wanted.edges_removed.contains(e)
                });
                if foreign_edge {
                    skip(path, SkipReason::ChangedSince);
                } else {
                    out.nodes_removed.push(node);
                }
            }
        }
    }

    for change in wanted.nodes_changed {
        let Some(now) = current.nodes.get(&change.id) else {
            skip(format!("nodes/{}", change.id), SkipReason::Gone);
            continue;
        };
        let field = |name: &str| format!("nodes/{}/{name}", change.id);
        let mut kept = NodeChange {
            id: change.id.clone(),
            kind: None,
            label: None,
            position: None,
            config: Default::default(),
        };
        kept.kind = keep_if(
            change.kind,
            |k| now.kind == k.old,
            || skip(field("kind"), SkipReason::ChangedSince),
        );
        kept.label = keep_if(
            change.label,
            |l| now.label == l.old,
            || skip(field("label"), SkipReason::ChangedSince),
        );
        kept.position = keep_if(
            change.position,
            |p| same_position(now.position, p.old),
            || skip(field("position"), SkipReason::ChangedSince),
        );
        for (key, value) in change.config {
            if now.config.get(&key) == value.old.as_ref() {
                kept.config.insert(key, value);
            } else {
                skip(field(&format!("config/{key}")), SkipReason::ChangedSince);
            }
        }
        if !kept.is_empty() {
            out.nodes_changed.push(kept);
        }
    }

    // Endpoints an edge to restore may use: nodes there now and not deleted by
    // this revert, or restored by it.
    let deleting: BTreeSet<&str> = out.nodes_removed.iter().map(|n| n.id.as_str()).collect();
    let endpoint_ok = |id: &str| {
        (current.nodes.contains_key(id) && !deleting.contains(id))
            || out.nodes_added.iter().any(|n| n.id == id)
    };
    let mut edges_added = Vec::new();
    for edge in wanted.edges_added {
        let path = format!("edges/{}", edge.id);
        if current.edges.contains_key(&edge.id) {
            skip(path, SkipReason::Taken);
        } else if !endpoint_ok(&edge.source.node) || !endpoint_ok(&edge.target.node) {
            skip(path, SkipReason::Gone);
        } else {
            edges_added.push(edge);
        }
    }
    out.edges_added = edges_added;

    for edge in wanted.edges_removed {
        match current.edges.get(&edge.id) {
            None => skip(format!("edges/{}", edge.id), SkipReason::Gone),
            Some(now) if *now != edge => {
                skip(format!("edges/{}", edge.id), SkipReason::ChangedSince)
            }
            Some(_) => out.edges_removed.push(edge),
        }
    }

    for edge in wanted.edges_changed {
        let path = format!("edges/{}", edge.old.id);
        match current.edges.get(&edge.old.id) {
            None => skip(path, SkipReason::Gone),
            Some(now) if *now != edge.old => skip(path, SkipReason::ChangedSince),
            Some(_)
                if !endpoint_ok(&edge.new.source.node) || !endpoint_ok(&edge.new.target.node) =>
            {
                skip(path, SkipReason::Gone)
            }
            Some(_) => out.edges_changed.push(edge),
        }
    }

    (out, skipped)
}

/// `value` if `still` holds for it, otherwise `None` after calling `skipped`.
fn keep_if<T>(
    value: Option<Changed<T>>,
    still: impl FnOnce(&Changed<T>) -> bool,
    skipped: impl FnOnce(),
) -> Option<Changed<T>> {
    let value = value?;
    if still(&value) {
        Some(value)
    } else {
        skipped();
        None
    }
}

/// Node equality as the diff sees it (exact positions).
fn same_node(a: &crate::Node, b: &crate::Node) -> bool {
    a.kind == b.kind
        && a.label == b.label
        && same_position(a.position, b.position)
        && a.config == b.config
}

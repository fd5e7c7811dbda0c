//! History for people: what each change did ([`ChangeSummary`]) and changes
//! grouped into editing sessions ([`group_sessions`]).
//!
//! A change is summarised by the diff of the read view just before it (at its
//! dependencies) and just after it (at its own hash), so a summary says what
//! the change did to the flow as its author saw it, independent of anything
//! concurrent.
//!
//! Who made a change is *not* decided here: the actor and message inside a
//! change are whatever the sending client wrote, so the hub attributes changes
//! to users from its own record of who sent each one and passes that to
//! [`group_sessions`].

use std::collections::BTreeSet;

use automerge::{ChangeHash, ObjType, ROOT};
use serde::{Deserialize, Serialize};

use crate::diff::FlowDiff;
use crate::error::{CrdtError, Result};
use crate::flow_doc::FlowDoc;
use crate::model::FlowSnapshot;
use crate::tree::Tree;
use crate::view::snapshot_of;

/// One change in the history (see [`FlowDoc::change_summaries`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeSummary {
    /// The change hash; the flow "after this change" is at heads `[hash]`.
    pub hash: ChangeHash,
    /// The Automerge actor that wrote it, hex (self-declared by the client).
    pub actor: String,
    /// Its sequence number for that actor (1-based).
    pub seq: u64,
    /// The time its author put in it, as written: flowhub's typed edits write
    /// milliseconds since the Unix epoch ([`FlowDoc::set_edit_time`]); 0 if
    /// none was set. Self-declared, like `actor`.
    pub timestamp: i64,
    /// The changes it was made on top of.
    pub deps: Vec<ChangeHash>,
    /// The commit message, if any.
    pub message: Option<String>,
    /// What it did to the flow.
    pub summary: EditSummary,
}

/// What a change (or a session of changes) did to the flow, as sorted id lists
/// (a count is a list's length).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EditSummary {
    /// Whether the flow was renamed.
    pub renamed: bool,
    /// Nodes added.
    pub nodes_added: Vec<String>,
    /// Nodes removed.
    pub nodes_removed: Vec<String>,
    /// Nodes moved.
    pub nodes_moved: Vec<String>,
    /// Nodes relabelled.
    pub nodes_relabelled: Vec<String>,
    /// Nodes whose kind changed.
    pub nodes_retyped: Vec<String>,
    /// Config keys set, changed or removed, per node.
    pub config_changed: Vec<ConfigKey>,
    /// Edges added.
    pub edges_added: Vec<String>,
    /// Edges removed.
    pub edges_removed: Vec<String>,
    /// Edges re-pointed (same id, other endpoints).
    pub edges_changed: Vec<String>,
}

/// A config key of a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConfigKey {
    /// The node id.
    pub node: String,
    /// The key.
    pub key: String,
}

impl EditSummary {
    /// The summary of a diff.
    pub fn of(diff: &FlowDiff) -> Self {
        let ids = |nodes: &[crate::Node]| nodes.iter().map(|n| n.id.clone()).collect();
        let changed = |pick: fn(&crate::NodeChange) -> bool| {
            diff.nodes_changed
                .iter()
                .filter(|c| pick(c))
                .map(|c| c.id.clone())
                .collect()
        };
        let edge_ids = |edges: &[crate::Edge]| edges.iter().map(|e| e.id.clone()).collect();
        EditSummary {
            renamed: diff.name.is_some(),
            nodes_added: ids(&diff.nodes_added),
            nodes_removed: ids(&diff.nodes_removed),
            nodes_moved: changed(|c| c.position.is_some()),
            nodes_relabelled: changed(|c| c.label.is_some()),
            nodes_retyped: changed(|c| c.kind.is_some()),
            config_changed: diff
                .nodes_changed
                .iter()
                .flat_map(|c| {
                    c.config.keys().map(|key| ConfigKey {
                        node: c.id.clone(),
                        key: key.clone(),
                    })
                })
                .collect(),
            edges_added: edge_ids(&diff.edges_added),
            edges_removed: edge_ids(&diff.edges_removed),
            edges_changed: diff
                .edges_changed
                .iter()
                .map(|c| c.new.id.clone())
                .collect(),
        }
    }

    /// Whether the change did nothing visible (e.g. an empty change, or one
    /// only re-writing values already there).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Everything `self` or `other` lists (ids deduplicated and sorted): the
    /// summary of a run of changes.
    pub fn merge(&mut self, other: &EditSummary) {
        fn union<T: Ord + Clone>(a: &mut Vec<T>, b: &[T]) {
            let set: BTreeSet<T> = a.drain(..).chain(b.iter().cloned()).collect();
            *a = set.into_iter().collect();
        }
        self.renamed |= other.renamed;
        union(&mut self.nodes_added, &other.nodes_added);
        union(&mut self.nodes_removed, &other.nodes_removed);
        union(&mut self.nodes_moved, &other.nodes_moved);
        union(&mut self.nodes_relabelled, &other.nodes_relabelled);
        union(&mut self.nodes_retyped, &other.nodes_retyped);
        union(&mut self.config_changed, &other.config_changed);
        union(&mut self.edges_added, &other.edges_added);
        union(&mut self.edges_removed, &other.edges_removed);
        union(&mut self.edges_changed, &other.edges_changed);
    }
}

impl FlowDoc {
    /// Up to `limit` changes, newest first in topological order (a change is
    /// always listed before the changes it depends on), each with what it did.
    /// `before`: start after that change in this order (the last hash of the
    /// previous page), for paging back through history.
    ///
    /// Costs one historical read of the flow per listed change on a linear
    /// history (two where changes were concurrent), plus one walk over all
    /// change metadata: see the `history` benchmark.
    ///
    /// Fails with [`CrdtError::UnknownHeads`] if `before` is not a change of
    /// this document.
    pub fn change_summaries(
        &mut self,
        limit: usize,
        before: Option<ChangeHash>,
    ) -> Result<Vec<ChangeSummary>> {
        let metas: Vec<_> = self
            .doc
            .get_changes_meta(&[])
            .into_iter()
            .map(|m| m.into_owned())
            .collect();
        let start = match before {
            None => metas.len(),
            Some(hash) => metas
                .iter()
                .position(|m| m.hash == hash)
                .ok_or_else(|| CrdtError::UnknownHeads(vec![hash.to_string()]))?,
        };
        let mut out = Vec::with_capacity(limit.min(start));
        // Newest first, a change's "before" (its deps) is usually the next
        // older change's "after": keep the last read to halve the reads on a
        // linear history.
        let mut older: Option<(Vec<ChangeHash>, FlowSnapshot)> = None;
        for meta in metas[..start].iter().rev().take(limit) {
            let after = match older.take() {
                Some((heads, snapshot)) if heads == [meta.hash] => snapshot,
                _ => self.snapshot_at_known(&[meta.hash]),
            };
            let before = self.snapshot_at_known(&meta.deps);
            let summary = EditSummary::of(&FlowDiff::between(&before, &after));
            older = Some((meta.deps.clone(), before));
            out.push(ChangeSummary {
                hash: meta.hash,
                actor: meta.actor.to_hex_string(),
                seq: meta.seq,
                timestamp: meta.timestamp,
                deps: meta.deps.clone(),
                message: meta.message.as_ref().map(|m| m.to_string()),
                summary,
            });
        }
        Ok(out)
    }

    /// The read view at heads known to be applied changes; no heads is the
    /// empty document before genesis.
    fn snapshot_at_known(&self, heads: &[ChangeHash]) -> FlowSnapshot {
        if heads.is_empty() {
            return FlowSnapshot::default();
        }
        snapshot_of(&Tree::load(&self.doc, &ROOT, ObjType::Map, Some(heads)))
    }
}

/// Consecutive changes by one author, close in time (see [`group_sessions`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditSession<A> {
    /// Who made the changes.
    pub author: A,
    /// The changes, in the order given (newest first for
    /// [`FlowDoc::change_summaries`] output).
    pub changes: Vec<ChangeHash>,
    /// Earliest change timestamp, ms.
    pub start: i64,
    /// Latest change timestamp, ms.
    pub end: i64,
    /// Everything the session did.
    pub summary: EditSummary,
}

/// Group `changes` (in history order, e.g. from [`FlowDoc::change_summaries`])
/// into editing sessions: a run of consecutive changes with the same author
/// where each is at most `max_gap_ms` from the previous one. `author` gives
/// each change's author, as the caller knows it (the hub: the verified user
/// who sent it), never the change's self-declared actor.
pub fn group_sessions<A: PartialEq>(
    changes: &[ChangeSummary],
    mut author: impl FnMut(&ChangeSummary) -> A,
    max_gap_ms: i64,
) -> Vec<EditSession<A>> {
    let mut sessions: Vec<EditSession<A>> = Vec::new();
    let mut last_time: Option<i64> = None;
    for change in changes {
        let who = author(change);
        let t = change.timestamp;
        match sessions.last_mut() {
            Some(s)
                if s.author == who
                    && last_time.is_some_and(|p| p.abs_diff(t) <= max_gap_ms.unsigned_abs()) =>
            {
                s.changes.push(change.hash);
                s.start = s.start.min(t);
                s.end = s.end.max(t);
                s.summary.merge(&change.summary);
            }
            _ => sessions.push(EditSession {
                author: who,
                changes: vec![change.hash],
                start: t,
                end: t,
                summary: change.summary.clone(),
            }),
        }
        last_time = Some(t);
    }
    sessions
}

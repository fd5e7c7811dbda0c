//! The presence of one flow on one node: who is here, their cursor, selection and
//! colour. Sans-IO: the flow actor feeds it joins, updates and leaves, and takes a
//! coalesced diff at most every [`FLUSH_INTERVAL`], so a mouse stream of any rate
//! becomes at most ~20 messages per second per flow, last value winning.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flowhub_protocol::presence::{MAX_COLOR_LEN, MAX_SELECTION};
use flowhub_protocol::{Cursor, PresenceEntry};

/// Presence diffs go out at most this often per flow (20 per second).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Colours handed out when a client does not pick one, chosen from the user id so a
/// person keeps their colour across sessions.
const PALETTE: [&str; 8] = [
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324",
];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn default_color(user_id: &str) -> String {
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let hash = user_id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    PALETTE[(hash % PALETTE.len() as u64) as usize].to_owned()
}

/// Why a presence update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("color must be at most {MAX_COLOR_LEN} characters of [#a-zA-Z0-9(),.% ]")]
    BadColor,
    #[error("selection holds at most {MAX_SELECTION} node ids of at most 128 bytes")]
    BadSelection,
    #[error("cursor coordinates must be finite numbers")]
    BadCursor,
}

/// A coalesced change set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PresenceChanges {
    pub joined: Vec<PresenceEntry>,
    pub updated: Vec<PresenceEntry>,
    pub left: Vec<String>,
}

#[derive(Debug, Default)]
pub struct PresenceBook {
    entries: BTreeMap<String, PresenceEntry>,
    joined: BTreeSet<String>,
    updated: BTreeSet<String>,
    left: BTreeSet<String>,
    /// A full state went out since the last diff: sessions that joined in this
    /// interval are known to someone, so their leave must be announced.
    exposed: bool,
}

impl PresenceBook {
    pub fn join(&mut self, entry: PresenceEntry) {
        let id = entry.session_id.clone();
        self.left.remove(&id);
        self.entries.insert(id.clone(), entry);
        self.joined.insert(id);
    }

    /// Applies an update; fields left as `None` keep their value. Returns whether the
    /// session is present (unknown sessions are ignored).
    pub fn update(
        &mut self,
        session_id: &str,
        cursor: Option<Cursor>,
        selection: Option<Vec<String>>,
        color: Option<String>,
    ) -> Result<bool, PresenceError> {
        if let Some(c) = &cursor {
            if !c.x.is_finite() || !c.y.is_finite() {
                return Err(PresenceError::BadCursor);
            }
        }
        if let Some(sel) = &selection {
            if sel.len() > MAX_SELECTION || sel.iter().any(|s| s.len() > 128) {
                return Err(PresenceError::BadSelection);
            }
        }
        if let Some(color) = &color {
            let ok = color.len() <= MAX_COLOR_LEN
                && color
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "#(),.% ".contains(c));
            if !ok {
                return Err(PresenceError::BadColor);
            }
        }
        let Some(entry) = self.entries.get_mut(session_id) else {
            return Ok(false);
        };
        if let Some(c) = cursor {
            entry.cursor = Some(c);
        }
        if let Some(s) = selection {
            entry.selection = s;
        }
        if let Some(c) = color {
            entry.color = c;
        }
        entry.updated_at = now_ms();
        if !self.joined.contains(session_id) {
            self.updated.insert(session_id.to_owned());
        }
        Ok(true)
    }

    pub fn leave(&mut self, session_id: &str) {
        if self.entries.remove(session_id).is_some() {
            self.updated.remove(session_id);
            // Joined and left within one interval: nobody needs to hear of it,
            // unless a full state (which listed it) went out meanwhile.
            if !self.joined.remove(session_id) || self.exposed {
                self.left.insert(session_id.to_owned());
            }
        }
    }

    /// Applies presence published by another node (see `PresenceUpdate`).
    pub fn apply_remote(
        &mut self,
        origin: &str,
        full: bool,
        upserts: Vec<PresenceEntry>,
        left: &[String],
    ) {
        if full {
            let keep: BTreeSet<&str> = upserts.iter().map(|e| e.session_id.as_str()).collect();
            let gone: Vec<String> = self
                .entries
                .values()
                .filter(|e| e.node_id == origin && !keep.contains(e.session_id.as_str()))
                .map(|e| e.session_id.clone())
                .collect();
            for id in gone {
                self.leave(&id);
            }
        }
        for mut entry in upserts {
            // A node speaks only for its own sessions.
            entry.node_id = origin.to_owned();
            let id = entry.session_id.clone();
            match self.entries.insert(id.clone(), entry) {
                Some(_) if !self.joined.contains(&id) => {
                    self.updated.insert(id);
                }
                Some(_) => {}
                None => {
                    self.left.remove(&id);
                    self.joined.insert(id);
                }
            }
        }
        for id in left {
            if self.entries.get(id).is_some_and(|e| e.node_id == origin) {
                self.leave(id);
            }
        }
    }

    /// Drops entries of nodes that are neither `own_node` nor in `live`.
    pub fn retain_nodes(&mut self, own_node: &str, live: &std::collections::HashSet<String>) {
        let gone: Vec<String> = self
            .entries
            .values()
            .filter(|e| e.node_id != own_node && !live.contains(&e.node_id))
            .map(|e| e.session_id.clone())
            .collect();
        for id in gone {
            self.leave(&id);
        }
    }

    /// Entries of sessions connected to `node_id`.
    pub fn entries_of(&self, node_id: &str) -> Vec<PresenceEntry> {
        self.entries
            .values()
            .filter(|e| e.node_id == node_id)
            .cloned()
            .collect()
    }

    pub fn is_dirty(&self) -> bool {
        !(self.joined.is_empty() && self.updated.is_empty() && self.left.is_empty())
    }

    /// Everything that changed since the last call.
    pub fn take_changes(&mut self) -> Option<PresenceChanges> {
        if !self.is_dirty() {
            return None;
        }
        let pick = |ids: &BTreeSet<String>, entries: &BTreeMap<String, PresenceEntry>| {
            ids.iter()
                .filter_map(|id| entries.get(id).cloned())
                .collect::<Vec<_>>()
        };
        let changes = PresenceChanges {
            joined: pick(&self.joined, &self.entries),
            updated: pick(&self.updated, &self.entries),
            left: self.left.iter().cloned().collect(),
        };
        self.joined.clear();
        self.updated.clear();
        self.left.clear();
        self.exposed = false;
        Some(changes)
    }

    pub fn entries(&self) -> Vec<PresenceEntry> {
        self.entries.values().cloned().collect()
    }

    /// The entries for a full `presence_state` sent to someone: from now on, leaves
    /// of sessions that joined in this interval are announced too.
    pub fn state_for_peer(&mut self) -> Vec<PresenceEntry> {
        self.exposed = true;
        self.entries()
    }

    pub fn get(&self, session_id: &str) -> Option<&PresenceEntry> {
        self.entries.get(session_id)
    }

    pub fn new_entry(session_id: &str, user_id: &str, name: &str, node_id: &str) -> PresenceEntry {
        PresenceEntry {
            session_id: session_id.to_owned(),
            user_id: user_id.to_owned(),
            name: name.to_owned(),
            color: default_color(user_id),
            cursor: None,
            selection: Vec::new(),
            node_id: node_id.to_owned(),
            updated_at: now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book_with(ids: &[&str]) -> PresenceBook {
        let mut b = PresenceBook::default();
        for id in ids {
            b.join(PresenceBook::new_entry(id, &format!("u-{id}"), "N", "node"));
        }
        b.take_changes();
        b
    }

    #[test]
    fn many_updates_coalesce_to_the_last_value() {
        let mut b = book_with(&["s1"]);
        for i in 0..1000 {
            b.update(
                "s1",
                Some(Cursor {
                    x: i as f64,
                    y: 0.0,
                }),
                None,
                None,
            )
            .unwrap();
        }
        let c = b.take_changes().unwrap();
        assert_eq!(c.updated.len(), 1);
        assert_eq!(c.updated[0].cursor, Some(Cursor { x: 999.0, y: 0.0 }));
        assert!(b.take_changes().is_none());
    }

    #[test]
    fn join_then_leave_in_one_interval_is_silent() {
        let mut b = book_with(&[]);
        b.join(PresenceBook::new_entry("s", "u", "N", "node"));
        b.update("s", Some(Cursor { x: 1.0, y: 1.0 }), None, None)
            .unwrap();
        b.leave("s");
        assert!(b.take_changes().is_none());
    }

    #[test]
    fn a_leave_after_a_full_state_is_announced() {
        let mut b = book_with(&[]);
        b.join(PresenceBook::new_entry("x", "u", "N", "node"));
        // Someone subscribes and is sent a state listing x, then x leaves at once.
        assert_eq!(b.state_for_peer().len(), 1);
        b.leave("x");
        assert_eq!(b.take_changes().unwrap().left, vec!["x".to_string()]);
    }

    #[test]
    fn leaves_and_node_loss_are_reported() {
        let mut b = book_with(&["a", "b"]);
        b.leave("a");
        // A node that died: its sessions go when it is no longer among the live.
        b.retain_nodes("other-node", &std::collections::HashSet::new());
        let c = b.take_changes().unwrap();
        assert_eq!(c.left, vec!["a".to_string(), "b".to_string()]);
        assert!(b.entries().is_empty());
    }

    #[test]
    fn remote_presence_merges_and_node_loss_removes_it() {
        let mut b = book_with(&["local"]);
        let mut remote = PresenceBook::new_entry("r1", "bob", "Bob", "node-b");
        b.apply_remote("node-b", true, vec![remote.clone()], &[]);
        remote.cursor = Some(Cursor { x: 1.0, y: 2.0 });
        b.apply_remote("node-b", false, vec![remote.clone()], &[]);
        let c = b.take_changes().unwrap();
        assert_eq!(
            c.joined.len(),
            1,
            "a join and an update in one interval is one join"
        );
        assert_eq!(c.joined[0].cursor, Some(Cursor { x: 1.0, y: 2.0 }));
        // A node cannot remove another node's sessions.
        b.apply_remote("node-c", false, vec![], &["local".to_string()]);
        assert!(b.get("local").is_some());
        // A full update from node-b without r1 means r1 left.
        b.apply_remote("node-b", true, vec![], &[]);
        assert_eq!(b.take_changes().unwrap().left, vec!["r1".to_string()]);
        b.apply_remote("node-b", false, vec![remote], &[]);
        b.retain_nodes("node", &std::collections::HashSet::new());
        assert!(b.get("r1").is_none());
        assert!(b.get("local").is_some());
    }

    #[test]
    fn rejects_bad_input_and_ignores_unknown_sessions() {
        let mut b = book_with(&["s"]);
        assert_eq!(
            b.update(
                "s",
                Some(Cursor {
                    x: f64::NAN,
                    y: 0.0
                }),
                None,
                None
            ),
            Err(PresenceError::BadCursor)
        );
        assert_eq!(
            b.update("s", None, None, Some("<script>".into())),
            Err(PresenceError::BadColor)
        );
        assert_eq!(
            b.update("s", None, Some(vec!["x".repeat(200)]), None),
            Err(PresenceError::BadSelection)
        );
        assert_eq!(
            b.update("nobody", None, None, Some("#fff".into())),
            Ok(false)
        );
        assert!(b.take_changes().is_none());
        assert_eq!(default_color("alice"), default_color("alice"));
    }
}

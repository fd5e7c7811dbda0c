//! Edit tickets and the bookkeeping that resolves them: which local changes the hub has
//! acknowledged (stored durably) and which it refused.
//!
//! Every acked hash is remembered, whether or not an edit registered it as pending: an
//! ack may concern a change made through [`crate::FlowHandle::with_doc`] (never
//! registered), and a ticket may be awaited long after its ack arrived. Acked and
//! rejected hashes are each kept in a set bounded to the most recent
//! [`MAX_REMEMBERED`] entries, so a long session does not grow without bound; only a
//! ticket older than that many later edits can then no longer resolve (it times out).

use std::collections::{HashMap, HashSet, VecDeque};

use flowhub_protocol::ErrorCode;

/// Names the changes one [`crate::FlowHandle::edit`] made, as hex change hashes. Pass it
/// to [`crate::FlowHandle::wait_acked`] to learn whether the hub stored them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EditTicket {
    pub hashes: Vec<String>,
}

impl EditTicket {
    /// Whether the edit changed nothing (such a ticket is acked at once).
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// How many acked (and, separately, rejected) hashes one flow remembers.
pub(crate) const MAX_REMEMBERED: usize = 65_536;

/// The state of a ticket, from [`AckTracker::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TicketStatus {
    /// Every hash was acked.
    Acked,
    /// Some hash is neither acked nor rejected yet.
    Pending,
    /// Some hash was pending when the hub refused a frame (and was not acked since).
    Rejected { code: ErrorCode, message: String },
}

/// A map that forgets its oldest entries beyond a capacity.
///
/// `order` lists keys by insertion, each tagged with the sequence number it was
/// inserted under; an entry popped from `order` is only evicted if the key was not
/// removed and re-inserted since (its sequence number still matches).
#[derive(Debug)]
struct BoundedSet<V> {
    order: VecDeque<(u64, String)>,
    values: HashMap<String, (u64, V)>,
    next_seq: u64,
    cap: usize,
}

impl<V> BoundedSet<V> {
    fn new(cap: usize) -> Self {
        BoundedSet {
            order: VecDeque::new(),
            values: HashMap::new(),
            next_seq: 0,
            cap,
        }
    }

    fn insert(&mut self, key: String, value: V) {
        if let Some(entry) = self.values.get_mut(&key) {
            entry.1 = value;
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.values.insert(key.clone(), (seq, value));
        self.order.push_back((seq, key));
        while self.values.len() > self.cap {
            let Some((seq, old)) = self.order.pop_front() else {
                break;
            };
            if self.values.get(&old).is_some_and(|(s, _)| *s == seq) {
                self.values.remove(&old);
            }
        }
    }

    fn get(&self, key: &str) -> Option<&V> {
        self.values.get(key).map(|(_, v)| v)
    }

    fn remove(&mut self, key: &str) {
        // The stale entry left in `order` is skipped when popped; compact once stale
        // entries dominate so `order` stays bounded too.
        self.values.remove(key);
        if self.order.len() > 2 * self.cap.max(1) {
            let values = &self.values;
            self.order
                .retain(|(seq, k)| values.get(k).is_some_and(|(s, _)| s == seq));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.values.len()
    }
}

/// Per-flow ack bookkeeping. Pure data: the flow's lock serializes access.
#[derive(Debug)]
pub(crate) struct AckTracker {
    /// Registered by an edit, neither acked nor rejected yet.
    pending: HashSet<String>,
    acked: BoundedSet<()>,
    rejected: BoundedSet<(ErrorCode, String)>,
}

impl Default for AckTracker {
    fn default() -> Self {
        Self::with_capacity(MAX_REMEMBERED)
    }
}

impl AckTracker {
    pub(crate) fn with_capacity(cap: usize) -> Self {
        AckTracker {
            pending: HashSet::new(),
            acked: BoundedSet::new(cap),
            rejected: BoundedSet::new(cap),
        }
    }

    /// Records the hashes of a local edit as awaiting the hub's ack. A hash already
    /// acked stays acked.
    pub(crate) fn register(&mut self, hashes: &[String]) {
        for h in hashes {
            if self.acked.get(h).is_none() {
                self.pending.insert(h.clone());
            }
        }
    }

    /// Records an `ack` from the hub. An ack wins over an earlier rejection: the hub
    /// stored the change after all (it arrived in a later frame, after the reset).
    pub(crate) fn ack<'a>(&mut self, hashes: impl IntoIterator<Item = &'a String>) {
        for h in hashes {
            self.pending.remove(h);
            self.rejected.remove(h);
            self.acked.insert(h.clone(), ());
        }
    }

    /// The hub refused a frame: every pending hash fails with this code. Returns how
    /// many hashes were pending.
    pub(crate) fn reject_pending(&mut self, code: ErrorCode, message: &str) -> usize {
        let n = self.pending.len();
        for h in self.pending.drain() {
            self.rejected.insert(h, (code, message.to_owned()));
        }
        n
    }

    /// Whether the hub acked this hash (within the remembered window).
    pub(crate) fn is_acked(&self, hash: &str) -> bool {
        self.acked.get(hash).is_some()
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The hashes awaiting an ack, sorted (what `subscribe_flow.pending` reports).
    pub(crate) fn pending_hashes(&self) -> Vec<String> {
        let mut hashes: Vec<String> = self.pending.iter().cloned().collect();
        hashes.sort_unstable();
        hashes
    }

    pub(crate) fn status(&self, hashes: &[String]) -> TicketStatus {
        let mut all_acked = true;
        for h in hashes {
            if self.acked.get(h).is_some() {
                continue;
            }
            if let Some((code, message)) = self.rejected.get(h) {
                return TicketStatus::Rejected {
                    code: *code,
                    message: message.clone(),
                };
            }
            all_acked = false;
        }
        if all_acked {
            TicketStatus::Acked
        } else {
            TicketStatus::Pending
        }
    }

    #[cfg(test)]
    fn remembered(&self) -> (usize, usize) {
        (self.acked.len(), self.rejected.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn empty_ticket_is_acked() {
        let t = AckTracker::default();
        assert_eq!(t.status(&[]), TicketStatus::Acked);
        assert!(EditTicket::default().is_empty());
    }

    #[test]
    fn ticket_resolves_when_every_hash_is_acked() {
        let mut t = AckTracker::default();
        let ticket = hs(&["a", "b"]);
        t.register(&ticket);
        assert_eq!(t.pending_len(), 2);
        assert_eq!(t.status(&ticket), TicketStatus::Pending);
        t.ack(&hs(&["a"]));
        assert_eq!(t.status(&ticket), TicketStatus::Pending);
        t.ack(&hs(&["b", "unrelated"]));
        assert_eq!(t.status(&ticket), TicketStatus::Acked);
        assert_eq!(t.pending_len(), 0);
    }

    #[test]
    fn ack_before_register_counts() {
        let mut t = AckTracker::default();
        t.ack(&hs(&["a"]));
        t.register(&hs(&["a"]));
        assert_eq!(t.pending_len(), 0);
        assert_eq!(t.status(&hs(&["a"])), TicketStatus::Acked);
    }

    #[test]
    fn rejection_fails_pending_only() {
        let mut t = AckTracker::default();
        t.register(&hs(&["a", "b"]));
        t.ack(&hs(&["a"]));
        assert_eq!(t.reject_pending(ErrorCode::Forbidden, "viewer"), 1);
        assert_eq!(
            t.status(&hs(&["a", "b"])),
            TicketStatus::Rejected {
                code: ErrorCode::Forbidden,
                message: "viewer".into()
            }
        );
        assert_eq!(t.status(&hs(&["a"])), TicketStatus::Acked);
        // A later edit is unaffected by the earlier rejection.
        t.register(&hs(&["c"]));
        assert_eq!(t.status(&hs(&["c"])), TicketStatus::Pending);
    }

    #[test]
    fn late_ack_wins_over_rejection() {
        let mut t = AckTracker::default();
        t.register(&hs(&["a"]));
        t.reject_pending(ErrorCode::SchemaViolation, "bad");
        t.ack(&hs(&["a"]));
        assert_eq!(t.status(&hs(&["a"])), TicketStatus::Acked);
    }

    #[test]
    fn memory_is_bounded() {
        let mut t = AckTracker::with_capacity(8);
        for i in 0..100 {
            let h = format!("h{i}");
            t.register(std::slice::from_ref(&h));
            if i % 2 == 0 {
                t.ack([&h]);
            } else {
                t.reject_pending(ErrorCode::TooLarge, "big");
            }
        }
        let (acked, rejected) = t.remembered();
        assert!(acked <= 8 && rejected <= 8, "{acked} {rejected}");
        assert!(t.is_acked("h98"));
        assert!(!t.is_acked("h0"));
        // Acks that remove rejections keep `order` bounded too.
        for i in 0..1000 {
            let h = format!("x{i}");
            t.register(std::slice::from_ref(&h));
            t.reject_pending(ErrorCode::TooLarge, "big");
            t.ack([&h]);
        }
        assert!(t.rejected.order.len() <= 2 * 8 + 1);
        assert!(t.acked.order.len() <= 8);
    }

    #[test]
    fn reinserted_keys_are_not_evicted_early() {
        let mut set = BoundedSet::new(3);
        set.insert("a".to_owned(), ());
        set.remove("a");
        set.insert("b".to_owned(), ());
        set.insert("a".to_owned(), ());
        set.insert("c".to_owned(), ());
        // Popping the stale "a" must not evict the live one.
        set.insert("d".to_owned(), ());
        assert!(set.get("a").is_some(), "{set:?}");
        assert!(set.get("b").is_none());
        assert_eq!(set.len(), 3);
    }
}

//! Property: the hub's topology — one hub document, several replicas, one long-lived
//! sync state per connection, messages in flight both ways in FIFO order (as over a
//! WebSocket) — converges for any interleaving of edits and deliveries, and stays
//! quiet once it has.
//!
//! This is the regression test for the sync patches in `vendor/automerge` (see
//! `vendor/README.md`): the early "nothing to say" in `generate_sync_message`, the
//! clock-based `remove_ancestors` and the pruned clock walk. If any of them dropped a
//! message that was needed, the final drain would go quiet with the replicas apart;
//! if one made a peer chatter, the drain would not go quiet at all.

use std::collections::VecDeque;

use flowhub_crdt::{FlowDoc, NewNode, Position, SyncState};
use proptest::prelude::*;

const REPLICAS: usize = 4;

#[derive(Debug, Clone)]
enum Step {
    /// Replica `r` moves (or first adds) its own node.
    Edit { r: usize, x: i16 },
    /// Replica `r` and another replica's node: concurrent writes to one key.
    MoveShared { r: usize, x: i16 },
    /// Deliver the oldest message on connection `r` towards the hub.
    ToHub { r: usize },
    /// Deliver the oldest message on connection `r` from the hub.
    FromHub { r: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..REPLICAS, any::<i16>()).prop_map(|(r, x)| Step::Edit { r, x }),
        (0..REPLICAS, any::<i16>()).prop_map(|(r, x)| Step::MoveShared { r, x }),
        (0..REPLICAS).prop_map(|r| Step::ToHub { r }),
        (0..REPLICAS).prop_map(|r| Step::FromHub { r }),
    ]
}

struct Star {
    hub: FlowDoc,
    hub_states: Vec<SyncState>,
    replicas: Vec<FlowDoc>,
    replica_states: Vec<SyncState>,
    to_hub: Vec<VecDeque<Vec<u8>>>,
    from_hub: Vec<VecDeque<Vec<u8>>>,
    delivered: usize,
}

impl Star {
    fn new() -> Self {
        let mut star = Star {
            hub: FlowDoc::new(),
            hub_states: (0..REPLICAS).map(|_| SyncState::new()).collect(),
            replicas: (0..REPLICAS).map(|_| FlowDoc::new()).collect(),
            replica_states: (0..REPLICAS).map(|_| SyncState::new()).collect(),
            to_hub: vec![VecDeque::new(); REPLICAS],
            from_hub: vec![VecDeque::new(); REPLICAS],
            delivered: 0,
        };
        star.hub
            .add_node(NewNode::new("action", "shared", Position::new(0.0, 0.0)).with_id("shared"))
            .unwrap();
        // Every connection opens with a message each way, as the session does.
        for r in 0..REPLICAS {
            star.replica_out(r);
            star.hub_out(r);
        }
        star
    }

    fn replica_out(&mut self, r: usize) {
        while let Some(m) = self.replicas[r].generate_sync_message(&mut self.replica_states[r]) {
            self.to_hub[r].push_back(m);
        }
    }

    fn hub_out(&mut self, r: usize) {
        while let Some(m) = self.hub.generate_sync_message(&mut self.hub_states[r]) {
            self.from_hub[r].push_back(m);
        }
    }

    fn edit(&mut self, r: usize, id: &str, x: i16) {
        let doc = &mut self.replicas[r];
        let to = Position::new(f64::from(x), r as f64);
        if doc.node(id).is_some() {
            doc.move_node(id, to).unwrap();
        } else if id != "shared" {
            doc.add_node(NewNode::new("action", id, to).with_id(id))
                .unwrap();
        }
        self.replica_out(r);
    }

    fn deliver_to_hub(&mut self, r: usize) -> bool {
        let Some(m) = self.to_hub[r].pop_front() else {
            return false;
        };
        self.delivered += 1;
        let applied = self
            .hub
            .receive_sync_message_validated(&mut self.hub_states[r], &m)
            .expect("typed edits are valid");
        // Like the flow actor: answer the sender, and on news tell everyone.
        if applied.is_empty() {
            self.hub_out(r);
        } else {
            for peer in 0..REPLICAS {
                self.hub_out(peer);
            }
        }
        true
    }

    fn deliver_from_hub(&mut self, r: usize) -> bool {
        let Some(m) = self.from_hub[r].pop_front() else {
            return false;
        };
        self.delivered += 1;
        self.replicas[r]
            .receive_sync_message(&mut self.replica_states[r], &m)
            .unwrap();
        self.replica_out(r);
        true
    }

    fn run(&mut self, step: &Step) {
        match *step {
            Step::Edit { r, x } => self.edit(r, &format!("n{r}"), x),
            Step::MoveShared { r, x } => self.edit(r, "shared", x),
            Step::ToHub { r } => {
                self.deliver_to_hub(r);
            }
            Step::FromHub { r } => {
                self.deliver_from_hub(r);
            }
        }
    }

    /// Deliver everything until no connection has a message in flight; panics if
    /// that takes unreasonably many messages (a chattering peer).
    fn drain(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for r in 0..REPLICAS {
                moved |= self.deliver_to_hub(r);
                moved |= self.deliver_from_hub(r);
            }
            if !moved {
                return;
            }
        }
        panic!("sync did not go quiet");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn star_converges_and_goes_quiet(steps in proptest::collection::vec(step(), 1..120)) {
        let mut star = Star::new();
        for s in &steps {
            star.run(s);
        }
        star.drain();

        let heads = star.hub.heads();
        let json = star.hub.to_json();
        for (r, replica) in star.replicas.iter_mut().enumerate() {
            prop_assert_eq!(replica.heads(), heads.clone(), "replica {} heads", r);
            prop_assert_eq!(replica.to_json(), json.clone(), "replica {} document", r);
        }
        // Quiet means quiet: with everyone current, nobody has anything to say.
        for r in 0..REPLICAS {
            prop_assert!(star.hub.generate_sync_message(&mut star.hub_states[r]).is_none());
            prop_assert!(star.replicas[r].generate_sync_message(&mut star.replica_states[r]).is_none());
        }
    }
}

/// A long single-writer history through the star: every edit reaches every replica,
/// and the number of messages per edit does not grow with the history (the patches
/// make each message cheaper, never fewer than needed).
#[test]
fn long_history_stays_in_step() {
    let mut star = Star::new();
    star.drain();
    let mut per_edit = Vec::new();
    for i in 0..600 {
        let before = star.delivered;
        star.edit(i % REPLICAS, &format!("n{}", i % REPLICAS), i as i16);
        star.drain();
        per_edit.push(star.delivered - before);
    }
    let heads = star.hub.heads();
    for replica in &mut star.replicas {
        assert_eq!(replica.heads(), heads);
    }
    // Eight messages per edit; a bloom-filter false positive now and then costs one
    // more round with the replicas.
    assert!(
        per_edit.iter().all(|&n| (8..=16).contains(&n)),
        "{per_edit:?}"
    );
    let early: usize = per_edit[10..110].iter().sum();
    let late: usize = per_edit[500..600].iter().sum();
    assert!(
        late <= early + 32,
        "messages per edit grew with history: {per_edit:?}"
    );
}

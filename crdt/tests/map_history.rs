//! Property: a map key with a long deleted history (the hub's common case: a node
//! moved thousands of times, every move a fresh `position` map) takes new writes,
//! concurrent writes and deletes exactly as the ops themselves say, for any
//! interleaving of authors and deliveries.
//!
//! This is the regression test for the map-walk patch in `vendor/automerge` (see
//! `vendor/README.md`): applying a change jumps over runs of deleted ops of a key
//! instead of visiting each. If the jump passed a pending predecessor, that op
//! would stay visible; if it passed the place of an incoming concurrent op, the
//! op set would be out of order. The reference is a model built from what each
//! author saw when it wrote (the values an op overwrote are its predecessors), not
//! from Automerge's apply path, and every replica is compared with it after every
//! delivery: each key's visible values with their ids, and its winner. At the end
//! all replicas exchange everything and must save to the same bytes.

use std::collections::{BTreeSet, HashMap, HashSet};

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ChangeHash, ObjType, PatchLog, ReadDoc, Value, ROOT};
use proptest::prelude::*;

const ACTORS: usize = 3;
/// `pos` takes fresh maps (as `FlowDoc` writes a position); the others scalars.
/// Keys on both sides of it make the walk pass other keys' ops.
const KEYS: [&str; 4] = ["a", "label", "pos", "z"];

#[derive(Debug, Clone)]
enum Step {
    /// `n` changes by `actor`, each one write of `key` (a scalar, or for `pos` a
    /// fresh map holding `x`).
    Writes { actor: usize, key: usize, n: usize },
    /// `actor` deletes `key` (when it sees a value there).
    Delete { actor: usize, key: usize },
    /// `to` receives every change of `from` it lacks, in one batch.
    Sync { from: usize, to: usize },
    /// The same, one change at a time.
    SyncEach { from: usize, to: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..ACTORS, 0..KEYS.len(), 1..24usize)
            .prop_map(|(actor, key, n)| Step::Writes { actor, key, n }),
        1 => (0..ACTORS, 0..KEYS.len()).prop_map(|(actor, key)| Step::Delete { actor, key }),
        2 => (0..ACTORS, 0..ACTORS).prop_map(|(from, to)| Step::Sync { from, to }),
        2 => (0..ACTORS, 0..ACTORS).prop_map(|(from, to)| Step::SyncEach { from, to }),
    ]
}

/// One op as its author wrote it.
#[derive(Debug)]
struct WrittenOp {
    change: ChangeHash,
    key: &'static str,
    /// `None` for a delete (it has no value and is never visible).
    id: Option<String>,
    value: String,
    pred: Vec<String>,
}

struct World {
    docs: Vec<Automerge>,
    /// The changes each replica has (its own and those delivered to it).
    known: Vec<HashSet<ChangeHash>>,
    ops: Vec<WrittenOp>,
    /// Each change's causal past: what its author had when it wrote it.
    pasts: HashMap<ChangeHash, HashSet<ChangeHash>>,
    /// Whether to record `pasts` (quadratic in the changes written).
    record_pasts: bool,
    next_value: i64,
}

fn visible(doc: &Automerge, key: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = doc
        .get_all(ROOT, key)
        .unwrap()
        .into_iter()
        .map(|(value, id)| (id.to_string(), describe(&value)))
        .collect();
    out.sort();
    out
}

fn describe(value: &Value<'_>) -> String {
    match value {
        Value::Object(t) => format!("{t:?}"),
        Value::Scalar(s) => s.to_string(),
    }
}

impl World {
    fn new() -> Self {
        let docs = (0..ACTORS)
            .map(|i| Automerge::new().with_actor(ActorId::from(vec![i as u8 + 1; 16])))
            .collect();
        World {
            docs,
            known: vec![HashSet::new(); ACTORS],
            ops: Vec::new(),
            pasts: HashMap::new(),
            record_pasts: true,
            next_value: 0,
        }
    }

    fn write(&mut self, actor: usize, key: &'static str) {
        let doc = &mut self.docs[actor];
        let pred = visible(doc, key).into_iter().map(|(id, _)| id).collect();
        self.next_value += 1;
        let mut tx = doc.transaction();
        let value = if key == "pos" {
            let obj = tx.put_object(ROOT, key, ObjType::Map).unwrap();
            tx.put(&obj, "x", self.next_value).unwrap();
            format!("{:?}", ObjType::Map)
        } else {
            tx.put(ROOT, key, self.next_value).unwrap();
            self.next_value.to_string()
        };
        let change = tx.commit().0.expect("a write makes a change");
        // The author sees only its new op at the key: everything else was a pred.
        let now = visible(doc, key);
        assert_eq!(now.len(), 1, "{key}: {now:?}");
        self.known[actor].insert(change);
        self.record_past(actor, change);
        self.ops.push(WrittenOp {
            change,
            key,
            id: Some(now[0].0.clone()),
            value,
            pred,
        });
    }

    fn delete(&mut self, actor: usize, key: &'static str) {
        let doc = &mut self.docs[actor];
        let pred: Vec<String> = visible(doc, key).into_iter().map(|(id, _)| id).collect();
        if pred.is_empty() {
            return;
        }
        let mut tx = doc.transaction();
        tx.delete(ROOT, key).unwrap();
        let change = tx.commit().0.expect("a delete makes a change");
        assert!(visible(doc, key).is_empty());
        self.known[actor].insert(change);
        self.record_past(actor, change);
        self.ops.push(WrittenOp {
            change,
            key,
            id: None,
            value: String::new(),
            pred,
        });
    }

    fn deliver(&mut self, from: usize, to: usize, one_by_one: bool) {
        if from == to {
            return;
        }
        let changes = self.docs[to].get_changes_added(&self.docs[from]);
        let batches: Vec<Vec<_>> = if one_by_one {
            changes.into_iter().map(|c| vec![c]).collect()
        } else {
            vec![changes]
        };
        for batch in batches {
            // An active patch log: the hub's receive path records patches too.
            let mut log = PatchLog::active();
            self.docs[to]
                .apply_changes_log_patches(batch, &mut log)
                .unwrap();
            let _ = self.docs[to].make_patches(&mut log);
        }
        let from_known = self.known[from].clone();
        self.known[to].extend(from_known);
    }

    fn record_past(&mut self, actor: usize, change: ChangeHash) {
        if self.record_pasts {
            self.pasts.insert(change, self.known[actor].clone());
        }
    }

    fn model(&self, replica: usize, key: &str) -> Vec<(String, String)> {
        self.model_of(&self.known[replica], key)
    }

    /// A key's visible values given a set of changes, from the ops alone: those
    /// of the changes that no op of the changes names as a predecessor.
    fn model_of(&self, known: &HashSet<ChangeHash>, key: &str) -> Vec<(String, String)> {
        let ops: Vec<&WrittenOp> = self
            .ops
            .iter()
            .filter(|op| op.key == key && known.contains(&op.change))
            .collect();
        let overwritten: HashSet<&String> = ops.iter().flat_map(|op| &op.pred).collect();
        let mut out: Vec<(String, String)> = ops
            .iter()
            .filter_map(|op| op.id.as_ref().map(|id| (id, &op.value)))
            .filter(|(id, _)| !overwritten.contains(id))
            .map(|(id, value)| (id.clone(), value.clone()))
            .collect();
        out.sort();
        out
    }

    fn check(&self, replica: usize) {
        for key in KEYS {
            let doc = &self.docs[replica];
            let got = visible(doc, key);
            assert_eq!(
                got,
                self.model(replica, key),
                "replica {replica}, key {key}"
            );
            // The winner is the visible op with the greatest id, which `get`
            // must agree with (a misplaced op would break the order).
            let winner = doc.get(ROOT, key).unwrap().map(|(_, id)| id.to_string());
            let greatest = doc
                .get_all(ROOT, key)
                .unwrap()
                .into_iter()
                .map(|(_, id)| id)
                .max()
                .map(|id| id.to_string());
            assert_eq!(winner, greatest, "replica {replica}, key {key}");
        }
    }

    /// `replica`'s view of the document as it was just after `change`: each
    /// key's values there must be the model's of the change's causal past. A
    /// predecessor that missed its successor shows here even when another op
    /// had deleted it already (it comes back in views between the two).
    fn check_at(&self, replica: usize, change: ChangeHash) {
        let past = self.pasts.get(&change).expect("recorded past");
        for key in KEYS {
            let mut got: Vec<(String, String)> = self.docs[replica]
                .get_all_at(ROOT, key, &[change])
                .unwrap()
                .into_iter()
                .map(|(value, id)| (id.to_string(), describe(&value)))
                .collect();
            got.sort();
            assert_eq!(
                got,
                self.model_of(past, key),
                "replica {replica} at {change}, key {key}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn long_key_histories_apply_as_the_ops_say(steps in prop::collection::vec(step(), 1..28)) {
        let mut world = World::new();
        for step in steps {
            match step {
                Step::Writes { actor, key, n } => {
                    for _ in 0..n {
                        world.write(actor, KEYS[key]);
                    }
                }
                Step::Delete { actor, key } => world.delete(actor, KEYS[key]),
                Step::Sync { from, to } => {
                    world.deliver(from, to, false);
                    world.check(to);
                }
                Step::SyncEach { from, to } => {
                    world.deliver(from, to, true);
                    world.check(to);
                }
            }
        }
        // Everyone gets everything, twice round so each change reaches each replica.
        for _ in 0..2 {
            for from in 0..ACTORS {
                for to in 0..ACTORS {
                    world.deliver(from, to, false);
                }
            }
        }
        // Same changes and the same contents everywhere, and every replica's
        // view of every earlier moment as the model has it.
        let heads: BTreeSet<Vec<ChangeHash>> = world.docs.iter().map(|d| {
            let mut h = d.get_heads();
            h.sort();
            h
        }).collect();
        prop_assert_eq!(heads.len(), 1, "replicas have different heads");
        let contents: Vec<_> = world.docs.iter().map(|d| d.hydrate(None)).collect();
        prop_assert!(contents.iter().all(|c| c == &contents[0]), "replicas differ: {:?}", contents);
        let changes: Vec<ChangeHash> = world.pasts.keys().copied().collect();
        for replica in 0..ACTORS {
            for change in &changes {
                world.check_at(replica, *change);
            }
        }
        for replica in 0..ACTORS {
            world.check(replica);
        }
    }
}

/// The case the patch is for, pinned: one key written 3,000 times, then
/// concurrent writes from two authors that each overwrite the latest value, one
/// of them far behind (its pred is deep in the deleted history).
#[test]
fn a_stale_concurrent_write_lands_in_a_long_history() {
    let mut world = World::new();
    // Only the stale write's past is checked (recording 3,000 would be quadratic).
    world.record_pasts = false;
    for _ in 0..3 {
        world.write(1, "pos");
    }
    world.deliver(1, 0, false);
    world.deliver(1, 2, false);
    // Replica 2 stays behind while replicas 0 and 1 write 3,000 times.
    for i in 0..3000 {
        world.write(i % 2, "pos");
        world.deliver(i % 2, 1 - i % 2, true);
    }
    world.record_pasts = true;
    world.write(2, "pos");
    let stale = world.docs[2].get_heads()[0];
    world.deliver(2, 0, true);
    world.check_at(0, stale);
    world.check(0);
    let both: HashMap<String, String> = world.model(0, "pos").into_iter().collect();
    assert_eq!(both.len(), 2, "the stale write and the latest one conflict");
    world.write(1, "pos");
    world.deliver(1, 0, true);
    world.check(0);
    world.deliver(0, 2, false);
    world.check(2);
    world.check_at(2, stale);
    world.deliver(2, 1, true);
    world.check_at(1, stale);
}

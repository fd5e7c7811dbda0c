//! Property: the patches recorded while applying received changes carry the right
//! paths, for any interleaving of authors and deliveries.
//!
//! This is the regression test for two automerge patches in `vendor/automerge`
//! (see `vendor/README.md`):
//! - `PatchBuilder::get_path` reads an object's key in a map from the op that made
//!   it, and its visibility from that op, instead of scanning every sibling; a
//!   wrong key, or a patch for an object no one can see (a deleted entry, a
//!   losing concurrent value), would land in the wrong place of a mirror;
//! - `BatchApply::apply` looks up the type of the objects a batch touches in the
//!   document's own object index plus a map of the objects the batch makes,
//!   instead of a clone of the whole index.
//!
//! The hub validates exactly what patches say was touched (`crdt::incremental`),
//! so a wrong path would let a schema-breaking edit through. The oracle here is
//! independent of the patch paths: a plain mirror of the receiver's document
//! (hydrated before the delivery) with the patches applied must equal the
//! document hydrated after it. The documents mix maps under maps (the flow's
//! shape: entries holding a `position` map), lists holding maps, deletes and
//! concurrent writes of the same keys; at the end every replica must agree.

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ObjId, ObjType, PatchLog, ReadDoc, Value, ROOT};
use proptest::prelude::*;

const ACTORS: usize = 3;
const ENTRIES: [&str; 5] = ["a", "b", "n50", "x", "zz"];

#[derive(Debug, Clone)]
enum Step {
    /// `actor` puts a fresh map at `entries[entry]`, holding a `position` map.
    NewEntry { actor: usize, entry: usize },
    /// `actor` writes a fresh `position` map into the entry (a move).
    Move { actor: usize, entry: usize, x: i64 },
    /// `actor` writes a scalar key of the entry, or of its position.
    Put {
        actor: usize,
        entry: usize,
        deep: bool,
        value: i64,
    },
    /// `actor` deletes the entry.
    Delete { actor: usize, entry: usize },
    /// `actor` inserts a map holding a scalar into the root list.
    Push { actor: usize, value: i64 },
    /// `actor` writes into the list's map at `index` (mod its length).
    PutInList {
        actor: usize,
        index: usize,
        value: i64,
    },
    /// `to` receives every change of `from` it lacks, in one batch.
    Sync { from: usize, to: usize },
}

fn step() -> impl Strategy<Value = Step> {
    let actor = 0..ACTORS;
    let entry = 0..ENTRIES.len();
    prop_oneof![
        2 => (actor.clone(), entry.clone()).prop_map(|(actor, entry)| Step::NewEntry { actor, entry }),
        3 => (actor.clone(), entry.clone(), -50..50i64)
            .prop_map(|(actor, entry, x)| Step::Move { actor, entry, x }),
        3 => (actor.clone(), entry.clone(), any::<bool>(), -50..50i64)
            .prop_map(|(actor, entry, deep, value)| Step::Put { actor, entry, deep, value }),
        1 => (actor.clone(), entry).prop_map(|(actor, entry)| Step::Delete { actor, entry }),
        1 => (actor.clone(), -50..50i64).prop_map(|(actor, value)| Step::Push { actor, value }),
        1 => (actor.clone(), 0..8usize, -50..50i64)
            .prop_map(|(actor, index, value)| Step::PutInList { actor, index, value }),
        4 => (actor.clone(), actor).prop_map(|(from, to)| Step::Sync { from, to }),
    ]
}

/// The object at `key` of `obj`, if it holds one (in a document or a transaction).
fn child(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Option<ObjId> {
    match doc.get(obj, key).unwrap() {
        Some((Value::Object(_), id)) => Some(id),
        _ => None,
    }
}

struct World {
    docs: Vec<Automerge>,
}

impl World {
    fn new() -> Self {
        let mut base = Automerge::new();
        base.transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put_object(ROOT, "nodes", ObjType::Map)?;
            tx.put_object(ROOT, "items", ObjType::List)?;
            Ok(())
        })
        .unwrap();
        let docs = (0..ACTORS)
            .map(|i| base.fork().with_actor(ActorId::from(vec![i as u8 + 1; 16])))
            .collect();
        World { docs }
    }

    fn edit(&mut self, actor: usize, f: impl FnOnce(&mut automerge::transaction::Transaction<'_>)) {
        let mut tx = self.docs[actor].transaction();
        f(&mut tx);
        tx.commit();
    }

    fn apply(&mut self, step: &Step) {
        match *step {
            Step::NewEntry { actor, entry } => self.edit(actor, |tx| {
                let nodes = child(tx, &ROOT, "nodes").unwrap();
                let e = tx.put_object(&nodes, ENTRIES[entry], ObjType::Map).unwrap();
                tx.put(&e, "kind", "action").unwrap();
                let p = tx.put_object(&e, "position", ObjType::Map).unwrap();
                tx.put(&p, "x", 0).unwrap();
            }),
            Step::Move { actor, entry, x } => self.edit(actor, |tx| {
                let nodes = child(tx, &ROOT, "nodes").unwrap();
                if let Some(e) = child(tx, &nodes, ENTRIES[entry]) {
                    let p = tx.put_object(&e, "position", ObjType::Map).unwrap();
                    tx.put(&p, "x", x).unwrap();
                    tx.put(&p, "y", -x).unwrap();
                }
            }),
            Step::Put {
                actor,
                entry,
                deep,
                value,
            } => self.edit(actor, |tx| {
                let nodes = child(tx, &ROOT, "nodes").unwrap();
                if let Some(e) = child(tx, &nodes, ENTRIES[entry]) {
                    match (deep, child(tx, &e, "position")) {
                        (true, Some(p)) => tx.put(&p, "x", value).unwrap(),
                        _ => tx.put(&e, "label", value).unwrap(),
                    }
                }
            }),
            Step::Delete { actor, entry } => self.edit(actor, |tx| {
                let nodes = child(tx, &ROOT, "nodes").unwrap();
                if tx.get(&nodes, ENTRIES[entry]).unwrap().is_some() {
                    tx.delete(&nodes, ENTRIES[entry]).unwrap();
                }
            }),
            Step::Push { actor, value } => self.edit(actor, |tx| {
                let items = child(tx, &ROOT, "items").unwrap();
                let at = tx.length(&items) / 2;
                let m = tx.insert_object(&items, at, ObjType::Map).unwrap();
                tx.put(&m, "v", value).unwrap();
            }),
            Step::PutInList {
                actor,
                index,
                value,
            } => self.edit(actor, |tx| {
                let items = child(tx, &ROOT, "items").unwrap();
                let len = tx.length(&items);
                if len > 0 {
                    if let Some((Value::Object(_), m)) = tx.get(&items, index % len).unwrap() {
                        tx.put(&m, "v", value).unwrap();
                    }
                }
            }),
            Step::Sync { from, to } => {
                if from != to {
                    self.deliver(from, to);
                }
            }
        }
    }

    /// Delivers to `to` what it lacks of `from`, recording patches, and checks them
    /// against the mirror.
    fn deliver(&mut self, from: usize, to: usize) {
        let have = self.docs[to].get_heads();
        let changes = self.docs[from].get_changes(&have);
        if changes.is_empty() {
            return;
        }
        let mut mirror = self.docs[to].hydrate(None);
        let mut log = PatchLog::active();
        self.docs[to]
            .apply_changes_log_patches(changes, &mut log)
            .unwrap();
        let patches = self.docs[to].make_patches(&mut log);
        for patch in &patches {
            // Every patch names a visible object, by its visible path.
            let path = self.docs[to]
                .parents(&patch.obj)
                .unwrap()
                .visible_path()
                .expect("a patch for an object no one can see");
            assert_eq!(patch.path, path, "patch path of {:?}", patch.action);
        }
        mirror
            .apply_patches(self.docs[to].text_encoding(), patches)
            .unwrap();
        assert_eq!(mirror, self.docs[to].hydrate(None), "mirror after patches");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn received_patches_land_where_the_document_says(steps in prop::collection::vec(step(), 1..40)) {
        let mut world = World::new();
        for step in &steps {
            world.apply(step);
        }
        for from in 0..ACTORS {
            for to in 0..ACTORS {
                if from != to {
                    world.deliver(from, to);
                }
            }
        }
        let first = world.docs[0].hydrate(None);
        for doc in &world.docs[1..] {
            prop_assert_eq!(&doc.hydrate(None), &first);
        }
    }
}

/// A move into one entry of a wide map: the patch path names that entry (the case
/// the `get_path` patch makes cheap), and a write into an entry a concurrent
/// delete removed yields no patch at all.
#[test]
fn a_move_in_a_wide_map_and_a_write_into_a_deleted_entry() {
    let mut world = World::new();
    world.edit(0, |tx| {
        let nodes = child(tx, &ROOT, "nodes").unwrap();
        for i in 0..200 {
            let e = tx
                .put_object(&nodes, format!("n{i}"), ObjType::Map)
                .unwrap();
            tx.put_object(&e, "position", ObjType::Map).unwrap();
        }
    });
    world.deliver(0, 1);
    world.deliver(0, 2);
    // Actor 1 moves n150; actor 2 deletes n150 and moves n7.
    world.edit(1, |tx| {
        let nodes = child(tx, &ROOT, "nodes").unwrap();
        let e = child(tx, &nodes, "n150").unwrap();
        let p = tx.put_object(&e, "position", ObjType::Map).unwrap();
        tx.put(&p, "x", 5).unwrap();
    });
    world.edit(2, |tx| {
        let nodes = child(tx, &ROOT, "nodes").unwrap();
        tx.delete(&nodes, "n150").unwrap();
        let e = child(tx, &nodes, "n7").unwrap();
        tx.put(&e, "label", "seven").unwrap();
    });
    // Actor 0 gets 1's move first: one patch set inside nodes/n150.
    let mut log = PatchLog::active();
    let changes = world.docs[1].get_changes(&world.docs[0].get_heads());
    world.docs[0]
        .apply_changes_log_patches(changes, &mut log)
        .unwrap();
    let patches = world.docs[0].make_patches(&mut log);
    assert!(!patches.is_empty());
    for patch in &patches {
        let props: Vec<String> = patch.path.iter().map(|(_, p)| p.to_string()).collect();
        assert_eq!(&props[..2], ["nodes", "n150"], "{:?}", patch.action);
    }
    // Actor 2 has deleted n150: the move lands in an object no one can see there.
    world.deliver(1, 2);
    let nodes = child(&world.docs[2], &ROOT, "nodes").unwrap();
    assert!(world.docs[2].get(&nodes, "n150").unwrap().is_none());
    world.deliver(2, 0);
    world.deliver(0, 1);
    world.deliver(2, 1);
    assert_eq!(world.docs[0].hydrate(None), world.docs[1].hydrate(None));
    assert_eq!(world.docs[1].hydrate(None), world.docs[2].hydrate(None));
}

//! The deterministic genesis change every FlowDoc starts from.
//!
//! Automerge resolves concurrent `put_object(ROOT, "nodes", Map)` calls from two
//! replicas as a *conflict*: one map wins and everything written into the other
//! one silently disappears from view. If every replica created its own root
//! maps, two documents created independently (a client working offline before
//! its first sync, a hub creating a flow the client also created) would lose one
//! side's nodes on merge.
//!
//! So the root maps are never created by a "real" actor. `genesis()` builds them
//! in one change with a fixed actor id, a fixed timestamp (0) and no message, so
//! the change is byte-identical — and has the same hash — on every replica that
//! ever calls it. Automerge deduplicates changes by hash, so all FlowDocs share
//! one `nodes` map and one `edges` map object, and later edits from any actor
//! land in the same objects. Each document then switches to a random actor for
//! its own edits, because two replicas writing under the same actor id would
//! produce clashing `(actor, seq)` pairs.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ChangeHash, ObjType, ROOT};

/// The fixed actor id of the genesis change (16 bytes, like a UUID actor).
pub const GENESIS_ACTOR: &[u8; 16] = b"flowhub-genesis\0";

/// Build a document containing only the genesis change, then give it a fresh
/// random actor. Returns the document and the genesis hash.
pub(crate) fn genesis() -> (AutoCommit, Option<ChangeHash>) {
    let mut doc = AutoCommit::new().with_actor(ActorId::from(GENESIS_ACTOR));
    // The op order below is part of the genesis hash: never reorder or extend it,
    // or new documents will stop merging with existing ones.
    let built = (|| -> Result<(), automerge::AutomergeError> {
        doc.put(ROOT, "name", "")?;
        doc.put_object(ROOT, "nodes", ObjType::Map)?;
        doc.put_object(ROOT, "edges", ObjType::Map)?;
        Ok(())
    })();
    // Writing fixed keys into a fresh document's root cannot fail; if it ever
    // did we still return a usable (empty) document rather than panic.
    let hash = match built {
        Ok(()) => doc.commit_with(CommitOptions::default().with_time(0)),
        Err(_) => {
            doc.rollback();
            None
        }
    };
    doc.set_actor(ActorId::random());
    (doc, hash)
}

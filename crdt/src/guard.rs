//! Containing Automerge panics on hostile input.
//!
//! automerge 0.12 validates the *encoding* of a change but not its *meaning*: a
//! well-formed change whose ops target an object or actor the document has
//! never seen makes `apply_changes` panic (`Obj .. Missing from Index`, an
//! `unwrap` on an actor lookup) part-way through mutating the document. Random
//! corruption cannot get that far (chunks are checksummed and hashed), but a
//! peer can craft such a change on purpose, and the hub must not go down or keep
//! a half-mutated document because of it.
//!
//! Checking op semantics ourselves would mean re-implementing Automerge's op
//! model, so instead every path that applies foreign changes to an existing
//! document runs under [`FlowDoc::guarded`]: snapshot the document (a cheap
//! columnar clone), run the step under `catch_unwind`, and swap the snapshot back
//! if the step fails or panics. This relies on unwinding, i.e. the default
//! `panic = "unwind"`; the panic message still reaches the panic hook (stderr).

use std::panic::{catch_unwind, AssertUnwindSafe};

use automerge::{AutoCommit, SaveOptions};

use crate::error::{CrdtError, Result};
use crate::flow_doc::FlowDoc;

/// Message used when Automerge panicked on the input.
pub(crate) const PANIC_MESSAGE: &str =
    "automerge could not apply the changes (semantically invalid change)";

/// Run `f`, turning a panic into `on_panic()`.
pub(crate) fn no_panic<T>(
    f: impl FnOnce() -> Result<T>,
    on_panic: impl FnOnce() -> CrdtError,
) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err(on_panic()))
}

impl FlowDoc {
    /// Run `f` against this document; if it returns an error or panics, restore
    /// the document to its state before the call (ops, actor, cursors) and
    /// return the error (`on_panic()` for a panic). Changes that were queued for
    /// missing dependencies are dropped on failure (see
    /// [`FlowDoc::drop_queued_changes`]).
    /// [`FlowDoc::guarded`] for validated receives: with
    /// [`FlowDoc::validate_in_place`] on, no snapshot is taken; on an error the
    /// document is rebuilt at `heads_before`, and on a panic it is marked poisoned.
    pub(crate) fn guarded_receive<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T>,
        on_panic: impl FnOnce() -> CrdtError,
    ) -> Result<T> {
        if !self.in_place {
            return self.guarded(f, on_panic);
        }
        let before = self.doc.get_heads();
        match catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                self.rebuild_at(&before);
                Err(e)
            }
            Err(_) => {
                self.poisoned = true;
                Err(on_panic())
            }
        }
    }

    /// Rebuilds the document holding exactly the changes up to `heads` (and no
    /// queued ones), keeping the actor. Poisons it should that fail.
    fn rebuild_at(&mut self, heads: &[automerge::ChangeHash]) {
        let actor = self.doc.get_actor().clone();
        let doc = &mut self.doc;
        let rebuilt = no_panic(
            || doc.fork_at(heads).map_err(CrdtError::from),
            || CrdtError::InvalidDocument(PANIC_MESSAGE.into()),
        );
        match rebuilt {
            Ok(doc) => {
                self.doc = doc.with_actor(actor);
                self.cache = None;
            }
            Err(_) => self.poisoned = true,
        }
    }

    pub(crate) fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T>,
        on_panic: impl FnOnce() -> CrdtError,
    ) -> Result<T> {
        let backup = self.doc.clone();
        let outcome = no_panic(|| f(self), on_panic);
        if outcome.is_err() {
            self.doc = backup;
            if !self.missing_deps().is_empty() {
                self.drop_queued_changes();
            }
        }
        outcome
    }

    /// Forget changes queued for missing dependencies.
    ///
    /// Needed after a failed apply: the failure may have come from a change
    /// that sat in the queue (e.g. a hostile change sent ahead of its
    /// dependency) and was released by this call's changes. Restoring the
    /// snapshot alone would keep that change queued, and every later message
    /// supplying the dependency — even an honest peer's — would release and
    /// fail it again. Dropping the queue is safe: the sync protocol re-requests
    /// whatever an honest peer still has (our `need` list is computed from the
    /// peer's heads). Costs a save and load, on this failure path only.
    pub(crate) fn drop_queued_changes(&mut self) {
        let actor = self.doc.get_actor().clone();
        let bytes = self.doc.save_with_options(SaveOptions {
            deflate: false,
            retain_orphans: false,
        });
        let reloaded = no_panic(
            || AutoCommit::load(&bytes).map_err(CrdtError::from),
            || CrdtError::InvalidDocument(PANIC_MESSAGE.into()),
        );
        // Reloading our own freshly saved document cannot realistically fail;
        // if it did, keeping the queue is the lesser evil.
        if let Ok(doc) = reloaded {
            self.doc = doc.with_actor(actor);
        }
    }
}

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
    /// the document to exactly its state before the call (ops, queued changes,
    /// actor, cursors) and return the error (`on_panic()` for a panic).
    pub(crate) fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T>,
        on_panic: impl FnOnce() -> CrdtError,
    ) -> Result<T> {
        let backup = self.doc.clone();
        let outcome = no_panic(|| f(self), on_panic);
        if outcome.is_err() {
            self.doc = backup;
        }
        outcome
    }
}

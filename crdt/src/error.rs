//! Error types shared by every FlowDoc operation.

use crate::schema::SchemaError;

/// Everything that can go wrong when reading, editing or syncing a [`crate::FlowDoc`].
///
/// Input-driven failures (undecodable bytes, schema violations, unknown ids) are
/// reported here rather than panicking, because the hub feeds untrusted peer data
/// straight into these APIs.
#[derive(thiserror::Error, Debug)]
pub enum CrdtError {
    /// The bytes were not a decodable Automerge sync message (or one of its change
    /// chunks was corrupt). The document was not touched.
    #[error("invalid sync message: {0}")]
    InvalidSyncMessage(String),
    /// The bytes were not a loadable FlowDoc (corrupt, empty, or not built on the
    /// FlowDoc genesis change).
    #[error("invalid document: {0}")]
    InvalidDocument(String),
    /// A raw change passed to `apply_changes` could not be decoded. Nothing was applied.
    #[error("invalid change: {0}")]
    InvalidChange(String),
    /// The document (or a proposed edit) breaks the flow schema.
    #[error("schema violation: {0}")]
    Schema(#[from] SchemaError),
    /// A typed edit named a node that does not exist.
    #[error("node not found: {0}")]
    NodeNotFound(String),
    /// A typed edit named an edge that does not exist.
    #[error("edge not found: {0}")]
    EdgeNotFound(String),
    /// A typed edit tried to create a node or edge with an id already in use.
    #[error("duplicate id: {0}")]
    DuplicateId(String),
    /// A typed edit that is well-formed but cannot be carried out.
    #[error("invalid edit: {0}")]
    InvalidEdit(String),
    /// A list of heads was malformed: not 64 hex digits, or empty.
    #[error("invalid heads: {0}")]
    InvalidHeads(String),
    /// Heads this document does not have (or has only queued, waiting for
    /// missing dependencies), listed as hex.
    #[error("unknown heads: {}", .0.join(", "))]
    UnknownHeads(Vec<String>),
    /// An error reported by Automerge itself.
    #[error(transparent)]
    Automerge(#[from] automerge::AutomergeError),
}

/// Crate-wide result alias.
pub type Result<T, E = CrdtError> = std::result::Result<T, E>;

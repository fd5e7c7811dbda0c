//! Errors of the actor layer.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ActorsError {
    #[error("could not start the actor: {0}")]
    Spawn(String),
    #[error("the actor stopped before answering")]
    ActorGone,
    #[error("the store append ended without a result")]
    AppendLost,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored flow cannot be loaded: {0}")]
    Load(#[from] flowhub_crdt::CrdtError),
}

pub type Result<T, E = ActorsError> = std::result::Result<T, E>;

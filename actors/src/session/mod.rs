//! One [`SessionActor`] per WebSocket connection, and its bounded [`outbound`] queue.

mod actor;
mod runs;
pub mod outbound;

pub use actor::{SessionActor, SessionArgs, SessionLimits, SessionMsg, SessionState};
pub use outbound::{Delivery, OutFrame, Outbound, OutboundRx};

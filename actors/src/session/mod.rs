//! One [`SessionActor`] per WebSocket connection, and its bounded [`outbound`] queue.

mod actor;
pub mod outbound;
mod runs;

pub use actor::{session_span, SessionActor, SessionArgs, SessionLimits, SessionMsg, SessionState};
pub use outbound::{Delivery, OutFrame, Outbound, OutboundRx};

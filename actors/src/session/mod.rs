//! One [`SessionActor`] per WebSocket connection. Its bounded queue is
//! [`crate::outbound`], re-exported here for the transports.

mod actor;
mod runs;

pub use crate::outbound;

pub use crate::outbound::{Delivery, OutFrame, Outbound, OutboundRx};
pub use actor::{session_span, SessionActor, SessionArgs, SessionLimits, SessionMsg, SessionState};

//! One [`SessionActor`] per WebSocket connection, its bounded [`outbound`] queue, and
//! the [`SessionLimiter`] (rate limit, bad-frame count) every transport applies.

mod actor;
mod limiter;
pub mod outbound;
mod runs;

pub use actor::{session_span, SessionActor, SessionArgs, SessionLimits, SessionMsg, SessionState};
pub use limiter::SessionLimiter;
pub use outbound::{Delivery, OutFrame, Outbound, OutboundRx};

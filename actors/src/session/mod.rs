//! One [`SessionActor`] per WebSocket connection, and the [`SessionLimiter`] (rate
//! limit, bad-frame count) every transport applies. Its bounded queue is
//! [`crate::outbound`], whose types are re-exported here for the transports.

mod actor;
mod limiter;
mod routes;
mod runs;

pub use crate::outbound::{Delivery, NativeFrame, OutFrame, Outbound, OutboundRx, SharedMessage};
pub use actor::{
    session_span, Inbound, SessionActor, SessionArgs, SessionMsg, SessionState, TransportProfile,
};
pub use limiter::{SessionLimiter, SessionLimits};
pub use routes::{Forwarded, SyncRoutes};

//! The session core: one [`SessionActor`] per connection, whatever its transport.
//!
//! # Layout
//! - `actor`: [`SessionActor`], its state and messages, and the [`TransportProfile`]
//!   that says what differs per transport.
//! - `inbound`: [`Inbound`], one client frame as a transport decoded it.
//! - `limiter`: [`SessionLimiter`] (rate limit, bad-frame count) and [`SessionLimits`].
//! - `runs`: run subscriptions (`subscribe_run`, `subscribe_flow_runs`).
//!
//! Its bounded queue is [`crate::outbound`], whose types are re-exported here for the
//! transports.

mod actor;
mod inbound;
mod limiter;
mod runs;

pub use crate::outbound::{
    Delivery, NativeFrame, OutFrame, Outbound, OutboundRx, Outgoing, SharedMessage,
};
pub use actor::{
    session_span, SessionActor, SessionArgs, SessionMsg, SessionState, TransportProfile,
};
pub use inbound::Inbound;
pub use limiter::{SessionLimiter, SessionLimits};

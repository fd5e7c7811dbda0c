//! The input limits of one session, whatever its transport: a rate limit on control
//! messages and a count of refused frames that ends an abusive session.
//!
//! The session actor holds one whatever the transport, so a flood is answered with
//! the same error codes and closed with the same code on every transport.

use std::num::NonZeroU32;

use flowhub_protocol::{close, ErrorCode};
use tracing::info;

use crate::outbound::Outbound;

#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Frames above this get `too_large` (the socket's hard limit, above which the
    /// connection is closed, is set higher by the hub).
    pub max_frame_bytes: usize,
    pub max_subscriptions: usize,
    /// Refused frames tolerated before the session is closed for abuse.
    pub max_bad_frames: u32,
    /// Sustained control messages per second (presence is exempt: it is coalesced;
    /// sync frames are slowed down rather than refused, so no edit is dropped).
    pub messages_per_second: u32,
    /// Short bursts above the rate that are still accepted.
    pub burst: u32,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_frame_bytes: 1 << 20,
            max_subscriptions: 64,
            max_bad_frames: 100,
            messages_per_second: 100,
            burst: 200,
        }
    }
}

/// Rate limiter and bad-frame count of one session (see the module doc).
pub struct SessionLimiter {
    limiter: governor::DefaultDirectRateLimiter,
    messages_per_second: u32,
    max_bad_frames: u32,
    bad_frames: u32,
}

impl SessionLimiter {
    pub fn new(limits: &SessionLimits) -> SessionLimiter {
        let rate = NonZeroU32::new(limits.messages_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        SessionLimiter {
            limiter: governor::RateLimiter::direct(
                governor::Quota::per_second(rate).allow_burst(burst),
            ),
            messages_per_second: limits.messages_per_second,
            max_bad_frames: limits.max_bad_frames,
            bad_frames: 0,
        }
    }

    /// Admits one control message, or says why not (the message of the
    /// [`ErrorCode::RateLimited`] error the client gets).
    pub fn check(&self) -> Result<(), String> {
        self.limiter.check().map_err(|_| {
            let rate = self.messages_per_second;
            format!("more than {rate} messages per second")
        })
    }

    /// Waits until one sync message may pass: sync is slowed down, never refused (a
    /// dropped sync message would stall the peer's sync protocol, and waiting here
    /// backs up the socket reader).
    pub async fn until_ready(&self) {
        self.limiter.until_ready().await;
    }

    /// Counts a refused frame with error `code`. The client's own bad input counts
    /// toward the abuse limit; `internal` (the hub's failure, retryable) never does.
    /// Past the limit the session is closed with [`close::POLICY`]; returns whether
    /// it was.
    pub fn count_refusal(&mut self, code: ErrorCode, out: &Outbound) -> bool {
        if code == ErrorCode::Internal {
            return false;
        }
        self.bad_frames += 1;
        if self.bad_frames > self.max_bad_frames {
            info!(bad_frames = self.bad_frames, "closing abusive session");
            out.close(close::POLICY, "too many invalid frames");
            return true;
        }
        false
    }
}

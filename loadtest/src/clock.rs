//! One clock for the whole run, and the send-time tables that let any task in the
//! process compute "sent → received" without putting timestamps on the wire.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Microseconds since the start of the run, monotonic and shared by every task.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            epoch: Instant::now(),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.at_us(Instant::now())
    }

    pub fn at_us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }
}

/// When each message of one sender was sent, by sequence number (1-based). Written
/// by the sender, read by every observer; fixed capacity, so a run is bounded.
#[derive(Debug)]
pub struct SendLog {
    /// Microseconds + 1 (0 means "not sent").
    slots: Box<[AtomicU64]>,
}

impl SendLog {
    /// Room for sequence numbers `1..=capacity`.
    pub fn with_capacity(capacity: usize) -> Self {
        SendLog {
            slots: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Records the send time of `seq`; `false` when `seq` is beyond the capacity.
    pub fn record(&self, seq: u64, us: u64) -> bool {
        match seq.checked_sub(1).and_then(|i| self.slots.get(i as usize)) {
            Some(slot) => {
                slot.store(us + 1, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// The send time of `seq`, if it was sent.
    pub fn get(&self, seq: u64) -> Option<u64> {
        let slot = self.slots.get(seq.checked_sub(1)? as usize)?;
        match slot.load(Ordering::Acquire) {
            0 => None,
            v => Some(v - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_log_is_bounded_and_one_based() {
        let log = SendLog::with_capacity(3);
        assert!(!log.record(0, 5));
        assert!(log.record(1, 0));
        assert!(log.record(3, 7));
        assert!(!log.record(4, 9));
        assert_eq!(log.get(1), Some(0));
        assert_eq!(log.get(2), None);
        assert_eq!(log.get(3), Some(7));
        assert_eq!(log.get(0), None);
        assert_eq!(log.get(99), None);
    }
}

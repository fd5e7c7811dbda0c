//! The scenarios and what they share: [`Ctx`] (targets, tokens, clock, progress,
//! phase lengths) and [`Outcome`] (report sections and checks).

pub mod cluster;
pub mod convergence;
pub mod edit;
pub mod idle;
pub mod mixed;
pub mod presence;
pub mod watch;
pub mod watcher;

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use crate::cli::Common;
use crate::clock::Clock;
use crate::error::Result;
use crate::progress::Progress;
use crate::report::{Check, Section};
use crate::stats::Timeline;
use crate::targets::Targets;
use crate::tokens::Tokens;

/// What every scenario of one run shares.
pub struct Ctx {
    pub targets: Targets,
    pub tokens: Tokens,
    pub clock: Clock,
    pub progress: Progress,
    /// A short random id prefixing flow, run and user ids, so runs against the same
    /// hub (and database) never share state.
    pub run_id: String,
    pub duration: Duration,
    pub ramp_up: Duration,
    pub settle_timeout: Duration,
    pub source_addrs: usize,
    /// Run the baseline server in this process (else in a child process).
    pub baseline_in_process: bool,
}

impl Ctx {
    pub fn from_common(common: &Common) -> Result<Self> {
        Ok(Ctx {
            targets: Targets::parse(&common.targets)?,
            tokens: Tokens::from_common(common)?,
            clock: Clock::new(),
            progress: Progress::new(!common.no_progress),
            run_id: format!("{:08x}", rand::random::<u32>()),
            duration: common.duration,
            ramp_up: common.ramp_up,
            settle_timeout: common.settle_timeout,
            source_addrs: common.source_addrs,
            baseline_in_process: common.baseline_in_process,
        })
    }

    /// Per-second buckets covering the whole run (with room for slow connects).
    pub fn timeline(&self) -> Timeline {
        let secs = self.ramp_up + self.duration + self.settle_timeout;
        Timeline::new(secs.as_secs() as usize + 180)
    }

    /// When client `i` of `n` connects, relative to the start of the ramp.
    pub fn ramp_slot(&self, i: usize, n: usize) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        self.ramp_up.mul_f64(i as f64 / n as f64)
    }

    /// An id unique to this run: `lt{run_id}-{suffix}`.
    pub fn id(&self, suffix: &str) -> String {
        format!("lt{}-{suffix}", self.run_id)
    }
}

/// What a scenario reports.
#[derive(Debug, Default)]
pub struct Outcome {
    pub sections: Vec<Section>,
    pub checks: Vec<Check>,
}

impl Outcome {
    pub fn merge(&mut self, other: Outcome) {
        self.sections.extend(other.sections);
        self.checks.extend(other.checks);
    }
}

/// Counts failures and keeps the first message (for reports).
#[derive(Debug, Default)]
pub struct Failures {
    inner: Mutex<(u64, Option<String>)>,
}

impl Failures {
    pub fn add(&self, msg: impl Into<String>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        if g.1.is_none() {
            g.1 = Some(msg.into());
        }
    }

    pub fn count(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// `"none"` or `"N (first: …)"`.
    pub fn describe(&self) -> String {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match &g.1 {
            None => "none".into(),
            Some(first) => format!("{} (first: {first})", g.0),
        }
    }
}

/// Polls `fut` once, so that it registers its interest (e.g. subscribes to a watch
/// channel) before the caller looks at the state it waits on. Returns whether it
/// is already complete.
pub async fn poll_once<F: Future>(mut fut: Pin<&mut F>) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_ready())).await
}

/// Rounds to 0.1.
pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

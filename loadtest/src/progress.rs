//! Progress bars (indicatif) on stderr: one bar per workload, walking through its
//! phases (connect, load, settle). Hidden with `--no-progress` or when stderr is not
//! a terminal.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bars of one run.
#[derive(Clone)]
pub struct Progress {
    multi: MultiProgress,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        let target = if enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            multi: MultiProgress::with_draw_target(target),
        }
    }

    pub fn hidden() -> Self {
        Self::new(false)
    }

    /// A bar for one workload.
    pub fn bar(&self, workload: &str) -> Bar {
        let pb = self.multi.add(ProgressBar::new(1));
        let style = ProgressStyle::with_template(
            "{prefix:<18} [{elapsed_precise}] {bar:30.cyan/blue} {pos:>6}/{len:<6} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        pb.set_style(style);
        Bar {
            pb,
            workload: workload.to_owned(),
        }
    }
}

/// One workload's bar.
pub struct Bar {
    pb: ProgressBar,
    workload: String,
}

impl Bar {
    /// Starts a phase counting up to `len` (clients, seconds, …).
    pub fn phase(&self, name: &str, len: u64) {
        self.pb.set_prefix(format!("{} {name}", self.workload));
        self.pb.set_length(len.max(1));
        self.pb.set_position(0);
    }

    pub fn set(&self, pos: u64) {
        self.pb.set_position(pos);
    }

    pub fn message(&self, msg: String) {
        self.pb.set_message(msg);
    }

    pub fn finish(&self, msg: String) {
        self.pb.finish_with_message(msg);
    }
}

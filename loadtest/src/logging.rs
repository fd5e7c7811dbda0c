//! A minimal `tracing` subscriber printing events to stderr.
//!
//! The crate cannot depend on `tracing-subscriber` yet; this covers what the
//! harness needs: a level for its own events (`-v`, `-vv`), warnings and errors
//! from everything else (an in-process hub in tests is chatty at `info`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

struct StderrLogger {
    own: Level,
    others: Level,
    start: Instant,
    next_span: AtomicU64,
}

/// Installs the logger: `verbose` 0 = info, 1 = debug, 2+ = trace for this crate.
/// Does nothing if a subscriber is already installed.
pub fn init(verbose: u8) {
    let own = match verbose {
        0 => Level::INFO,
        1 => Level::DEBUG,
        _ => Level::TRACE,
    };
    let others = if verbose >= 2 {
        Level::INFO
    } else {
        Level::WARN
    };
    let _ = tracing::subscriber::set_global_default(StderrLogger {
        own,
        others,
        start: Instant::now(),
        next_span: AtomicU64::new(1),
    });
}

struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }
}

impl Subscriber for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let max = if metadata.target().starts_with("flowhub_loadtest") {
            self.own
        } else {
            self.others
        };
        metadata.level() <= &max
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::from_level(
            self.own.max(self.others),
        ))
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed).max(1))
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields {
            message: String::new(),
            rest: String::new(),
        };
        event.record(&mut fields);
        let meta = event.metadata();
        let line = format!(
            "{:>8.3}s {:>5} {}: {}{}\n",
            self.start.elapsed().as_secs_f64(),
            meta.level(),
            meta.target(),
            fields.message,
            fields.rest
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

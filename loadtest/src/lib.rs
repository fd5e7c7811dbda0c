//! flowhub-loadtest: drives editors, cursor storms, idle sessions and run watchers
//! against one or more flowhub nodes, and reports latency histograms, throughput,
//! memory and a convergence verdict (terminal table, JSON, self-contained HTML).
//!
//! Every scenario is bounded in clients, time and messages, stops by itself, and
//! only talks to the targets it is given. Its own correctness is checked at the end
//! of every run ("counts add up", convergence), and failed checks make the run
//! fail. See `docs/PERFORMANCE.md` for how to run it and for results.
//!
//! # Layout
//! - [`cli`]: the command line (one subcommand per scenario, shared [`cli::Common`]).
//! - [`runner`]: runs a command, assembles the [`Report`], prints and writes it.
//! - [`scenario`]: the scenarios and their shared context:
//!   [`edit`](scenario::edit) (with the [`convergence`](scenario::convergence)
//!   check), [`presence`](scenario::presence), [`idle`](scenario::idle),
//!   [`watch`](scenario::watch) (one [`watcher`](scenario::watcher) per session),
//!   [`mixed`](scenario::mixed) and [`cluster`](scenario::cluster) (a cluster's cost
//!   to Redis and PostgreSQL, idle and under edits).
//! - [`baseline`]: a bare tokio-tungstenite broadcast server, the fan-out yardstick.
//! - [`proxy`]: a WebSocket proxy that can drop one client's edits (chaos testing).
//! - [`report`]: the report model, its terminal table and JSON; [`html`]: the HTML
//!   report with inline SVG plots.
//! - [`stats`]: HDR latency histograms and per-second timelines; [`clock`]: the run's
//!   clock and in-process send-time tables.
//! - [`net`]: raw WebSocket sessions (source-address binding, small buffers);
//!   [`targets`]: hub URLs; [`tokens`]: minting HS256 tokens; [`metrics`]: reading
//!   a hub's `/metrics`; [`machine`]: CPU and memory facts; [`progress`]: progress
//!   bars; [`stop`]: stop signals; [`logging`]: a minimal stderr `tracing`
//!   subscriber.
//! - [`error`]: the harness's [`Error`] type.

pub mod baseline;
pub mod cli;
pub mod clock;
pub mod error;
pub mod html;
pub mod logging;
pub mod machine;
pub mod metrics;
pub mod net;
pub mod progress;
pub mod proxy;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod stats;
pub mod stop;
pub mod targets;
pub mod tokens;

pub use error::{Error, Result};
pub use report::Report;
pub use runner::{execute, run_report, Verdict};

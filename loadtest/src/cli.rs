//! The command line: one subcommand per scenario, sharing [`Common`] options.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

/// Load-test harness for flowhub hubs.
#[derive(Debug, Parser)]
#[command(name = "flowhub-loadtest", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More logs on stderr (-v: debug, -vv: trace).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Editors co-editing flows: edit → every other editor applied it; ends with a
    /// convergence check.
    Edit {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        edit: EditArgs,
    },
    /// Cursor storms: presence delay and how many messages survive coalescing.
    Presence {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        presence: PresenceArgs,
    },
    /// Idle sessions held open: the hub's resident memory per session.
    Idle {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        idle: IdleArgs,
    },
    /// Watchers of one run while an engine posts events: POST → watcher received.
    Watch {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// A cluster's cost to Redis and PostgreSQL: thousands of flows with idle
    /// subscribed sessions spread over the targets, an idle window, then editors
    /// (`scripts/cluster-sim.sh` starts the nodes and services).
    Cluster {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// edit + presence + watch at once.
    Mixed {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        edit: EditArgs,
        #[command(flatten)]
        presence: PresenceArgs,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// A WebSocket proxy in front of a hub that can drop a client's edits (for
    /// testing the convergence check).
    #[command(hide = true)]
    Proxy(ProxyArgs),
    /// The baseline broadcast server, run by `--baseline` as a child process.
    #[command(hide = true)]
    BaselineServer(BaselineServerArgs),
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Edit { .. } => "edit",
            Command::Presence { .. } => "presence",
            Command::Idle { .. } => "idle",
            Command::Watch { .. } => "watch",
            Command::Mixed { .. } => "mixed",
            Command::Cluster { .. } => "cluster",
            Command::Proxy(_) => "proxy",
            Command::BaselineServer(_) => "baseline-server",
        }
    }

    /// The common options of a scenario (`None` for `proxy`).
    pub fn common(&self) -> Option<&Common> {
        match self {
            Command::Edit { common, .. }
            | Command::Presence { common, .. }
            | Command::Idle { common, .. }
            | Command::Watch { common, .. }
            | Command::Mixed { common, .. }
            | Command::Cluster { common, .. } => Some(common),
            Command::Proxy(_) | Command::BaselineServer(_) => None,
        }
    }
}

/// Options every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Hub base URLs, comma-separated (`ws://a:7878,ws://b:7878`). Clients are spread
    /// round-robin over them, so one run measures same-node and cross-node latency.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:7878")]
    pub targets: Vec<String>,
    /// The hubs' HS256 secret: the harness mints its own tokens with it.
    #[arg(long, env = "FLOWHUB_JWT_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// A pre-minted token used by every client instead of minting (it must grant
    /// the flows used, e.g. `"*": "editor"`).
    #[arg(long, hide = true)]
    pub token: Option<String>,
    /// A pre-minted service token (`svc: true`) for run ingest.
    #[arg(long, hide = true)]
    pub service_token: Option<String>,
    /// How long the load runs (`10s`, `500ms`, `2m`; plain numbers are seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Clients connect evenly over this period before the load starts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub ramp_up: Duration,
    /// Longest wait after the load for the last deliveries and for convergence.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub settle_timeout: Duration,
    /// Bind client sockets to this many loopback source addresses (127.0.0.2, …),
    /// each good for ~28,000 connections to one port; 0: one per 20,000 sessions.
    #[arg(long, default_value_t = 0)]
    pub source_addrs: usize,
    /// Write the result as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write a self-contained HTML report here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Name of the run in reports (default: the `--out` file name, else the scenario).
    #[arg(long)]
    pub name: Option<String>,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Run the `--baseline` server in this process instead of a child process.
    #[arg(long, hide = true)]
    pub baseline_in_process: bool,
}

impl Common {
    /// Defaults suitable for tests: one target, a fixed secret, short phases.
    pub fn for_targets(targets: Vec<String>, secret: &str) -> Self {
        Common {
            targets,
            token_secret: Some(secret.to_owned()),
            token: None,
            service_token: None,
            duration: Duration::from_secs(2),
            ramp_up: Duration::from_millis(300),
            settle_timeout: Duration::from_secs(10),
            source_addrs: 0,
            out: None,
            html: None,
            name: None,
            no_progress: true,
            // The test binary cannot run the `baseline-server` subcommand.
            baseline_in_process: true,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct EditArgs {
    /// Editing sessions.
    #[arg(long, default_value_t = 50)]
    pub editors: usize,
    /// Flows the editors are spread over (editor i edits flow i mod F).
    #[arg(long, default_value_t = 10)]
    pub flows: usize,
    /// Typed edits per second per editor.
    #[arg(long, default_value_t = 10.0)]
    pub edit_rate: f64,
    /// Nodes each flow holds before the editors join (written by one seeding client
    /// per flow), to measure edits on large flows.
    #[arg(long, default_value_t = 0)]
    pub flow_nodes: usize,
}

#[derive(Debug, Clone, Args)]
pub struct PresenceArgs {
    /// Sessions moving their cursor.
    #[arg(long, default_value_t = 50)]
    pub sessions: usize,
    /// Flows the sessions are spread over.
    #[arg(long, default_value_t = 5)]
    pub presence_flows: usize,
    /// Cursor updates per second per session.
    #[arg(long, default_value_t = 30.0)]
    pub presence_rate: f64,
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// WebSocket sessions watching the run.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Run events per second posted by the engine.
    #[arg(long, default_value_t = 50.0)]
    pub event_rate: f64,
    /// Events per POST.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Also run the same fan-out against a bare tokio-tungstenite broadcast server
    /// and report the hub's throughput as a ratio of it.
    #[arg(long)]
    pub baseline: bool,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Sessions to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Subscribe each session to one of this many flows (0: sessions only).
    #[arg(long, default_value_t = 0)]
    pub subscribe_flows: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
}

#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Flows opened (each by `--sessions-per-flow` idle sessions).
    #[arg(long, default_value_t = 5000)]
    pub flows: usize,
    /// Idle subscribed sessions per flow, each on another target (where there are
    /// enough), so a flow is open on that many nodes.
    #[arg(long, default_value_t = 2)]
    pub sessions_per_flow: usize,
    /// Editing sessions, one per flow (distinct flows), each on one more node.
    #[arg(long, default_value_t = 100)]
    pub editors: usize,
    /// Typed edits per second per editor, during the edit window (`--duration`).
    #[arg(long, default_value_t = 2.0)]
    pub edit_rate: f64,
    /// The idle window: everyone connected, nobody edits.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub idle_duration: Duration,
    /// Redis servers to read `INFO` from (`host:port`, comma-separated: every shard of
    /// a Redis Cluster). Empty: no Redis figures.
    #[arg(long, value_delimiter = ',')]
    pub redis: Vec<String>,
    /// The nodes' PostgreSQL database, to read its statistics. Unset: only the nodes'
    /// store counters.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
}

#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Where the proxy listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The hub behind it.
    #[arg(long, default_value = "ws://127.0.0.1:7878")]
    pub upstream: String,
    /// Of the victim's client→hub binary frames that carry changes, drop every N-th
    /// (1: all of them; 0: drop nothing).
    #[arg(long, default_value_t = 0)]
    pub chaos_drop_binary_every: u64,
    /// How many WebSocket sessions (in accept order) are victims.
    #[arg(long, default_value_t = 1)]
    pub chaos_victims: usize,
    /// Change-carrying frames of a victim forwarded before dropping starts (the
    /// setup edit must get through).
    #[arg(long, default_value_t = 1)]
    pub chaos_keep_first: u64,
    /// Stop after this long.
    #[arg(long = "for", default_value = "1h", value_parser = parse_duration)]
    pub run_for: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct BaselineServerArgs {
    /// The run id in the frames it broadcasts.
    #[arg(long)]
    pub run_id: String,
    /// Stop after this long (it also stops when its stdin closes).
    #[arg(long = "for", default_value = "1h", value_parser = parse_duration)]
    pub run_for: Duration,
}

/// `10`, `10s`, `1.5s`, `500ms`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number with an optional unit (ms, s, m, h)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("`{s}`: unknown unit `{other}` (ms, s, m, h)")),
    };
    if !(0.0..=7.0 * 86400.0).contains(&secs) {
        return Err(format!("`{s}`: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3y").is_err());
    }

    #[test]
    fn cli_parses_targets_and_flags() {
        let cli = Cli::try_parse_from([
            "flowhub-loadtest",
            "edit",
            "--targets",
            "ws://127.0.0.1:1,ws://127.0.0.1:2",
            "--token-secret",
            "s",
            "--editors",
            "4",
            "--duration",
            "3s",
        ])
        .unwrap();
        match cli.command {
            Command::Edit { common, edit } => {
                assert_eq!(common.targets.len(), 2);
                assert_eq!(edit.editors, 4);
                assert_eq!(common.duration, Duration::from_secs(3));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "flowhub-loadtest",
            "mixed",
            "--editors",
            "2",
            "--sessions",
            "3",
            "--watchers",
            "4",
        ])
        .unwrap();
        assert_eq!(cli.command.name(), "mixed");
    }
}

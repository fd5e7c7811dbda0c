//! The `flowhub` binary: `flowhub serve` (the default), `flowhub demo`, `flowhub migrate`
//! and `flowhub token`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use flowhub::auth::{now_secs, parse_ttl, Claims, JwtKeys};
use flowhub::config::resolve_secret;
use flowhub::sql_store::SqlStore;
use flowhub::{Hub, HubConfig};
use flowhub_protocol::Role;

mod telemetry;

#[derive(Parser)]
#[command(
    name = "flowhub",
    version,
    about = "Realtime collaboration hub for automation flows"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Threads of the async runtime (actors, sockets, the store's async side).
    /// Default: on SQLite one fewer than the machine's cores (at least one), on
    /// PostgreSQL one per core (see `default_worker_threads`).
    #[arg(long, global = true, env = "FLOWHUB_WORKER_THREADS")]
    worker_threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a hub node (the default).
    Serve(ServeArgs),
    /// Run a hub node with the demo's development endpoints on (`serve --demo`):
    /// anonymous editor tokens for the demo page. Loopback only unless
    /// `--demo-allow-remote` is given too.
    Demo(ServeArgs),
    /// Bring the database's schema up to this binary's and exit: run it once before
    /// the nodes of a new release start (a Kubernetes Job, an init step).
    Migrate(MigrateArgs),
    /// Print a signed token for development.
    Token(TokenArgs),
}

/// The database options of `serve`, under the same names and environment variables.
#[derive(Args)]
struct MigrateArgs {
    /// postgres://… or sqlite://…; unset: SQLite in the data directory.
    #[arg(long, env = "FLOWHUB_DATABASE_URL")]
    database_url: Option<String>,
    #[arg(long, env = "FLOWHUB_DATA_DIR", default_value = "flowhub-data")]
    data_dir: PathBuf,
}

#[derive(Args, Clone)]
struct ServeArgs {
    #[arg(long, env = "FLOWHUB_LISTEN", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// postgres://… or sqlite://…; unset: SQLite in the data directory.
    #[arg(long, env = "FLOWHUB_DATABASE_URL")]
    database_url: Option<String>,
    #[arg(long, env = "FLOWHUB_DATA_DIR", default_value = "flowhub-data")]
    data_dir: PathBuf,
    /// redis://… (or comma-separated Redis Cluster seeds); unset: in-process bus.
    #[arg(long, env = "FLOWHUB_REDIS_URL")]
    redis_url: Option<String>,
    /// Seconds after which a silent node counts as dead.
    #[arg(long, env = "FLOWHUB_HEARTBEAT_TTL", default_value_t = 5)]
    heartbeat_ttl: u64,
    /// HS256 secret; unset: generated once and kept in the data directory.
    #[arg(long, env = "FLOWHUB_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// An identity provider's JWKS URL (https://…/.well-known/jwks.json): its RS256,
    /// ES256 and EdDSA tokens are accepted; HS256 then only with an explicit
    /// --jwt-secret (or --demo).
    #[arg(long, env = "FLOWHUB_JWKS_URL")]
    jwks_url: Option<String>,
    /// Required `iss` of every token.
    #[arg(long, env = "FLOWHUB_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required `aud` of every token.
    #[arg(long, env = "FLOWHUB_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// The claim carrying flow roles (`{"flow-id": "editor"}`), e.g.
    /// `https://example.com/flows`; unset: `flows`.
    #[arg(long, env = "FLOWHUB_JWT_ROLES_CLAIM")]
    jwt_roles_claim: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf` (`30s`, `2m`, or seconds); unset: 30 s.
    #[arg(long, env = "FLOWHUB_JWT_LEEWAY")]
    jwt_leeway: Option<String>,
    #[arg(long, env = "FLOWHUB_NODE_ID")]
    node_id: Option<String>,
    /// Frames above this get a `too_large` error (the connection stays open).
    #[arg(long, env = "FLOWHUB_MAX_FRAME_BYTES", default_value_t = 1 << 20)]
    max_frame_bytes: usize,
    #[arg(long, env = "FLOWHUB_MAX_SUBSCRIPTIONS", default_value_t = 64)]
    max_subscriptions: usize,
    #[arg(long, env = "FLOWHUB_OUTBOUND_QUEUE", default_value_t = 512)]
    outbound_queue: usize,
    /// Seconds a SIGTERM drain may take.
    #[arg(long, env = "FLOWHUB_DRAIN_TIMEOUT", default_value_t = 10)]
    drain_timeout: u64,
    /// Seconds a socket may accept no bytes, while the hub has data for it, before the
    /// client is closed as too slow.
    #[arg(long, env = "FLOWHUB_WRITE_STALL_TIMEOUT", default_value_t = 5)]
    write_stall_timeout: u64,
    /// SO_SNDBUF of each connection in bytes (0: the kernel's autotuning).
    #[arg(long, env = "FLOWHUB_SOCKET_SEND_BUFFER", default_value_t = 64 * 1024)]
    socket_send_buffer: usize,
    /// Long-lived connections (WebSockets, SSE) this node accepts at once; beyond it
    /// new ones get 503.
    #[arg(long, env = "FLOWHUB_MAX_CONNECTIONS", default_value_t = 50_000)]
    max_connections: usize,
    /// PostgreSQL connections this node opens at most: every node holds up to this
    /// many, and the server's `max_connections` is shared by all of them.
    #[arg(long, env = "FLOWHUB_DATABASE_POOL", default_value_t = flowhub::sql_store::PG_MAX_CONNECTIONS)]
    database_pool: u32,
    /// The bus format this node writes: 2 (current), or 1 while nodes of the release
    /// before still run (a rolling upgrade from it; every node reads both).
    #[arg(long, env = "FLOWHUB_BUS_FORMAT", default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    bus_format: u8,
    /// Turn on the demo's development endpoints (`/v1/dev/token` mints anonymous
    /// editor tokens): for trying flowhub on your own machine, never a deployment.
    #[arg(long, env = "FLOWHUB_DEMO", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    demo: bool,
    /// Allow `--demo` on a non-loopback listen address (anyone who can reach the
    /// port gets an editor token).
    #[arg(long, env = "FLOWHUB_DEMO_ALLOW_REMOTE", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    demo_allow_remote: bool,
}

#[derive(Args)]
struct TokenArgs {
    #[arg(long)]
    sub: String,
    #[arg(long)]
    name: Option<String>,
    /// Flow id (or `*`) the role applies to; repeat with --role pairs.
    #[arg(long = "flow", required_unless_present = "svc")]
    flows: Vec<String>,
    /// owner, editor or viewer; one per --flow (or one for all).
    #[arg(long = "role", required_unless_present = "svc")]
    roles: Vec<String>,
    /// A service token, for an execution engine reporting runs
    /// (`POST /v1/runs/{id}/events`); --flow/--role are then optional.
    #[arg(long)]
    svc: bool,
    #[arg(long, default_value = "1h")]
    ttl: String,
    #[arg(long, env = "FLOWHUB_DATA_DIR", default_value = "flowhub-data")]
    data_dir: PathBuf,
    #[arg(long, env = "FLOWHUB_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
}

fn parse_role(s: &str) -> anyhow::Result<Role> {
    Ok(match s {
        "owner" => Role::Owner,
        "editor" => Role::Editor,
        "viewer" => Role::Viewer,
        other => bail!("unknown role `{other}` (owner, editor, viewer)"),
    })
}

/// An option given as an empty string (an empty environment variable) is unset.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

fn config_from(args: ServeArgs) -> anyhow::Result<HubConfig> {
    let defaults = HubConfig::default();
    let jwt_leeway = match non_empty(args.jwt_leeway) {
        Some(s) => Duration::from_secs(
            parse_ttl(&s).with_context(|| format!("bad --jwt-leeway `{s}` (e.g. 30s, 2m)"))?,
        ),
        None => defaults.jwt_leeway,
    };
    let mut config = HubConfig {
        listen: args.listen,
        database_url: args.database_url.filter(|u| !u.is_empty()),
        redis_url: args.redis_url.filter(|u| !u.is_empty()),
        heartbeat_ttl: Duration::from_secs(args.heartbeat_ttl.max(2)),
        data_dir: args.data_dir,
        jwt_secret: args.jwt_secret.filter(|s| !s.is_empty()),
        jwks_url: non_empty(args.jwks_url),
        jwt_issuer: non_empty(args.jwt_issuer),
        jwt_audience: non_empty(args.jwt_audience),
        jwt_roles_claim: non_empty(args.jwt_roles_claim)
            .unwrap_or(defaults.jwt_roles_claim.clone()),
        jwt_leeway,
        node_id: args.node_id,
        outbound_queue: args.outbound_queue,
        drain_timeout: Duration::from_secs(args.drain_timeout),
        write_stall_timeout: Duration::from_secs(args.write_stall_timeout.max(1)),
        socket_send_buffer: args.socket_send_buffer,
        max_connections: args.max_connections,
        database_pool: args.database_pool,
        demo: args.demo,
        demo_allow_remote: args.demo_allow_remote,
        ..defaults
    };
    config.flow.bus_format = match args.bus_format {
        1 => flowhub_actors::bus::BusFormat::V1,
        _ => flowhub_actors::bus::BusFormat::V2,
    };
    config.session.max_frame_bytes = args.max_frame_bytes;
    config.session.max_subscriptions = args.max_subscriptions;
    Ok(config)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let hub = Hub::start(config_from(args)?)
        .await
        .context("starting the hub")?;
    shutdown_signal().await;
    hub.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let config = HubConfig {
        database_url: non_empty(args.database_url),
        data_dir: args.data_dir,
        ..HubConfig::default()
    };
    if config.database_url.is_none() {
        // The embedded default's file lives there, as for `serve`.
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
    }
    // Not the URL itself: it may hold a password.
    let report = SqlStore::migrate(&config.database_url())
        .await
        .context("migrating the database")?;
    for m in &report.adopted {
        println!(
            "adopted migration {} ({}) from flowhub_migrations (already applied, not run again)",
            m.version, m.description
        );
    }
    for m in &report.applied {
        println!("applied migration {} ({})", m.version, m.description);
    }
    if report.adopted.is_empty() && report.applied.is_empty() {
        println!(
            "{} schema already at version {}: nothing to do",
            report.backend, report.version
        );
    } else {
        println!(
            "{} schema now at version {} (this flowhub knows up to {})",
            report.backend, report.version, report.known
        );
    }
    Ok(())
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let config = HubConfig {
        data_dir: args.data_dir,
        jwt_secret: args.jwt_secret,
        ..HubConfig::default()
    };
    let secret = resolve_secret(&config).context("reading the JWT secret")?;
    let ttl = parse_ttl(&args.ttl).with_context(|| format!("bad --ttl `{}`", args.ttl))?;
    let roles: Vec<Role> = args
        .roles
        .iter()
        .map(|r| parse_role(r))
        .collect::<anyhow::Result<_>>()?;
    if roles.len() != 1 && roles.len() != args.flows.len() {
        bail!("give one --role, or one per --flow");
    }
    let flows = args
        .flows
        .iter()
        .enumerate()
        .map(|(i, f)| (f.clone(), roles[if roles.len() == 1 { 0 } else { i }]))
        .collect();
    let claims = Claims {
        sub: args.sub,
        name: args.name,
        exp: now_secs() + ttl,
        flows,
        svc: args.svc,
    };
    println!("{}", JwtKeys::new(secret).sign(&claims));
    Ok(())
}

/// On SQLite (the embedded default, or a `sqlite:` URL), one runtime thread fewer
/// than the machine has cores (at least one): sqlx runs each SQLite connection on a
/// thread of its own, off the runtime, and every append goes through one; the core
/// left over runs those, the kernel's network stack and, on small machines, the
/// clients. On the 2-core reference machine a second runtime thread cost 13–24 % more
/// hub CPU per edit at 100 to 1,000 edits/s, at the same latency: the two threads
/// spent it waking each other to steal tasks (docs/PERFORMANCE.md, "Eleventh round").
/// On PostgreSQL all of the hub's work is on the runtime: one thread per core.
fn default_worker_threads(database_url: Option<&str>) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if database_url.is_some_and(flowhub::sql_store::is_postgres_url) {
        cores
    } else {
        cores.saturating_sub(1).max(1)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let worker_threads = match cli.worker_threads {
        Some(0) => bail!("--worker-threads must be at least 1"),
        Some(n) => n,
        None => {
            let serve = match &cli.command {
                Some(Command::Serve(args) | Command::Demo(args)) => args,
                _ => &cli.serve,
            };
            default_worker_threads(serve.database_url.as_deref())
        }
    };
    // Before the runtime: the OTLP exporter (feature `otlp`) uses a blocking HTTP
    // client, which must be neither created nor dropped inside it.
    let telemetry = telemetry::init()?;
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(cli));
    // Flushes the spans still queued (after the runtime is gone).
    drop(telemetry);
    result
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Token(args)) => token(args),
        Some(Command::Migrate(args)) => migrate(args).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Demo(args)) => serve(ServeArgs { demo: true, ..args }).await,
        None => serve(cli.serve).await,
    }
}

#[cfg(test)]
mod tests {
    use super::default_worker_threads;

    #[test]
    fn sqlite_leaves_a_core_to_its_connection_threads_and_postgres_does_not() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let on_sqlite = cores.saturating_sub(1).max(1);
        assert_eq!(default_worker_threads(None), on_sqlite);
        assert_eq!(
            default_worker_threads(Some("sqlite://data/flowhub.db")),
            on_sqlite
        );
        assert_eq!(default_worker_threads(Some("postgres://h/db")), cores);
        assert_eq!(default_worker_threads(Some("postgresql://h/db")), cores);
        assert!(on_sqlite >= 1);
    }
}

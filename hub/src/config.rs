//! Hub configuration, independent of how it was given (flags, env, tests).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use flowhub_actors::flow::FlowConfig;
use flowhub_actors::session::SessionLimits;

#[derive(Debug, Clone)]
pub struct HubConfig {
    pub listen: SocketAddr,
    /// `postgres://…` or `sqlite://…`; `None` is the embedded default, a SQLite file
    /// in `data_dir`.
    pub database_url: Option<String>,
    /// Where the embedded default keeps its database and generated secret.
    pub data_dir: PathBuf,
    /// `redis://…` (or several comma-separated seeds of a Redis Cluster): the bus
    /// between hub nodes. `None`: the in-process bus (one node).
    pub redis_url: Option<String>,
    /// How often this node refreshes its heartbeat in Redis.
    pub heartbeat_interval: Duration,
    /// A node whose heartbeat is older than this is dead: its sessions leave presence.
    pub heartbeat_ttl: Duration,
    /// HS256 secret; `None` generates one once and keeps it in `data_dir`.
    pub jwt_secret: Option<String>,
    /// An identity provider's JWKS (`https://…/.well-known/jwks.json`): its RS256,
    /// ES256 and EdDSA tokens are accepted. With it, HS256 tokens are accepted only
    /// when `jwt_secret` is set (or `demo` is on); see `auth`.
    pub jwks_url: Option<String>,
    /// Required `iss` of every token, when set.
    pub jwt_issuer: Option<String>,
    /// Required `aud` of every token, when set.
    pub jwt_audience: Option<String>,
    /// The claim that carries the flow roles (`{"flow-id": "editor"}`).
    pub jwt_roles_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub jwt_leeway: Duration,
    /// The JWKS is fetched for an unknown `kid` at most once per this interval (and
    /// never kept for less).
    pub jwks_min_refresh: Duration,
    /// Name of this node in logs, `welcome` and the bus; `None` generates one.
    pub node_id: Option<String>,
    pub session: SessionLimits,
    pub flow: FlowConfig,
    /// Frames a session may have queued before sync frames are dropped (and later
    /// resynced) and control frames close the session.
    pub outbound_queue: usize,
    /// Frames above this close the connection (1009); frames between
    /// `session.max_frame_bytes` and this get a `too_large` error and the
    /// connection stays usable.
    pub hard_frame_bytes: usize,
    /// WebSocket ping period (keeps NATs open and detects dead peers).
    pub ping_interval: Duration,
    /// A session from which nothing (not even a pong) arrives for this long is
    /// closed and leaves presence: the bound on how long a vanished client lingers.
    pub idle_timeout: Duration,
    /// How long a drain (SIGTERM) waits for sessions and flows before exiting.
    pub drain_timeout: Duration,
    /// A connection whose socket accepts no bytes for this long while the hub has
    /// data for it (a client that stopped reading) is closed as too slow: detection
    /// by progress, whatever the queue length.
    pub write_stall_timeout: Duration,
    /// `SO_SNDBUF` of every accepted connection (0: the kernel's autotuning, which
    /// lets one stalled socket pin megabytes). Linux doubles the value for its own
    /// bookkeeping.
    pub socket_send_buffer: usize,
    /// Long-lived connections (WebSocket sessions on both endpoints, SSE streams) this
    /// node accepts at once; beyond it an upgrade gets 503 at once, before any work,
    /// instead of the node running out of file descriptors or memory.
    pub max_connections: usize,
    /// PostgreSQL connections this node's pool opens at most (ignored for SQLite).
    pub database_pool: u32,
    /// The demo's development endpoints (`/v1/dev/token`, `/v1/dev/simulate-run`):
    /// anonymous editor tokens. Only when the operator asks (`--demo`), never inferred.
    pub demo: bool,
    /// Allows `demo` on a non-loopback listen address (a second, explicit opt-in).
    pub demo_allow_remote: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            database_url: None,
            data_dir: PathBuf::from("flowhub-data"),
            redis_url: None,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_ttl: Duration::from_secs(5),
            jwt_secret: None,
            jwks_url: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_roles_claim: "flows".to_owned(),
            jwt_leeway: Duration::from_secs(30),
            jwks_min_refresh: Duration::from_secs(10),
            node_id: None,
            session: SessionLimits::default(),
            flow: FlowConfig::default(),
            outbound_queue: 512,
            hard_frame_bytes: 16 << 20,
            ping_interval: Duration::from_secs(4),
            idle_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            write_stall_timeout: Duration::from_secs(5),
            socket_send_buffer: 64 * 1024,
            max_connections: 50_000,
            database_pool: crate::sql_store::PG_MAX_CONNECTIONS,
            demo: false,
            demo_allow_remote: false,
        }
    }
}

impl HubConfig {
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("flowhub.db").display()),
        }
    }
}

/// Reads the JWT secret: configured, or kept in `data_dir/jwt-secret` (generated on
/// first start so that tokens minted by `flowhub token` stay valid across restarts).
pub fn resolve_secret(config: &HubConfig) -> std::io::Result<String> {
    if let Some(s) = &config.jwt_secret {
        return Ok(s.clone());
    }
    let path = config.data_dir.join("jwt-secret");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(&config.data_dir)?;
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    write_private(&path, &secret)?;
    Ok(secret)
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

//! Shared helpers for integration tests: real hubs on port 0, tokens, fresh
//! PostgreSQL databases, hub child processes.
#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use flowhub::auth::{now_secs, Claims, JwtKeys};
use flowhub::{Hub, HubConfig};
use flowhub_protocol::Role;

pub const SECRET: &str = "integration-test-secret";

/// The PostgreSQL server every test machine has. Tests that need it fail (never skip)
/// when it is down.
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn keys() -> JwtKeys {
    JwtKeys::new(SECRET)
}

pub fn token(sub: &str, flows: &[(&str, Role)]) -> String {
    token_with_exp(sub, flows, now_secs() + 3600)
}

pub fn token_with_exp(sub: &str, flows: &[(&str, Role)], exp: u64) -> String {
    keys().sign(&Claims {
        sub: sub.into(),
        name: Some(format!("{sub} (test)")),
        exp,
        flows: flows.iter().map(|(f, r)| (f.to_string(), *r)).collect(),
        svc: false,
    })
}

pub fn config(dir: &Path, database_url: Option<String>) -> HubConfig {
    HubConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url,
        data_dir: dir.to_path_buf(),
        jwt_secret: Some(SECRET.into()),
        ..HubConfig::default()
    }
}

/// Which store a test runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A hub on the embedded SQLite default or a fresh PostgreSQL database.
pub async fn start_hub(backend: Backend, dir: &Path) -> Hub {
    let url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(fresh_postgres_database().await),
    };
    Hub::start(config(dir, url)).await.expect("hub starts")
}

/// Creates an empty database on the machine's PostgreSQL and returns its URL.
/// Panics with a clear message when PostgreSQL is unreachable: these tests must run.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let name = format!("flowhub_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL).await.unwrap_or_else(|e| {
        panic!("PostgreSQL must be running on 127.0.0.1:5432 for this test ({e}); start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start")
    });
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, mut cond: F) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A hub running as a child process (for kill -9 tests).
pub struct HubProcess {
    pub child: tokio::process::Child,
    pub port: u16,
}

impl HubProcess {
    pub async fn start(dir: &Path, port: u16, database_url: Option<&str>) -> HubProcess {
        let env: Vec<(&str, &str)> = database_url
            .map(|u| ("FLOWHUB_DATABASE_URL", u))
            .into_iter()
            .collect();
        Self::start_env(dir, port, &env).await
    }

    /// Starts a hub process with extra environment (`FLOWHUB_DATABASE_URL`,
    /// `FLOWHUB_REDIS_URL`, `FLOWHUB_NODE_ID`, …).
    pub async fn start_env(dir: &Path, port: u16, env: &[(&str, &str)]) -> HubProcess {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowhub"));
        cmd.arg("serve")
            .env("FLOWHUB_LISTEN", format!("127.0.0.1:{port}"))
            .env("FLOWHUB_DATA_DIR", dir)
            .env("FLOWHUB_JWT_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .env_remove("FLOWHUB_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn flowhub");
        let hub = HubProcess { child, port };
        hub.wait_ready().await;
        hub
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        for _ in 0..300 {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "hub child process did not become ready on port {}",
            self.port
        );
    }

    /// SIGTERM: a graceful drain. Returns the exit status.
    pub async fn terminate(mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill -TERM");
        assert!(status.success());
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("hub exits within the drain timeout")
            .expect("wait")
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The value of one counter or gauge from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let body = reqwest::get(format!("{}/metrics", self.http_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.lines()
            .find_map(|l| {
                // The name whole: `flowhub_x` must not match `flowhub_x_total`.
                l.strip_prefix(name)
                    .filter(|rest| rest.starts_with(' '))
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// SIGKILL: no drain, no flush.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("kill -9");
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A bare WebSocket client speaking JSON frames, for tests that need to see every
/// message (presence diffs, closes) or to misbehave (stop reading, drop the socket).
pub struct RawClient {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    pub session_id: String,
}

impl RawClient {
    pub async fn connect(base: &str, token: &str) -> RawClient {
        let (ws, _) = tokio_tungstenite::connect_async(format!("{base}/v1/ws?token={token}"))
            .await
            .expect("ws connect");
        let mut c = RawClient {
            ws,
            session_id: String::new(),
        };
        match c.next(Duration::from_secs(5)).await {
            Some(flowhub_protocol::ServerMessage::Welcome { session_id, .. }) => {
                c.session_id = session_id
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        c
    }

    /// Like `connect`, with a tiny socket receive buffer, so a client that stops
    /// reading backs up into the hub quickly instead of into the kernel.
    pub async fn connect_small_buffer(base: &str, token: &str) -> RawClient {
        let addr: std::net::SocketAddr = base
            .trim_start_matches("ws://")
            .parse()
            .expect("ws://ip:port");
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.expect("tcp connect");
        let (ws, _) = tokio_tungstenite::client_async(
            format!("{base}/v1/ws?token={token}"),
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        )
        .await
        .expect("ws handshake");
        let mut c = RawClient {
            ws,
            session_id: String::new(),
        };
        match c.next(Duration::from_secs(5)).await {
            Some(flowhub_protocol::ServerMessage::Welcome { session_id, .. }) => {
                c.session_id = session_id
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        c
    }

    pub async fn send(&mut self, msg: &flowhub_protocol::ClientMessage) {
        use futures_util::SinkExt;
        let text = flowhub_protocol::encode(msg);
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
            .await
            .expect("ws send");
    }

    pub async fn subscribe(&mut self, flow_id: &str) {
        self.send(&flowhub_protocol::ClientMessage::SubscribeFlow {
            id: Some(1.into()),
            flow_id: flow_id.into(),
            pending: vec![],
            stream: false,
            format: Default::default(),
            since_heads: Vec::new(),
        })
        .await;
        self.until(Duration::from_secs(5), |m| {
            matches!(m, flowhub_protocol::ServerMessage::FlowState { .. })
        })
        .await
        .expect("flow_state");
    }

    /// The next text message, skipping binary frames; `None` on timeout or close.
    pub async fn next(&mut self, timeout: Duration) -> Option<flowhub_protocol::ServerMessage> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Some(serde_json::from_str(t.as_str()).expect("server sends valid JSON"))
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => {
                    return None
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Reads until a message satisfies `pred`; `None` on timeout or close.
    pub async fn until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&flowhub_protocol::ServerMessage) -> bool,
    ) -> Option<flowhub_protocol::ServerMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = self.next(left).await?;
            if pred(&msg) {
                return Some(msg);
            }
        }
    }

    /// Reads until the server closes; returns the close code (None on timeout).
    pub async fn close_code(&mut self, timeout: Duration) -> Option<u16> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) => return Some(1006),
                Err(_) => return None,
            }
        }
    }
}

/// A redis-server owned by one test, on a free port, that the test can stop and start.
pub struct PrivateRedis {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let mut r = PrivateRedis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on the same port and waits until it answers.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        for _ in 0..100 {
            let ok = std::process::Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "ping"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"));
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("private redis-server did not start on port {}", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The machine's Redis; tests that need it fail loudly when it is down.
pub const MACHINE_REDIS: &str = "redis://127.0.0.1:6379";

pub fn require_machine_redis() {
    let ok = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "ping"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"));
    assert!(
        ok,
        "Redis must be running on 127.0.0.1:6379 for this test (see .ci/run for how to start it)"
    );
}

/// A 3-shard Redis Cluster owned by one test (cluster mode, free ports,
/// `redis-cli --cluster create`), torn down on drop.
pub struct PrivateRedisCluster {
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
    children: Vec<std::process::Child>,
}

impl PrivateRedisCluster {
    pub fn start(shards: usize) -> PrivateRedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut ports = Vec::new();
        while ports.len() < shards {
            // The cluster bus uses port + 10000: both must be free.
            let p = free_port();
            if p < 55000
                && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok()
                && !ports.contains(&p)
            {
                ports.push(p);
            }
        }
        let mut children = Vec::new();
        for p in &ports {
            let child = std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &p.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                ])
                .args([
                    "--cluster-config-file",
                    &format!("nodes-{p}.conf"),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server must be installed");
            children.push(child);
        }
        let cluster = PrivateRedisCluster {
            ports,
            _dir: dir,
            children,
        };
        for p in &cluster.ports {
            cluster.wait_for(*p, "ping", "PONG");
        }
        let mut create = std::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for p in &cluster.ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for p in &cluster.ports {
            cluster.wait_for(*p, "cluster info", "cluster_state:ok");
        }
        cluster
    }

    fn wait_for(&self, port: u16, cmd: &str, expect: &str) {
        for _ in 0..200 {
            let out = std::process::Command::new("redis-cli")
                .arg("-p")
                .arg(port.to_string())
                .args(cmd.split(' '))
                .output();
            if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(expect)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis on {port}: `{cmd}` never answered {expect}");
    }

    /// The seed list flowhub takes in `FLOWHUB_REDIS_URL`.
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Shard subscribers of `channel` on the shard at `port` (`PUBSUB SHARDNUMSUB`).
    pub fn shard_subscribers(&self, port: u16, channel: &str) -> i64 {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "pubsub", "shardnumsub", channel])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// CBOR of a map with text keys, as the automerge-repo protocol frames messages.
pub fn cbor(fields: Vec<(&str, ciborium::Value)>) -> Vec<u8> {
    let map = ciborium::Value::Map(
        fields
            .into_iter()
            .map(|(k, v)| (ciborium::Value::Text(k.into()), v))
            .collect(),
    );
    let mut out = Vec::new();
    ciborium::ser::into_writer(&map, &mut out).unwrap();
    out
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `/v1/automerge-repo` as a stock Repo does: `join`, then a sync
/// `request` for the flow from an empty document (which joins the flow).
pub async fn open_repo_peer(base: &str, token: &str, peer: &str, flow_id: &str) -> Ws {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{base}/v1/automerge-repo?token={token}"))
            .await
            .expect("connect");
    futures_util::SinkExt::send(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::Binary(
            cbor(vec![
                ("type", ciborium::Value::Text("join".into())),
                ("senderId", ciborium::Value::Text(peer.into())),
                ("peerMetadata", ciborium::Value::Map(vec![])),
                (
                    "supportedProtocolVersions",
                    ciborium::Value::Array(vec![ciborium::Value::Text("1".into())]),
                ),
            ])
            .into(),
        ),
    )
    .await
    .unwrap();
    let mut doc = flowhub_crdt::FlowDoc::new();
    let mut sync = flowhub_crdt::SyncState::new();
    let data = doc.generate_sync_message(&mut sync).unwrap();
    futures_util::SinkExt::send(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::Binary(
            cbor(vec![
                ("type", ciborium::Value::Text("request".into())),
                ("senderId", ciborium::Value::Text(peer.into())),
                ("targetId", ciborium::Value::Text("hub".into())),
                (
                    "documentId",
                    ciborium::Value::Text(flowhub::automerge_repo::flow_document_id(flow_id)),
                ),
                ("data", ciborium::Value::Bytes(data)),
            ])
            .into(),
        ),
    )
    .await
    .unwrap();
    ws
}

/// The value of `key` in a CBOR map (automerge-repo messages).
pub fn field<'a>(msg: &'a ciborium::Value, key: &str) -> Option<&'a ciborium::Value> {
    let ciborium::Value::Map(map) = msg else {
        return None;
    };
    map.iter()
        .find(|(k, _)| matches!(k, ciborium::Value::Text(t) if t == key))
        .map(|(_, v)| v)
}

/// The text value of `key` in a CBOR map.
pub fn field_text<'a>(msg: &'a ciborium::Value, key: &str) -> Option<&'a str> {
    match field(msg, key)? {
        ciborium::Value::Text(t) => Some(t),
        _ => None,
    }
}

/// A service token (an execution engine): reads every run, no role on flows.
pub fn service_token() -> String {
    keys().sign(&Claims {
        sub: "engine".into(),
        name: None,
        exp: now_secs() + 3600,
        flows: Default::default(),
        svc: true,
    })
}

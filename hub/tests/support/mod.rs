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
        if let Some(url) = database_url {
            cmd.env("FLOWHUB_DATABASE_URL", url);
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

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
        panic!("hub child process did not become ready on port {}", self.port);
    }

    /// SIGKILL: no drain, no flush.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("kill -9");
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

//! `flowhub migrate` and the schema checks of `serve`, through the real binary, on
//! PostgreSQL (a fresh database per test) and on the embedded SQLite default (a file in
//! a temp data directory).
//!
//! - `migrate` on an empty database records 1..3 in `_sqlx_migrations` with sqlx's
//!   checksums of the files, a second run does nothing, and `serve` then comes up.
//! - A database recording a migration newer than the binary, or one whose checksum
//!   differs, is refused by `serve` (and `migrate`) with a clear message on stderr and a
//!   non-zero exit, and is left as it was.
//! - A database made by the previous hand-written runner (`flowhub_migrations`) is
//!   adopted without running its SQL again, and keeps its data.
//!
//! PostgreSQL must be running (see `support`); these tests fail, never skip, without it.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use flowhub::sql_store::SqlStore;
use flowhub_actors::store::{ChangeRecord, Store};
use sqlx::{AnyConnection, AssertSqlSafe, Connection};
use support::{free_port, fresh_postgres_database, HubProcess, SECRET};

/// Where a test's database lives; the binary finds it as `serve` would.
struct Target {
    backend: &'static str,
    dir: tempfile::TempDir,
    /// `FLOWHUB_DATABASE_URL`; `None`: the embedded default in `dir`.
    database_url: Option<String>,
}

impl Target {
    async fn postgres() -> Target {
        Target {
            backend: "postgres",
            dir: tempfile::tempdir().unwrap(),
            database_url: Some(fresh_postgres_database().await),
        }
    }

    fn embedded_sqlite() -> Target {
        Target {
            backend: "sqlite",
            dir: tempfile::tempdir().unwrap(),
            database_url: None,
        }
    }

    async fn new(backend: &str) -> Target {
        match backend {
            "postgres" => Target::postgres().await,
            _ => Target::embedded_sqlite(),
        }
    }

    /// The URL the test itself connects with (`mode=rwc`: the adoption test creates
    /// the SQLite file before any flowhub ran).
    fn url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.dir.path().join("flowhub.db").display()
            ),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        self.database_url
            .iter()
            .map(|u| ("FLOWHUB_DATABASE_URL", u.clone()))
            .collect()
    }

    /// Runs `flowhub <args>` to completion.
    async fn flowhub(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowhub"));
        cmd.args(args)
            .env_remove("FLOWHUB_DATABASE_URL")
            .env_remove("FLOWHUB_REDIS_URL")
            .env("FLOWHUB_DATA_DIR", self.dir.path())
            .env("FLOWHUB_JWT_SECRET", SECRET)
            .env("FLOWHUB_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        // Only a guard against a hang (a refused `serve` that starts serving instead):
        // the assertions are on the exit status and output.
        tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("flowhub {args:?} did not exit"))
            .expect("run flowhub")
    }

    async fn migrate(&self) -> Output {
        self.flowhub(&["migrate"]).await
    }

    /// `serve` as a child process, waiting for `/readyz` 200 (panics otherwise).
    async fn serve(&self) -> HubProcess {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        HubProcess::start_env(self.dir.path(), free_port(), &env).await
    }

    async fn sql(&self) -> AnyConnection {
        sqlx::any::install_default_drivers();
        AnyConnection::connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("test connects to the {} database: {e}", self.backend))
    }

    fn migrations_dir(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../migrations")
            .join(self.backend)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// `_sqlx_migrations` as `(version, success, checksum)`, by version.
async fn recorded(target: &Target) -> Vec<(i64, bool, Vec<u8>)> {
    let mut conn = target.sql().await;
    // Booleans read as integers on SQLite through `Any`; compare with TRUE instead.
    let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT version, CASE WHEN success THEN 1 ELSE 0 END, checksum \
         FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await
    .expect("read _sqlx_migrations");
    rows.into_iter()
        .map(|(v, ok, sum)| (v, ok == 1, sum))
        .collect()
}

/// What sqlx itself reads from the backend's migration files: `(version, true, checksum)`.
async fn expected(target: &Target) -> Vec<(i64, bool, Vec<u8>)> {
    let migrator = sqlx::migrate::Migrator::new(target.migrations_dir().as_path())
        .await
        .expect("sqlx reads the migration directory");
    migrator
        .iter()
        .map(|m| (m.version, true, m.checksum.to_vec()))
        .collect()
}

/// Generates `sqlite_<name>` and `postgres_<name>` tests running `async fn <name>(backend)`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("sqlite").await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("postgres").await;
                }
            )*
        }
    };
}

on_both_backends!(
    migrate_on_empty_database_then_serve,
    newer_schema_is_refused,
    checksum_mismatch_is_refused,
    old_runner_database_is_adopted_and_keeps_its_data,
);

async fn migrate_on_empty_database_then_serve(backend: &str) {
    let target = Target::new(backend).await;

    let out = target.migrate().await;
    assert_success("flowhub migrate", &out);
    let stdout = text(&out.stdout);
    for line in [
        "applied migration 1 (init)",
        "applied migration 2 (run state)",
        "applied migration 3 (flow versions)",
        "applied migration 4 (history)",
        &format!("{backend} schema now at version 4"),
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let after_first = recorded(&target).await;
    assert_eq!(after_first, expected(&target).await);

    // Twice is a no-op: nothing applied, the record untouched.
    let out = target.migrate().await;
    assert_success("second flowhub migrate", &out);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "{backend} schema already at version 4: nothing to do"
        )),
        "{stdout}"
    );
    assert!(!stdout.contains("applied migration"), "{stdout}");
    assert_eq!(recorded(&target).await, after_first);

    // `serve` finds nothing to do and comes up (`/readyz` 200).
    let hub = target.serve().await;
    let status = hub.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "serve exited with {status}");
    assert_eq!(recorded(&target).await, after_first);
}

async fn newer_schema_is_refused(backend: &str) {
    let target = Target::new(backend).await;
    assert_success("flowhub migrate", &target.migrate().await);
    // What a flowhub two releases ahead would have left.
    let mut conn = target.sql().await;
    for version in [5i64, 6] {
        sqlx::query(
            "INSERT INTO _sqlx_migrations \
             (version, description, success, checksum, execution_time) \
             VALUES ($1, 'from the future', TRUE, $2, 0)",
        )
        .bind(version)
        .bind(vec![7u8; 48])
        .execute(&mut conn)
        .await
        .expect("record a future migration");
    }
    let before = recorded(&target).await;

    let message = "database schema is at version 6, this flowhub knows up to 4: \
                   upgrade flowhub or restore the database";
    for command in ["serve", "demo", "migrate"] {
        let out = target.flowhub(&[command]).await;
        assert!(
            !out.status.success(),
            "flowhub {command} must refuse a newer schema; stdout: {}",
            text(&out.stdout)
        );
        let stderr = text(&out.stderr);
        assert!(stderr.contains(message), "flowhub {command}: {stderr}");
    }
    assert_eq!(recorded(&target).await, before, "a refusal changes nothing");
}

async fn checksum_mismatch_is_refused(backend: &str) {
    let target = Target::new(backend).await;
    assert_success("flowhub migrate", &target.migrate().await);
    let mut conn = target.sql().await;
    sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = 2")
        .bind(vec![0u8; 48])
        .execute(&mut conn)
        .await
        .expect("alter a checksum");

    for command in ["serve", "migrate"] {
        let out = target.flowhub(&[command]).await;
        assert!(!out.status.success(), "flowhub {command} must refuse");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(
                "migration 2 (run state) recorded in the database differs from the one \
                 built into this flowhub (checksum mismatch)"
            ),
            "flowhub {command}: {stderr}"
        );
    }
}

/// A database as the previous runner left it: each file's SQL run as is, its version in
/// `flowhub_migrations` (`version`, `applied_at`), and no `_sqlx_migrations`.
async fn old_runner_database(target: &Target, versions: &[i64]) {
    let mut conn = target.sql().await;
    sqlx::raw_sql(
        "CREATE TABLE flowhub_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut conn)
    .await
    .expect("create flowhub_migrations");
    let migrator = sqlx::migrate::Migrator::new(target.migrations_dir().as_path())
        .await
        .expect("sqlx reads the migration directory");
    for m in migrator.iter().filter(|m| versions.contains(&m.version)) {
        let mut tx = conn.begin().await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(m.sql.as_str().to_owned()))
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("old runner applies {}: {e}", m.version));
        sqlx::query("INSERT INTO flowhub_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(m.version)
            .bind(1_700_000_000_000i64)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    // Data written by that release: a flow with one change, and a member.
    sqlx::raw_sql(
        "INSERT INTO flows (id, created_at, updated_at) VALUES ('kept', 1, 1); \
         INSERT INTO flow_members (flow_id, user_id, role) VALUES ('kept', 'alice', 'editor');",
    )
    .execute(&mut conn)
    .await
    .expect("old data");
    sqlx::query(
        "INSERT INTO flow_changes (flow_id, hash, bytes, created_at) VALUES ('kept', $1, $2, 1)",
    )
    .bind("ab".repeat(32))
    .bind(vec![0u8, 1, 2, 254, 255])
    .execute(&mut conn)
    .await
    .expect("old change");
}

async fn old_runner_database_is_adopted_and_keeps_its_data(backend: &str) {
    let target = Target::new(backend).await;
    old_runner_database(&target, &[1, 2, 3]).await;

    let out = target.migrate().await;
    assert_success("flowhub migrate", &out);
    let stdout = text(&out.stdout);
    for line in [
        "adopted migration 1 (init)",
        "adopted migration 2 (run state)",
        "adopted migration 3 (flow versions)",
        "applied migration 4 (history)",
        &format!("{backend} schema now at version 4"),
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // Running any adopted file again would have failed on its CREATE TABLE or ADD
    // COLUMN; only the one the old runner never had is applied.
    for adopted in 1..=3 {
        assert!(
            !stdout.contains(&format!("applied migration {adopted} ")),
            "{stdout}"
        );
    }
    assert_eq!(recorded(&target).await, expected(&target).await);

    let out = target.migrate().await;
    assert_success("second flowhub migrate", &out);
    assert!(text(&out.stdout).contains("nothing to do"));

    // The hub serves it, and the old data is there.
    let hub = target.serve().await;
    assert!(hub.terminate(Duration::from_secs(30)).await.success());
    assert_keeps_old_data(&target).await;
}

async fn assert_keeps_old_data(target: &Target) {
    let url = target
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/flowhub.db", target.dir.path().display()));
    let store = SqlStore::connect(&url).await.expect("store opens");
    let flow = store.load_flow("kept").await.expect("load");
    assert!(flow.exists);
    assert_eq!(
        flow.changes,
        vec![ChangeRecord {
            hash: "ab".repeat(32),
            bytes: vec![0, 1, 2, 254, 255],
        }]
    );
    assert_eq!(
        store
            .flow_role("kept", "alice")
            .await
            .expect("role")
            .as_deref(),
        Some("editor")
    );
    assert_eq!(
        store.schema_versions().await.expect("versions"),
        [1, 2, 3, 4]
    );
    store.close().await;
}

/// A database from an older release (the runner had applied 1 and 2): `serve` adopts
/// those and applies 3 and 4 itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_adopts_an_older_runner_database_and_applies_the_rest() {
    let target = Target::postgres().await;
    old_runner_database(&target, &[1, 2]).await;

    let hub = target.serve().await;
    assert!(hub.terminate(Duration::from_secs(30)).await.success());
    assert_eq!(recorded(&target).await, expected(&target).await);
    assert_keeps_old_data(&target).await;
}

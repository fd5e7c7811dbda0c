//! The durable [`Store`]: SQLite or PostgreSQL through sqlx.
//!
//! # Guarantees (those of [`flowhub_actors::store`], and how they are kept)
//! - [`Store::append_changes`] returns only after the transaction holding the changes has
//!   committed. SQLite runs in WAL mode with `synchronous = NORMAL`: a commit survives a
//!   crash of the hub process (kill -9), because the WAL write has reached the OS before
//!   the commit returns; only an OS crash or power loss may drop the last commits.
//!   PostgreSQL follows the server's `synchronous_commit` (on by default).
//! - Appends are idempotent: `INSERT ... ON CONFLICT (flow_id, hash) DO NOTHING`.
//! - [`Store::load_flow`] reads the flow row, the snapshot and the changes in one read
//!   transaction (SQLite: one WAL read snapshot; PostgreSQL: `REPEATABLE READ`), so it
//!   sees a concurrent compaction's snapshot entirely or not at all. Changes come in
//!   `seq` order, which is append order.
//! - [`Store::compact`] writes the snapshot (conditionally) in one transaction, then
//!   deletes exactly the covered hashes, a hundred per transaction; every other change,
//!   including one appended meanwhile, stays. A load between the two sees some covered
//!   changes beside the snapshot: harmless, since applying a change a document already
//!   has is a no-op. Each of these transactions runs in the writer's turn, between two
//!   append batches (on SQLite, one compaction transaction beside the group commit held
//!   the write lock for 10-20 ms while every append slept in the busy handler).
//!
//! # Group commit
//! Appends do not open a transaction each. One writer task per [`SqlStore`] receives them
//! over a bounded channel, takes everything already queued (up to 256 requests or 4 MiB),
//! writes it in one transaction and answers every caller after the commit. Under load the
//! cost of a commit (an fsync on PostgreSQL, a lock round on SQLite) is shared by many
//! appends; an idle store still commits a lone append at once. A batch is one command
//! (SQLite: `BEGIN IMMEDIATE`, both inserts and `COMMIT` in one command; PostgreSQL: one
//! statement, the flows upsert a `WITH` of the changes insert), since at low load the
//! round trips, not the writes, were an append's cost. See the `writer` module.
//! On SQLite the writer also starts the WAL checkpoints, on another connection beside
//! its commits rather than inside one of them (the `checkpoint` module).
//!
//! # Limits
//! - Compaction deletes covered rows, so it forgets their hashes: a covered change
//!   appended again later (a client resending) is stored again and loaded after the
//!   snapshot. Harmless, since applying a change a document already has is a no-op.
//! - A compaction always replaces the snapshot; the store cannot tell an older snapshot
//!   from a newer one, so only one node (the flow's owner) should compact a flow.
//! - `connect` keeps retrying an unreachable database until the 10 s acquire timeout.
//!
//! # A hung database fails calls, it does not hang them
//! A database that stops answering (a black-holed network, a frozen server) would make
//! sqlx wait forever on an open connection. Every [`Store`] call is therefore bounded:
//! appends by [`APPEND_TIMEOUT`], reads by [`READ_TIMEOUT`], other writes by
//! [`WRITE_TIMEOUT`]; past it the call fails with the retryable
//! [`StoreError::Unavailable`]. A timed-out append is never acknowledged; its
//! transaction may still commit later, which is harmless since appends are idempotent
//! (the client resends what it was not acked).
//!
//! # Why two typed pools and not `AnyPool`
//! `DbPool` is an enum of a `SqlitePool` and a `PgPool`, and `with_pool!` expands one
//! body (same SQL: both drivers accept `$N` placeholders) for each. `AnyPool` would also
//! give one code path, but:
//! - `AnyConnectOptions` can only be parsed from a URL, and the SQLite URL knows only
//!   `mode`/`cache`/`immutable`/`vfs`: WAL, `synchronous` and `busy_timeout` would become
//!   PRAGMAs in an `after_connect` hook instead of typed `SqliteConnectOptions`;
//! - every argument and row goes through Any's reduced value model, while the typed
//!   drivers keep native BLOB/BYTEA and INT8 handling and their own error types (used to
//!   tell an outage from a bad query, see the `error` module);
//! - no process-global driver registry (`install_default_drivers`) to remember.
//!
//! The backends differ only in the `BEGIN` statements (`DbPool::begin_write`,
//! `DbPool::begin_read`) and in how the `migrate` module serialises migrations.

/// Runs `$body` (a block, compiled once per backend) as an async block with `$p` bound to
/// the concrete pool, and awaits it. The block's value must be a `sqlx::Result`.
macro_rules! with_pool {
    ($pool:expr, |$p:ident| $body:block) => {
        match $pool {
            $crate::sql_store::DbPool::Sqlite($p) => async $body.await,
            $crate::sql_store::DbPool::Postgres($p) => async $body.await,
        }
    };
}

mod checkpoint;
mod error;
mod migrate;
mod runs;
mod writer;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use flowhub_actors::store::{
    ActorBinding, ChangeRecord, FlowVersions, MemberAccess, NamedVersion, Snapshot, Store,
    StoreError, StoredFlow,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, PgPool, SqlitePool};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn, Instrument};

use error::db_error;
pub use migrate::{known_version, ConnectError, MigrationInfo, MigrationReport};
pub use writer::StoreStats;

/// How long a SQLite statement waits for another connection's write lock (the writer
/// task, a compaction, another process) before failing with `SQLITE_BUSY`.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// SQLite serialises writers anyway; more connections only help concurrent readers.
const SQLITE_MAX_CONNECTIONS: u32 = 8;
/// The default PostgreSQL pool size per node ([`SqlStore::connect_with_pool`] sets
/// another): a fleet needs nodes × this many server connections.
pub const PG_MAX_CONNECTIONS: u32 = 16;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Appends waiting for the writer; beyond this, `append_changes` waits (backpressure).
const WRITER_QUEUE: usize = 4096;
/// The longest an append waits for its commit, time in the writer's queue included. A
/// healthy group commit takes milliseconds (a few hundred at worst under heavy load);
/// past this the database is not answering, and the editor is better told to retry
/// (the flow actor refuses the edit and the client resends) than left without an
/// answer. The writer bounds each batch by the same time, so it is never wedged.
pub const APPEND_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a read (`load_flow`, `member_access`, `ping`, …) may take. Reads are
/// single indexed lookups or one flow's change log: well under a second when the
/// database is healthy, and a caller (opening a flow, a subscribe, an HTTP request)
/// should learn quickly that it is not.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a write other than an append (compaction, a member change) may take;
/// like appends, a bit of queueing behind other writers is normal.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Hashes per `DELETE ... IN (...)` during compaction, each in its own transaction:
/// on SQLite about a millisecond of the write lock at a time (see `compact`).
const DELETE_CHUNK: usize = 100;
/// Flow ids per `flow_versions` query: far below both backends' parameter limits.
const VERSION_QUERY_IDS: usize = 500;

/// Runs one store call under `limit`; past it the call fails with the retryable
/// [`StoreError::Unavailable`] (see the module doc on hung databases).
async fn bounded<T>(
    limit: Duration,
    what: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => {
            warn!(
                operation = what,
                timeout_ms = limit.as_millis() as u64,
                "store call timed out; the database is not answering"
            );
            Err(timed_out(what, limit))
        }
    }
}

fn timed_out(what: &str, limit: Duration) -> StoreError {
    StoreError::Unavailable(format!(
        "{what} timed out after {limit:?}: the database is not answering"
    ))
}

/// The pool of one backend. See the module doc for why this is not `AnyPool`.
#[derive(Debug, Clone)]
pub(crate) enum DbPool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl DbPool {
    fn backend(&self) -> &'static str {
        match self {
            DbPool::Sqlite(_) => "sqlite",
            DbPool::Postgres(_) => "postgres",
        }
    }

    /// Starts a transaction that will write. SQLite takes the write lock up front
    /// (`IMMEDIATE`) so the busy timeout applies; a deferred transaction that reads
    /// first and then writes can fail at once with `SQLITE_BUSY` instead of waiting.
    fn begin_write(&self) -> &'static str {
        match self {
            DbPool::Sqlite(_) => "BEGIN IMMEDIATE",
            DbPool::Postgres(_) => "BEGIN",
        }
    }

    /// Starts a read-only transaction whose statements all see one snapshot. SQLite in
    /// WAL mode does that for any transaction; PostgreSQL's default `READ COMMITTED`
    /// takes a new snapshot per statement, hence `REPEATABLE READ`.
    fn begin_read(&self) -> &'static str {
        match self {
            DbPool::Sqlite(_) => "BEGIN",
            DbPool::Postgres(_) => "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        }
    }

    async fn close(&self) {
        match self {
            DbPool::Sqlite(p) => p.close().await,
            DbPool::Postgres(p) => p.close().await,
        }
    }
}

/// Durable flow storage on SQLite or PostgreSQL; see the module doc.
///
/// Cloning is cheap and clones share the pool and the writer (so also the stats, and
/// [`SqlStore::close`] on one closes all). Call `close` at shutdown to flush queued
/// appends and close the pool.
#[derive(Clone)]
pub struct SqlStore {
    pool: DbPool,
    writer: mpsc::Sender<writer::Command>,
    counters: Arc<writer::Counters>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl SqlStore {
    /// Runs `write` in the writer's turn, between two append batches (see
    /// `writer::ExclusiveWrite`), and returns its result. The write and the wait for
    /// it are each bounded by [`WRITE_TIMEOUT`], so a hung database never wedges the
    /// writer; a write whose caller gave up while it queued is not run.
    async fn exclusive<T, F, Fut>(&self, what: &'static str, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(DbPool) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: writer::ExclusiveWrite = Box::new(move |pool| {
            Box::pin(async move {
                if reply.is_closed() {
                    return;
                }
                let _ = reply.send(bounded(WRITE_TIMEOUT, what, write(pool)).await);
            })
        });
        let run = self.through_writer(writer::Command::Exclusive(job), answer);
        bounded(WRITE_TIMEOUT, what, run).await
    }

    /// Queues `command` to the writer and waits for its answer. A dropped reply means
    /// the writer stopped before it got to the command.
    async fn through_writer<T>(
        &self,
        command: writer::Command,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.writer
            .send(command)
            .await
            .map_err(|_| writer::closed_error())?;
        answer.await.map_err(|_| writer::closed_error())?
    }

    /// Connects, applies pending migrations and starts the writer task.
    ///
    /// `url` is `sqlite://path/to/file.db` (the file is created if missing) or
    /// `postgres://user@host:port/db` (`postgresql://` works too). A database whose
    /// schema this binary cannot serve (newer, or migrated by a different build) is
    /// refused with a [`ConnectError`] naming the problem; see the `migrate` module.
    pub async fn connect(url: &str) -> Result<SqlStore, ConnectError> {
        Self::connect_with_pool(url, PG_MAX_CONNECTIONS).await
    }

    /// [`SqlStore::connect`] with at most `pg_connections` PostgreSQL connections
    /// (ignored for SQLite). Many nodes on one server need a smaller pool each (the
    /// server's `max_connections` is shared by all of them), or a pooler in front.
    pub async fn connect_with_pool(
        url: &str,
        pg_connections: u32,
    ) -> Result<SqlStore, ConnectError> {
        let (pool, report) = Self::open_and_migrate(url, pg_connections.max(2)).await?;
        let counters = Arc::new(writer::Counters::default());
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        tokio::spawn(writer::run(pool.clone(), rx, counters.clone()));
        info!(
            backend = pool.backend(),
            schema_version = report.version,
            "store connected"
        );
        Ok(SqlStore {
            pool,
            writer: tx,
            counters,
        })
    }

    /// Connects, brings the schema up to this binary's (or refuses it, as
    /// [`SqlStore::connect`] does), and closes again: `flowhub migrate`, run once before
    /// the nodes of a new release start.
    pub async fn migrate(url: &str) -> Result<MigrationReport, ConnectError> {
        let (pool, report) = Self::open_and_migrate(url, 2).await?;
        pool.close().await;
        Ok(report)
    }

    /// Opens the pool and migrates, again while a SQLite file is busy.
    ///
    /// Switching a new SQLite file to WAL needs a moment of exclusive access, and SQLite
    /// answers "database is locked" at once (no busy wait) when another process is
    /// migrating the same file: two nodes starting together on one file must wait their
    /// turn rather than fail.
    async fn open_and_migrate(
        url: &str,
        pg_connections: u32,
    ) -> Result<(DbPool, MigrationReport), ConnectError> {
        let mut delay = Duration::from_millis(50);
        for _ in 0..12 {
            match Self::open_and_migrate_once(url, pg_connections).await {
                Err(ConnectError::Store(StoreError::Unavailable(m)))
                    if url.starts_with("sqlite:")
                        && (m.contains("locked") || m.contains("busy")) =>
                {
                    debug!(error = %m, "sqlite busy while opening; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
        Self::open_and_migrate_once(url, pg_connections).await
    }

    async fn open_and_migrate_once(
        url: &str,
        pg_connections: u32,
    ) -> Result<(DbPool, MigrationReport), ConnectError> {
        let pool = open_pool(url, pg_connections).await?;
        match migrate::run(&pool).await {
            Ok(report) => Ok((pool, report)),
            Err(e) => {
                pool.close().await;
                Err(e)
            }
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        self.pool.backend()
    }

    /// Group-commit counters since connect (committed batches, appends and changes).
    pub fn stats(&self) -> StoreStats {
        self.counters.snapshot()
    }

    /// Migration versions recorded as applied in `_sqlx_migrations`, ascending.
    pub async fn schema_versions(&self) -> Result<Vec<i64>, StoreError> {
        migrate::applied(&self.pool).await.map_err(db_error)
    }

    /// The role of `user_id` on `flow_id`, if any.
    pub async fn flow_role(
        &self,
        flow_id: &str,
        user_id: &str,
    ) -> Result<Option<String>, StoreError> {
        with_pool!(&self.pool, |p| {
            let row: Option<(String,)> =
                sqlx::query_as("SELECT role FROM flow_members WHERE flow_id = $1 AND user_id = $2")
                    .bind(flow_id)
                    .bind(user_id)
                    .fetch_optional(p)
                    .await?;
            Ok::<_, sqlx::Error>(row.map(|(role,)| role))
        })
        .map_err(db_error)
    }

    /// Grants `role` to `user_id` on `flow_id` (replacing any previous role), or revokes
    /// access when `role` is `None`. Does not create the flow.
    pub async fn set_flow_member(
        &self,
        flow_id: &str,
        user_id: &str,
        role: Option<&str>,
    ) -> Result<(), StoreError> {
        let begin = self.pool.begin_write();
        with_pool!(&self.pool, |p| {
            let mut tx = p.begin_with(begin).await?;
            match role {
                Some(role) => {
                    sqlx::query(
                        "INSERT INTO flow_members (flow_id, user_id, role) VALUES ($1, $2, $3) \
                         ON CONFLICT (flow_id, user_id) DO UPDATE SET role = excluded.role",
                    )
                    .bind(flow_id)
                    .bind(user_id)
                    .bind(role)
                    .execute(&mut *tx)
                    .await?
                }
                None => {
                    sqlx::query("DELETE FROM flow_members WHERE flow_id = $1 AND user_id = $2")
                        .bind(flow_id)
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?
                }
            };
            // Nodes that missed the bus message notice this on their next poll.
            sqlx::query(
                "INSERT INTO flow_member_versions (flow_id, version) VALUES ($1, 1) \
                 ON CONFLICT (flow_id) DO UPDATE SET version = flow_member_versions.version + 1",
            )
            .bind(flow_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(())
        })
        .map_err(db_error)
    }

    /// Flushes the appends queued so far, stops the writer and closes the pool. Appends
    /// made after this fail with [`StoreError::Unavailable`]. Calling it twice is fine.
    pub async fn close(&self) {
        let (done, flushed) = oneshot::channel();
        if self.writer.send(writer::Command::Close(done)).await.is_ok() {
            // An error means the writer already stopped; nothing left to flush.
            let _ = flushed.await;
        }
        self.pool.close().await;
        info!(backend = self.backend(), "store closed");
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn member_access(
        &self,
        flow_id: &str,
        user_id: &str,
    ) -> Result<Option<MemberAccess>, StoreError> {
        let role = bounded(
            READ_TIMEOUT,
            "member_access",
            self.flow_role(flow_id, user_id),
        )
        .await?;
        match role {
            None => Ok(None),
            Some(role) => MemberAccess::parse(&role)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt(format!("flow_members role `{role}`"))),
        }
    }

    async fn set_member_access(
        &self,
        flow_id: &str,
        user_id: &str,
        access: Option<MemberAccess>,
    ) -> Result<(), StoreError> {
        bounded(
            WRITE_TIMEOUT,
            "set_member_access",
            self.set_flow_member(flow_id, user_id, access.map(MemberAccess::as_str)),
        )
        .await
    }

    async fn flow_versions(
        &self,
        flow_ids: &[String],
    ) -> Result<Vec<(String, FlowVersions)>, StoreError> {
        let mut versions: std::collections::HashMap<String, FlowVersions> = Default::default();
        for chunk in flow_ids.chunks(VERSION_QUERY_IDS) {
            let list = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let flows_sql = format!("SELECT id, version FROM flows WHERE id IN ({list})");
            let members_sql = format!(
                "SELECT flow_id, version FROM flow_member_versions WHERE flow_id IN ({list})"
            );
            let (flows, members) = with_pool!(&self.pool, |p| {
                let mut flows = sqlx::query_as::<_, (String, i64)>(AssertSqlSafe(flows_sql));
                let mut members = sqlx::query_as::<_, (String, i64)>(AssertSqlSafe(members_sql));
                for id in chunk {
                    flows = flows.bind(id);
                    members = members.bind(id);
                }
                let flows = flows.fetch_all(p).await?;
                let members = members.fetch_all(p).await?;
                Ok::<_, sqlx::Error>((flows, members))
            })
            .map_err(db_error)?;
            for (id, v) in flows {
                versions.entry(id).or_default().changes = v as u64;
            }
            for (id, v) in members {
                versions.entry(id).or_default().members = v as u64;
            }
        }
        Ok(versions.into_iter().collect())
    }

    async fn load_flow(&self, flow_id: &str) -> Result<StoredFlow, StoreError> {
        let begin = self.pool.begin_read();
        let load = async {
            with_pool!(&self.pool, |p| {
                let mut tx = p.begin_with(begin).await?;
                // Versions first: whatever commits after this read shows as newer later.
                let members: Option<(i64,)> =
                    sqlx::query_as("SELECT version FROM flow_member_versions WHERE flow_id = $1")
                        .bind(flow_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let row: Option<(i64,)> = sqlx::query_as("SELECT version FROM flows WHERE id = $1")
                    .bind(flow_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let versions = FlowVersions {
                    changes: row.map_or(0, |(v,)| v as u64),
                    members: members.map_or(0, |(v,)| v as u64),
                };
                if row.is_none() {
                    tx.rollback().await?;
                    return Ok(StoredFlow {
                        versions,
                        ..StoredFlow::default()
                    });
                }
                let snapshot: Option<(Vec<u8>, String)> =
                    sqlx::query_as("SELECT bytes, heads FROM flow_snapshots WHERE flow_id = $1")
                        .bind(flow_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let changes: Vec<(String, Vec<u8>)> = sqlx::query_as(
                    "SELECT hash, bytes FROM flow_changes WHERE flow_id = $1 ORDER BY seq",
                )
                .bind(flow_id)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(StoredFlow {
                    exists: true,
                    snapshot_heads: snapshot
                        .as_ref()
                        .and_then(|(_, heads)| serde_json::from_str(heads).ok()),
                    snapshot: snapshot.map(|(bytes, _)| bytes),
                    changes: changes
                        .into_iter()
                        .map(|(hash, bytes)| ChangeRecord { hash, bytes })
                        .collect(),
                    versions,
                })
            })
            .map_err(db_error)
        };
        let flow = bounded(READ_TIMEOUT, "load_flow", load).await?;
        debug!(
            flow_id,
            exists = flow.exists,
            snapshot = flow.snapshot.is_some(),
            changes = flow.changes.len(),
            "flow loaded"
        );
        Ok(flow)
    }

    async fn append_changes(
        &self,
        flow_id: &str,
        changes: &[ChangeRecord],
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = writer::AppendRequest {
            flow_id: flow_id.to_owned(),
            changes: changes.to_vec(),
            reply,
        };
        let append = self.through_writer(writer::Command::Append(request), answer);
        // On timeout the reply is dropped: the writer then skips the request if it has
        // not started on it, and a commit already under way is harmless (idempotent).
        let span = tracing::trace_span!(
            target: flowhub_actors::EDIT_PATH_TARGET,
            "store.append",
            flow_id,
            changes = changes.len(),
        );
        bounded(APPEND_TIMEOUT, "append_changes", append)
            .instrument(span)
            .await
    }

    async fn compact(
        &self,
        flow_id: &str,
        snapshot: Snapshot,
        covered: &[String],
    ) -> Result<(), StoreError> {
        let heads = serde_json::to_string(&snapshot.heads)
            .map_err(|e| StoreError::Query(format!("encoding snapshot heads: {e}")))?;
        let base = match &snapshot.base_heads {
            Some(b) => Some(
                serde_json::to_string(b)
                    .map_err(|e| StoreError::Query(format!("encoding snapshot heads: {e}")))?,
            ),
            None => None,
        };
        let snapshot_bytes = snapshot.bytes.len();
        let write = SnapshotWrite {
            flow_id: flow_id.to_owned(),
            heads,
            base,
            bytes: snapshot.bytes,
            now: now_ms(),
        };
        // Each step in the writer's turn (see `writer::ExclusiveWrite`), and the deletes
        // in short transactions with append batches between them: on SQLite one
        // transaction deleting a thousand changes held the write lock for 10-20 ms
        // while every flow's appends waited.
        let written = self
            .exclusive("compact", move |pool| async move { write.run(&pool).await })
            .await?;
        if !written {
            return Err(StoreError::Conflict(format!(
                "flow {flow_id}: the snapshot changed since it was read"
            )));
        }
        let mut deleted = 0u64;
        for chunk in covered.chunks(DELETE_CHUNK) {
            let flow = flow_id.to_owned();
            let hashes = chunk.to_vec();
            deleted += self
                .exclusive("compact", move |pool| async move {
                    delete_changes(&pool, &flow, &hashes).await
                })
                .await?;
        }
        debug!(
            flow_id,
            covered = covered.len(),
            deleted,
            snapshot_bytes,
            "flow compacted"
        );
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let ping = async {
            with_pool!(&self.pool, |p| {
                sqlx::query("SELECT 1").execute(p).await?;
                Ok::<_, sqlx::Error>(())
            })
            .map_err(db_error)
        };
        bounded(READ_TIMEOUT, "ping", ping).await
    }

    async fn flow_actors(&self, flow_id: &str) -> Result<Vec<ActorBinding>, StoreError> {
        let read = async {
            with_pool!(&self.pool, |p| {
                let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
                    "SELECT actor, user_id, user_name, first_seen_ms FROM flow_actors \
                     WHERE flow_id = $1 ORDER BY actor",
                )
                .bind(flow_id)
                .fetch_all(p)
                .await?;
                Ok::<_, sqlx::Error>(rows)
            })
            .map_err(db_error)
        };
        let rows = bounded(READ_TIMEOUT, "flow_actors", read).await?;
        Ok(rows
            .into_iter()
            .map(|(actor, user_id, user_name, first_seen_ms)| ActorBinding {
                actor,
                user_id,
                user_name,
                first_seen_ms,
            })
            .collect())
    }

    async fn bind_actors(
        &self,
        flow_id: &str,
        bindings: &[ActorBinding],
    ) -> Result<(), StoreError> {
        if bindings.is_empty() {
            return Ok(());
        }
        let begin = self.pool.begin_write();
        let write = async {
            with_pool!(&self.pool, |p| {
                let mut tx = p.begin_with(begin).await?;
                for b in bindings {
                    sqlx::query(
                        "INSERT INTO flow_actors (flow_id, actor, user_id, user_name, first_seen_ms) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (flow_id, actor) DO NOTHING",
                    )
                    .bind(flow_id)
                    .bind(&b.actor)
                    .bind(&b.user_id)
                    .bind(&b.user_name)
                    .bind(b.first_seen_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok::<_, sqlx::Error>(())
            })
            .map_err(db_error)
        };
        bounded(WRITE_TIMEOUT, "bind_actors", write).await
    }

    async fn named_versions(&self, flow_id: &str) -> Result<Vec<NamedVersion>, StoreError> {
        let read = async {
            with_pool!(&self.pool, |p| {
                let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
                    "SELECT name, heads, user_id, created_at_ms FROM flow_named_versions \
                     WHERE flow_id = $1 ORDER BY created_at_ms, name",
                )
                .bind(flow_id)
                .fetch_all(p)
                .await?;
                Ok::<_, sqlx::Error>(rows)
            })
            .map_err(db_error)
        };
        let rows = bounded(READ_TIMEOUT, "named_versions", read).await?;
        Ok(rows
            .into_iter()
            .map(|(name, heads, user_id, created_at_ms)| NamedVersion {
                name,
                heads: heads
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
                    .collect(),
                user_id,
                created_at_ms,
            })
            .collect())
    }

    async fn put_named_version(
        &self,
        flow_id: &str,
        version: &NamedVersion,
    ) -> Result<bool, StoreError> {
        let begin = self.pool.begin_write();
        let heads = version.heads.join(",");
        let write = async {
            with_pool!(&self.pool, |p| {
                let mut tx = p.begin_with(begin).await?;
                let done = sqlx::query(
                    "INSERT INTO flow_named_versions (flow_id, name, heads, user_id, created_at_ms) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (flow_id, name) DO NOTHING",
                )
                .bind(flow_id)
                .bind(&version.name)
                .bind(&heads)
                .bind(&version.user_id)
                .bind(version.created_at_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok::<_, sqlx::Error>(done == 1)
            })
            .map_err(db_error)
        };
        bounded(WRITE_TIMEOUT, "put_named_version", write).await
    }

    async fn delete_named_version(&self, flow_id: &str, name: &str) -> Result<bool, StoreError> {
        let begin = self.pool.begin_write();
        let write = async {
            with_pool!(&self.pool, |p| {
                let mut tx = p.begin_with(begin).await?;
                let done =
                    sqlx::query("DELETE FROM flow_named_versions WHERE flow_id = $1 AND name = $2")
                        .bind(flow_id)
                        .bind(name)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                tx.commit().await?;
                Ok::<_, sqlx::Error>(done == 1)
            })
            .map_err(db_error)
        };
        bounded(WRITE_TIMEOUT, "delete_named_version", write).await
    }
}

/// Whether `url` names a PostgreSQL server (anything else is SQLite or refused).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Opens the pool for `url` with the options of its backend (see the module doc).
async fn open_pool(url: &str, pg_connections: u32) -> Result<DbPool, StoreError> {
    if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(db_error)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true)
            // Checkpoints run beside the writer, not inside its commits: see the
            // `checkpoint` module.
            .pragma(
                "wal_autocheckpoint",
                checkpoint::WAL_AUTOCHECKPOINT_PAGES.to_string(),
            );
        let pool = SqlitePoolOptions::new()
            .max_connections(SQLITE_MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // No ping before each use: a connection to a local file does not go stale,
            // and the ping is a round trip to the connection's worker thread (two
            // thread wake-ups) before every transaction, appends included.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(db_error)?;
        Ok(DbPool::Sqlite(pool))
    } else if is_postgres_url(url) {
        let options = PgConnectOptions::from_str(url).map_err(db_error)?;
        let pool = PgPoolOptions::new()
            .max_connections(pg_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(db_error)?;
        Ok(DbPool::Postgres(pool))
    } else {
        // Only the scheme is echoed: the rest of the URL may hold a password.
        let scheme = url.split(':').next().unwrap_or_default();
        Err(StoreError::Unavailable(format!(
            "unsupported database url scheme {scheme:?} (expected sqlite:// or postgres://)"
        )))
    }
}

/// A compaction's snapshot (see [`SqlStore::compact`]), owned so that the writer task
/// can write it.
struct SnapshotWrite {
    flow_id: String,
    heads: String,
    base: Option<String>,
    bytes: Vec<u8>,
    now: i64,
}

impl SnapshotWrite {
    /// Writes the snapshot over the one it was built on; `false` when the stored
    /// snapshot is no longer that one (nothing written).
    async fn run(&self, pool: &DbPool) -> Result<bool, StoreError> {
        with_pool!(pool, |p| {
            let mut tx = p.begin_with(pool.begin_write()).await?;
            // Compacting a flow writes it, so the flow row must exist (and the snapshot's
            // foreign key needs it).
            sqlx::query(
                "INSERT INTO flows (id, created_at, updated_at) VALUES ($1, $2, $2) \
                 ON CONFLICT (id) DO UPDATE SET updated_at = excluded.updated_at",
            )
            .bind(self.flow_id.as_str())
            .bind(self.now)
            .execute(&mut *tx)
            .await?;
            // Conditional write: only over the snapshot this one was built on (see the
            // trait's guarantees), so concurrent compactions cannot lose changes.
            let written = match &self.base {
                None => sqlx::query(
                    "INSERT INTO flow_snapshots (flow_id, heads, bytes, created_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (flow_id) DO NOTHING",
                )
                .bind(self.flow_id.as_str())
                .bind(self.heads.as_str())
                .bind(self.bytes.as_slice())
                .bind(self.now)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                Some(base) => sqlx::query(
                    "UPDATE flow_snapshots SET heads = $2, bytes = $3, created_at = $4 \
                     WHERE flow_id = $1 AND heads = $5",
                )
                .bind(self.flow_id.as_str())
                .bind(self.heads.as_str())
                .bind(self.bytes.as_slice())
                .bind(self.now)
                .bind(base.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected(),
            };
            if written != 1 {
                tx.rollback().await?;
                return Ok::<_, sqlx::Error>(false);
            }
            tx.commit().await?;
            Ok(true)
        })
        .map_err(db_error)
    }
}

/// Deletes these changes of the flow (those a written snapshot covers); returns how
/// many rows went.
async fn delete_changes(
    pool: &DbPool,
    flow_id: &str,
    hashes: &[String],
) -> Result<u64, StoreError> {
    with_pool!(pool, |p| {
        let mut query = sqlx::query(AssertSqlSafe(delete_changes_sql(hashes.len()))).bind(flow_id);
        for hash in hashes {
            query = query.bind(hash.as_str());
        }
        Ok::<_, sqlx::Error>(query.execute(p).await?.rows_affected())
    })
    .map_err(db_error)
}

/// `DELETE ... WHERE flow_id = $1 AND hash IN ($2, ..., $n+1)`.
fn delete_changes_sql(hashes: usize) -> String {
    let mut sql = String::from("DELETE FROM flow_changes WHERE flow_id = $1 AND hash IN (");
    for i in 0..hashes {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("${}", i + 2));
    }
    sql.push(')');
    sql
}

/// Epoch milliseconds, the unit of every timestamp column.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        // A clock before 1970 is a broken host; a zero timestamp is harmless.
        .unwrap_or(0)
}

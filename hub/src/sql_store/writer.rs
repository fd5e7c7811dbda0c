//! The group-commit writer behind [`SqlStore::append_changes`](super::SqlStore).
//!
//! One task per store owns the write path for appends. It waits for a request, then
//! takes every request already queued (up to [`MAX_BATCH_REQUESTS`] or
//! [`MAX_BATCH_BYTES`]), writes them all in one transaction and only then answers the
//! callers. It never waits for more requests to arrive: batching comes from the requests
//! that queue up while the previous commit is in flight, so latency at low load is one
//! commit and throughput at high load is many appends per commit. Other writes that
//! would contend with it for SQLite's one write lock (a compaction's) are queued to it
//! too and run between two batches ([`ExclusiveWrite`]).
//!
//! Failure handling:
//! - transient errors (lost connection, deadlock, busy SQLite file) are retried a few
//!   times; rewriting is safe because every insert is idempotent;
//! - a batch failing for another reason is split and each request retried alone, so one
//!   bad request (say a flow id PostgreSQL rejects) fails only its own caller;
//! - otherwise every caller of the batch gets the error;
//! - a batch that has not committed within [`APPEND_TIMEOUT`] (a hung database) fails
//!   with `Unavailable`, so one hung transaction never wedges the writer; dropping it
//!   rolls it back, and should it commit after all, nothing is lost or doubled (the
//!   inserts are idempotent and its callers were told to retry, never acknowledged);
//! - requests whose caller already gave up (timed out) are not written.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowhub_actors::store::{ChangeRecord, StoreError};
use sqlx::AssertSqlSafe;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn, Instrument};

use super::checkpoint::WalCheckpoints;
use super::error::{db_error, is_transient};
use super::{now_ms, timed_out, DbPool, APPEND_TIMEOUT};

/// Most requests written in one transaction.
pub(super) const MAX_BATCH_REQUESTS: usize = 256;
/// Stop adding requests to a batch once their change bytes reach this.
pub(super) const MAX_BATCH_BYTES: usize = 4 << 20;
/// Rows per multi-row `INSERT`: 3 parameters a row keeps it far below both backends'
/// bind-parameter limits (SQLite 32766, PostgreSQL 65535).
const ROWS_PER_STATEMENT: usize = 500;
/// Attempts for a batch failing with a transient error.
const MAX_ATTEMPTS: u32 = 3;

/// One `append_changes` call waiting for its commit.
pub(super) struct AppendRequest {
    pub(super) flow_id: String,
    pub(super) changes: Vec<ChangeRecord>,
    pub(super) reply: oneshot::Sender<Result<(), StoreError>>,
}

/// A write other than an append that would otherwise contend with the group commit for
/// SQLite's one write lock (a compaction: a snapshot plus a thousand deletes). The
/// writer runs it between two batches, so appends queue behind it for as long as it
/// runs, instead of meeting a locked file and sleeping in SQLite's busy handler (1, 2,
/// 5, 10, … ms per retry: well past the lock's release). The job answers its caller
/// itself; dropped unrun (the writer closing), its caller sees the store closed.
pub(super) type ExclusiveWrite =
    Box<dyn FnOnce(DbPool) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

pub(super) enum Command {
    Append(AppendRequest),
    Exclusive(ExclusiveWrite),
    /// Write everything queued before this, then stop; the sender is told when done.
    Close(oneshot::Sender<()>),
}

/// Group-commit counters, all counting committed work only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed by the writer.
    pub batches: u64,
    /// `append_changes` calls committed.
    pub appends: u64,
    /// Change records in those calls (re-appended duplicates included).
    pub changes: u64,
    /// Background WAL checkpoints run (SQLite only; see the `checkpoint` module).
    pub wal_checkpoints: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    batches: AtomicU64,
    appends: AtomicU64,
    changes: AtomicU64,
    /// Shared with the checkpoint tasks, which count what they complete.
    wal_checkpoints: Arc<AtomicU64>,
}

impl Counters {
    pub(super) fn snapshot(&self) -> StoreStats {
        StoreStats {
            batches: self.batches.load(Ordering::Relaxed),
            appends: self.appends.load(Ordering::Relaxed),
            changes: self.changes.load(Ordering::Relaxed),
            wal_checkpoints: self.wal_checkpoints.load(Ordering::Relaxed),
        }
    }

    fn record(&self, committed: &[AppendRequest]) {
        let changes: usize = committed.iter().map(|r| r.changes.len()).sum();
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.appends
            .fetch_add(committed.len() as u64, Ordering::Relaxed);
        self.changes.fetch_add(changes as u64, Ordering::Relaxed);
    }
}

pub(super) fn closed_error() -> StoreError {
    StoreError::Unavailable("store is closed".to_owned())
}

/// The writer loop; ends on [`Command::Close`] or when every store handle is gone.
pub(super) async fn run(pool: DbPool, mut rx: mpsc::Receiver<Command>, counters: Arc<Counters>) {
    let mut close_ack = None;
    let mut checkpoints = WalCheckpoints::default();
    while close_ack.is_none() {
        let Some(first) = rx.recv().await else {
            break;
        };
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let mut exclusive = None;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Append(request) => {
                    bytes += request.changes.iter().map(|c| c.bytes.len()).sum::<usize>();
                    batch.push(request);
                }
                Command::Exclusive(job) => {
                    // After the appends queued before it, in order.
                    exclusive = Some(job);
                    break;
                }
                Command::Close(ack) => {
                    close_ack = Some(ack);
                    break;
                }
            }
            if batch.len() >= MAX_BATCH_REQUESTS || bytes >= MAX_BATCH_BYTES {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            commit(&pool, batch, &counters).await;
            if let DbPool::Sqlite(sqlite) = &pool {
                checkpoints.after_commit(sqlite, &counters.wal_checkpoints);
            }
        }
        if let Some(job) = exclusive {
            job(pool.clone()).await;
            if let DbPool::Sqlite(sqlite) = &pool {
                checkpoints.after_commit(sqlite, &counters.wal_checkpoints);
            }
        }
    }
    checkpoints.finish().await;

    // Refuse new requests, and fail those that raced in behind the close: they were never
    // acknowledged, so failing them loses nothing.
    rx.close();
    while let Ok(command) = rx.try_recv() {
        match command {
            Command::Append(request) => {
                let _ = request.reply.send(Err(closed_error()));
            }
            // Dropped unrun: its caller's reply channel closes.
            Command::Exclusive(_) => {}
            Command::Close(ack) => {
                let _ = ack.send(());
            }
        }
    }
    if let Some(ack) = close_ack {
        let _ = ack.send(());
    }
    debug!("store writer stopped");
}

/// Writes one batch and answers its callers.
async fn commit(pool: &DbPool, mut batch: Vec<AppendRequest>, counters: &Counters) {
    // A caller that timed out has already refused the edit to its client, which will
    // resend it; writing it now would only delay the callers still waiting.
    let abandoned = batch.len();
    batch.retain(|r| !r.reply.is_closed());
    let abandoned = abandoned - batch.len();
    if abandoned > 0 {
        debug!(abandoned, "skipping appends whose callers gave up");
    }
    if batch.is_empty() {
        return;
    }
    let started = Instant::now();
    let span = tracing::trace_span!(
        target: flowhub_actors::EDIT_PATH_TARGET,
        "store.commit",
        appends = batch.len(),
    );
    match write_with_retry(pool, &batch).instrument(span).await {
        Ok(()) => {
            counters.record(&batch);
            debug!(
                requests = batch.len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "append batch committed"
            );
            for request in batch {
                // The caller may have given up waiting; its changes are stored anyway.
                let _ = request.reply.send(Ok(()));
            }
        }
        Err(e) if batch.len() > 1 && !matches!(e, StoreError::Unavailable(_)) => {
            warn!(
                requests = batch.len(),
                error = %e,
                "append batch failed; retrying its requests one by one"
            );
            for request in batch {
                let single = std::slice::from_ref(&request);
                let result = write_with_retry(pool, single).await;
                match &result {
                    Ok(()) => counters.record(single),
                    Err(e) => warn!(flow_id = %request.flow_id, error = %e, "append failed"),
                }
                let _ = request.reply.send(result);
            }
        }
        Err(e) => {
            for request in batch {
                warn!(flow_id = %request.flow_id, error = %e, "append failed");
                let _ = request.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Writes with retries, all attempts together bounded by [`APPEND_TIMEOUT`].
async fn write_with_retry(pool: &DbPool, requests: &[AppendRequest]) -> Result<(), StoreError> {
    match tokio::time::timeout(APPEND_TIMEOUT, write_with_retry_unbounded(pool, requests)).await {
        Ok(result) => result,
        Err(_) => {
            warn!(
                requests = requests.len(),
                timeout_ms = APPEND_TIMEOUT.as_millis() as u64,
                "append batch did not commit in time; failing it (the database is not answering)"
            );
            Err(timed_out("append commit", APPEND_TIMEOUT))
        }
    }
}

async fn write_with_retry_unbounded(
    pool: &DbPool,
    requests: &[AppendRequest],
) -> Result<(), StoreError> {
    let mut attempt = 1;
    loop {
        match write(pool, requests).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < MAX_ATTEMPTS && is_transient(&e) => {
                debug!(attempt, error = %e, "transient append failure; retrying");
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(db_error(e)),
        }
    }
}

/// One transaction: upsert the flow rows, insert the changes (duplicates ignored). A
/// batch that fits one statement per table goes as one command
/// ([`write_in_one_command`]); a larger one statement by statement.
async fn write(pool: &DbPool, requests: &[AppendRequest]) -> Result<(), sqlx::Error> {
    let now = now_ms();
    let mut flow_ids: Vec<&str> = requests.iter().map(|r| r.flow_id.as_str()).collect();
    // Sorted so writers on other hub nodes lock flow rows in the same order (no
    // deadlock), and deduplicated because PostgreSQL rejects an upsert touching one row
    // twice.
    flow_ids.sort_unstable();
    flow_ids.dedup();
    // Request order, then change order: this is the append order `seq` records. A change
    // sent twice within the batch is written once.
    let mut seen = HashSet::new();
    let rows: Vec<(&str, &ChangeRecord)> = requests
        .iter()
        .flat_map(|r| r.changes.iter().map(move |c| (r.flow_id.as_str(), c)))
        .filter(|(flow_id, c)| seen.insert((*flow_id, c.hash.as_str())))
        .collect();

    if flow_ids.len() <= ROWS_PER_STATEMENT && rows.len() <= ROWS_PER_STATEMENT {
        return write_in_one_command(pool, now, &flow_ids, &rows).await;
    }
    let begin = pool.begin_write();
    with_pool!(pool, |p| {
        let mut tx = p.begin_with(begin).await?;
        for chunk in flow_ids.chunks(ROWS_PER_STATEMENT) {
            let mut query = sqlx::query(AssertSqlSafe(upsert_flows_sql(chunk.len()))).bind(now);
            for flow_id in chunk {
                query = query.bind(*flow_id);
            }
            query.execute(&mut *tx).await?;
        }
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut query = sqlx::query(AssertSqlSafe(insert_changes_sql(chunk.len()))).bind(now);
            for (flow_id, change) in chunk {
                query = query
                    .bind(*flow_id)
                    .bind(change.hash.as_str())
                    .bind(change.bytes.as_slice());
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(())
    })
}

/// [`write`] for a batch that fits one statement per table (the usual case), in one
/// command: every statement is a round trip, to SQLite's connection thread (two
/// thread wake-ups; sqlx runs each SQLite connection on a thread of its own) or to
/// the PostgreSQL server, and at low load, where every append is a batch of one, the
/// five round trips of a transaction (the pool's ping, `BEGIN`, two inserts,
/// `COMMIT`) were most of an append's cost.
///
/// Both statements share one argument list: `$1` the timestamp, then the flow ids,
/// then the changes' rows.
/// - SQLite: `BEGIN IMMEDIATE`, the two statements and `COMMIT` in one command,
///   which SQLite binds by number in each statement: one round trip to the
///   connection's thread instead of three with sqlx's transaction. Should the
///   command fail or its future be dropped part-way, a transaction may be left open
///   on the connection, so the connection is then closed rather than returned to the
///   pool ([`CloseUnlessReleased`]), and closing it rolls the transaction back.
/// - PostgreSQL takes no parameters in a command of several statements: the upsert
///   is a data-modifying `WITH` of the insert, one statement and so atomic without
///   `BEGIN` and `COMMIT`. The insert reads the upsert's row count first, so the
///   flow rows are locked (in sorted order) before any change row, as in [`write`]'s
///   transaction: two nodes appending to the same flows wait, never deadlock.
async fn write_in_one_command(
    pool: &DbPool,
    now: i64,
    flow_ids: &[&str],
    rows: &[(&str, &ChangeRecord)],
) -> Result<(), sqlx::Error> {
    let upsert = upsert_flows_sql(flow_ids.len());
    let first_row = 2 + flow_ids.len();
    // An append of no changes (all already stored) still counts as one.
    let sql = match pool {
        _ if rows.is_empty() => upsert,
        DbPool::Sqlite(_) => format!(
            "BEGIN IMMEDIATE;\n{upsert};\n{};\nCOMMIT",
            insert_changes_sql_from(first_row, rows.len())
        ),
        DbPool::Postgres(_) => format!(
            "WITH upserted AS ({upsert} RETURNING 1) \
             INSERT INTO flow_changes (flow_id, hash, bytes, created_at) \
             SELECT * FROM ({}) AS v (flow_id, hash, bytes, created_at) \
             WHERE (SELECT count(*) FROM upserted) > 0 \
             ON CONFLICT (flow_id, hash) DO NOTHING",
            change_rows_sql(first_row, rows.len())
        ),
    };
    let opens_transaction = matches!(pool, DbPool::Sqlite(_)) && !rows.is_empty();
    with_pool!(pool, |p| {
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now);
        for flow_id in flow_ids {
            query = query.bind(*flow_id);
        }
        for (flow_id, change) in rows {
            query = query
                .bind(*flow_id)
                .bind(change.hash.as_str())
                .bind(change.bytes.as_slice());
        }
        if opens_transaction {
            let mut conn = CloseUnlessReleased(Some(p.acquire().await?));
            if let Some(c) = conn.0.as_mut() {
                query.execute(&mut **c).await?;
            }
            conn.release();
            Ok(())
        } else {
            query.execute(p).await.map(drop)
        }
    })
}

/// A pooled connection running a command that opens and commits its own
/// transaction: closed when dropped, unless [`CloseUnlessReleased::release`]d after
/// the command succeeded. A failure or a cancelled future may leave the transaction
/// open, and a connection with an open transaction must never serve another caller.
struct CloseUnlessReleased<DB: sqlx::Database>(Option<sqlx::pool::PoolConnection<DB>>);

impl<DB: sqlx::Database> CloseUnlessReleased<DB> {
    /// The command committed: the connection goes back to the pool.
    fn release(mut self) {
        drop(self.0.take());
    }
}

impl<DB: sqlx::Database> Drop for CloseUnlessReleased<DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.close_on_drop();
        }
    }
}

/// `INSERT INTO flows ... VALUES ($2, $1, $1), ($3, $1, $1) ... ON CONFLICT ...` where
/// `$1` is the timestamp shared by every row.
fn upsert_flows_sql(rows: usize) -> String {
    let mut sql = String::from("INSERT INTO flows (id, created_at, updated_at, version) VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(${}, $1, $1, 1)", i + 2));
    }
    // `version` counts committed appends (see migrations/*/0003_flow_versions.sql).
    sql.push_str(
        " ON CONFLICT (id) DO UPDATE SET updated_at = excluded.updated_at, version = flows.version + 1",
    );
    sql
}

/// `INSERT INTO flow_changes ... VALUES ($2, $3, $4, $1), ... ON CONFLICT DO NOTHING`
/// where `$1` is the timestamp shared by every row.
fn insert_changes_sql(rows: usize) -> String {
    insert_changes_sql_from(2, rows)
}

/// [`insert_changes_sql`] with the rows' parameters numbered from `first`.
fn insert_changes_sql_from(first: usize, rows: usize) -> String {
    format!(
        "INSERT INTO flow_changes (flow_id, hash, bytes, created_at) {} \
         ON CONFLICT (flow_id, hash) DO NOTHING",
        change_rows_sql(first, rows)
    )
}

/// `VALUES ($first, $first+1, $first+2, $1), ...`: one row per change.
fn change_rows_sql(first: usize, rows: usize) -> String {
    let mut sql = String::from("VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        let base = first + 3 * i;
        sql.push_str(&format!("(${}, ${}, ${}, $1)", base, base + 1, base + 2));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_per_row() {
        assert_eq!(
            upsert_flows_sql(2),
            "INSERT INTO flows (id, created_at, updated_at, version) VALUES ($2, $1, $1, 1), ($3, $1, $1, 1) \
             ON CONFLICT (id) DO UPDATE SET updated_at = excluded.updated_at, version = flows.version + 1"
        );
        assert_eq!(
            insert_changes_sql(2),
            "INSERT INTO flow_changes (flow_id, hash, bytes, created_at) VALUES \
             ($2, $3, $4, $1), ($5, $6, $7, $1) ON CONFLICT (flow_id, hash) DO NOTHING"
        );
    }
}

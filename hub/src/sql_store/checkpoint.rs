//! SQLite WAL checkpoints, taken off the append path.
//!
//! By default SQLite checkpoints inside the commit that takes the WAL past 1,000 pages:
//! that commit syncs the WAL, copies its pages into the database file and syncs that
//! too before it returns. Measured on the hub at 500 edits/s (`strace -e fsync` on the
//! embedded default), that was two to three fsyncs taking 15–20 ms together, every
//! ~0.6 s, on the group-commit writer's connection: every append queued behind such a
//! commit waited for the disk, which is where the edit path's p99 went.
//!
//! So the pool's connections only checkpoint as a safety net
//! ([`WAL_AUTOCHECKPOINT_PAGES`], far above what the writer lets the WAL reach), and the
//! writer starts a `PRAGMA wal_checkpoint(PASSIVE)` on another pooled connection at most
//! every [`CHECKPOINT_INTERVAL`] while it is committing. A passive checkpoint waits for
//! no reader or writer: the writer keeps appending to the WAL meanwhile (SQLite's WAL
//! admits one checkpointer beside one writer), and once a checkpoint has copied every
//! frame the next write starts the WAL over from its beginning, so the file stays small.
//!
//! Durability is unchanged: a commit is durable against a crash of the hub when its WAL
//! frames are written (`synchronous = NORMAL`), whoever checkpoints them later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::SqlitePool;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// `PRAGMA wal_autocheckpoint` on every pooled SQLite connection: the WAL size (in
/// pages of 4 KiB) at which a commit checkpoints by itself. Only reached if background
/// checkpoints cannot keep up (say a long read pins old frames); then SQLite's own
/// behaviour takes over again, at a bounded WAL of ~40 MiB.
pub(super) const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;
/// At most one background checkpoint per this much time, and only after commits.
pub(super) const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// A checkpoint copies at most a few MiB; past this the disk is not answering, and the
/// next one is tried at the next interval.
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(10);

/// The writer's side: when the last checkpoint started, and whether it still runs.
#[derive(Default)]
pub(super) struct WalCheckpoints {
    last_started: Option<Instant>,
    running: Option<JoinHandle<()>>,
}

impl WalCheckpoints {
    /// Called by the writer after each commit: starts a checkpoint on its own task if
    /// none runs and the last one started [`CHECKPOINT_INTERVAL`] ago or more (nothing
    /// but these two checks on the writer's path otherwise).
    /// `completed` counts the checkpoints that ran.
    pub(super) fn after_commit(&mut self, pool: &SqlitePool, completed: &Arc<AtomicU64>) {
        if self
            .running
            .as_ref()
            .is_some_and(|task| !task.is_finished())
        {
            return;
        }
        if self
            .last_started
            .is_some_and(|at| at.elapsed() < CHECKPOINT_INTERVAL)
        {
            return;
        }
        self.last_started = Some(Instant::now());
        let (pool, completed) = (pool.clone(), completed.clone());
        self.running = Some(tokio::spawn(async move {
            if checkpoint(&pool).await {
                completed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    /// Waits for a running checkpoint, so that closing the pool finds it done.
    pub(super) async fn finish(self) {
        if let Some(task) = self.running {
            let _ = task.await;
        }
    }
}

/// One passive checkpoint; true if it ran (whether or not it copied every frame).
async fn checkpoint(pool: &SqlitePool) -> bool {
    let started = Instant::now();
    let run =
        sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(pool);
    match tokio::time::timeout(CHECKPOINT_TIMEOUT, run).await {
        Ok(Ok((busy, wal_frames, copied))) => {
            debug!(
                busy,
                wal_frames,
                copied,
                elapsed_us = started.elapsed().as_micros() as u64,
                "wal checkpoint"
            );
            true
        }
        // A closed pool (the store is shutting down) is not worth a warning.
        Ok(Err(sqlx::Error::PoolClosed)) => false,
        Ok(Err(e)) => {
            warn!(error = %e, "wal checkpoint failed; the next commit tries again");
            false
        }
        Err(_) => {
            warn!(
                timeout_ms = CHECKPOINT_TIMEOUT.as_millis() as u64,
                "wal checkpoint did not finish in time"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WAL_AUTOCHECKPOINT_PAGES;
    use crate::sql_store::{open_pool, DbPool};

    /// The other half of the design (the integration test
    /// `sqlite_wal_is_checkpointed_in_the_background` covers the writer's half): a
    /// pooled connection's own commits do not checkpoint at SQLite's default of 1,000
    /// pages.
    #[tokio::test]
    async fn pooled_connections_leave_checkpoints_to_the_writer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/flowhub.db", dir.path().display());
        let DbPool::Sqlite(pool) = open_pool(&url, 2).await.expect("open pool") else {
            panic!("a sqlite url opens a SQLite pool");
        };
        let (pages,): (i64,) = sqlx::query_as("PRAGMA wal_autocheckpoint")
            .fetch_one(&pool)
            .await
            .expect("read the pragma");
        assert_eq!(pages, i64::from(WAL_AUTOCHECKPOINT_PAGES));
        pool.close().await;
    }
}

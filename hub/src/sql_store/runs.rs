//! [`RunStore`] on SQLite and PostgreSQL.
//!
//! # Guarantees (those of [`flowhub_actors::run::store`], and how they are kept)
//! - An append is one write transaction: the `runs` row (summary columns plus the whole
//!   `RunSnapshot` as JSON in `state`) and the new `run_events` rows commit together.
//! - `(run_id, seq)` is the primary key and `(run_id, event_id)` is unique, and the
//!   events are inserted without `ON CONFLICT`: a repeated seq or event id fails the
//!   whole transaction. A run's first batch inserts its row (failing if it exists);
//!   later batches update it only if its stored `last_seq` is the one they follow (and
//!   its flow is the same). So a second writer of the same run (another node) fails
//!   instead of interleaving, and its actor reloads.
//! - A load reads the run row and its newest events in one read transaction, so the
//!   state and the events agree.
//!
//! Appends do not go through the group-commit writer of flow changes: a run actor
//! already batches (one append per ingest request), and its appends must fail
//! individually on conflict, which the writer's batches are built to avoid.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use flowhub_actors::run::{apply, kind_str, new_snapshot, status_str, RunStore, StoredRun};
use flowhub_actors::store::StoreError;
use flowhub_protocol::{RunEvent, RunEventInput, RunSnapshot, RunStatus, RunSummary};
use sqlx::AssertSqlSafe;
use tracing::{debug, warn};

use super::error::db_error;
use super::{bounded, now_ms, SqlStore, APPEND_TIMEOUT, READ_TIMEOUT};

/// Rows per multi-row `INSERT` into `run_events` (7 parameters each), and ids per
/// `IN (...)`: far below both backends' bind-parameter limits.
const ROWS_PER_STATEMENT: usize = 500;

/// `flow_id, status, started_at, finished_at, last_seq, flow_heads, state`.
type RunRow = (
    String,
    String,
    Option<i64>,
    Option<i64>,
    i64,
    String,
    String,
);

/// `id, flow_id, status, started_at, finished_at, last_seq`.
type SummaryRow = (String, String, String, Option<i64>, Option<i64>, i64);

/// A load may replay a long run's whole event log (when its stored state cannot be
/// used), so it gets more time than a single read.
const LOAD_RUN_TIMEOUT: Duration = Duration::from_secs(5);

/// Every call is bounded like the flow store's (see "A hung database fails calls" in
/// the module doc of `sql_store`): a hung database fails run ingest and reads with the
/// retryable `Unavailable` instead of holding a run actor forever.
#[async_trait]
impl RunStore for SqlStore {
    async fn load_run(&self, run_id: &str, recent: usize) -> Result<Option<StoredRun>, StoreError> {
        bounded(
            LOAD_RUN_TIMEOUT,
            "load_run",
            self.load_run_unbounded(run_id, recent),
        )
        .await
    }

    async fn existing_event_ids(
        &self,
        run_id: &str,
        event_ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        bounded(
            READ_TIMEOUT,
            "existing_event_ids",
            self.existing_event_ids_unbounded(run_id, event_ids),
        )
        .await
    }

    async fn append_run_events(
        &self,
        run: &RunSnapshot,
        events: &[RunEvent],
    ) -> Result<(), StoreError> {
        // A timed-out append may still commit. Harmless: after a failed append the run
        // actor stops and a fresh one reloads what the store really holds, and events
        // posted again are recognised by their ids.
        bounded(
            APPEND_TIMEOUT,
            "append_run_events",
            self.append_run_events_unbounded(run, events),
        )
        .await
    }

    async fn run_events(
        &self,
        run_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RunEvent>, StoreError> {
        bounded(
            READ_TIMEOUT,
            "run_events",
            self.run_events_unbounded(run_id, after_seq, limit),
        )
        .await
    }

    async fn flow_runs(&self, flow_id: &str, limit: usize) -> Result<Vec<RunSummary>, StoreError> {
        bounded(
            READ_TIMEOUT,
            "flow_runs",
            self.flow_runs_unbounded(flow_id, limit),
        )
        .await
    }
}

/// The queries behind the [`RunStore`] impl above, without its timeouts.
impl SqlStore {
    async fn load_run_unbounded(
        &self,
        run_id: &str,
        recent: usize,
    ) -> Result<Option<StoredRun>, StoreError> {
        let begin = self.pool.begin_read();
        let recent = i64::try_from(recent).unwrap_or(i64::MAX);
        let loaded = with_pool!(&self.pool, |p| {
            let mut tx = p.begin_with(begin).await?;
            let row: Option<RunRow> = sqlx::query_as(
                "SELECT flow_id, status, started_at, finished_at, last_seq, flow_heads, state \
                 FROM runs WHERE id = $1",
            )
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                tx.rollback().await?;
                return Ok(None);
            };
            let events: Vec<(i64, String)> = if recent > 0 {
                sqlx::query_as(
                    "SELECT seq, payload FROM run_events WHERE run_id = $1 \
                     ORDER BY seq DESC LIMIT $2",
                )
                .bind(run_id)
                .bind(recent)
                .fetch_all(&mut *tx)
                .await?
            } else {
                Vec::new()
            };
            tx.commit().await?;
            Ok::<_, sqlx::Error>(Some((row, events)))
        })
        .map_err(db_error)?;
        let Some((row, mut rows)) = loaded else {
            return Ok(None);
        };
        rows.reverse();
        let recent = rows
            .into_iter()
            .map(decode_event)
            .collect::<Result<Vec<_>, _>>()?;
        let snapshot = match serde_json::from_str::<RunSnapshot>(&row.6) {
            Ok(snapshot) if snapshot.last_seq == to_u64(row.4) => snapshot,
            // Not written by this code (or damaged): rebuild it from the event log.
            _ => {
                warn!(
                    run_id,
                    "run state column unusable; rebuilding from the events"
                );
                self.rebuild(run_id, &row).await?
            }
        };
        debug!(
            run_id,
            last_seq = snapshot.last_seq,
            recent = recent.len(),
            "run loaded"
        );
        Ok(Some(StoredRun { snapshot, recent }))
    }

    async fn existing_event_ids_unbounded(
        &self,
        run_id: &str,
        event_ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let mut known = HashSet::new();
        for chunk in event_ids.chunks(ROWS_PER_STATEMENT) {
            let sql = in_list_sql(
                "SELECT event_id FROM run_events WHERE run_id = $1 AND event_id IN (",
                chunk.len(),
            );
            let rows: Vec<(String,)> = with_pool!(&self.pool, |p| {
                let mut query = sqlx::query_as(AssertSqlSafe(sql.clone())).bind(run_id);
                for id in chunk {
                    query = query.bind(id.as_str());
                }
                query.fetch_all(p).await
            })
            .map_err(db_error)?;
            known.extend(rows.into_iter().map(|(id,)| id));
        }
        Ok(known)
    }

    async fn append_run_events_unbounded(
        &self,
        run: &RunSnapshot,
        events: &[RunEvent],
    ) -> Result<(), StoreError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let state = serde_json::to_string(run)
            .map_err(|e| StoreError::Query(format!("encoding run state: {e}")))?;
        let heads = serde_json::to_string(&run.flow_heads)
            .map_err(|e| StoreError::Query(format!("encoding flow heads: {e}")))?;
        let mut rows = Vec::with_capacity(events.len());
        for e in events {
            let payload = serde_json::to_string(&e.event)
                .map_err(|err| StoreError::Query(format!("encoding event {}: {err}", e.seq)))?;
            rows.push((to_i64(e.seq), e, payload));
        }
        let previous = to_i64(first.seq.saturating_sub(1));
        let now = now_ms();
        let begin = self.pool.begin_write();
        let applied = with_pool!(&self.pool, |p| {
            let mut tx = p.begin_with(begin).await?;
            // The first batch inserts the row (failing if another writer created it);
            // later ones update it only from the last_seq they follow.
            let written = if previous == 0 {
                sqlx::query(
                    "INSERT INTO runs (id, flow_id, status, started_at, finished_at, last_seq, \
                     flow_heads, state, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(run.id.as_str())
                .bind(run.flow_id.as_str())
                .bind(status_str(run.status))
                .bind(run.started_at.map(to_i64))
                .bind(run.finished_at.map(to_i64))
                .bind(to_i64(run.last_seq))
                .bind(heads.as_str())
                .bind(state.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            } else {
                sqlx::query(
                    "UPDATE runs SET status = $3, started_at = $4, finished_at = $5, last_seq = $6, \
                     flow_heads = $7, state = $8 WHERE id = $1 AND flow_id = $2 AND last_seq = $9",
                )
                .bind(run.id.as_str())
                .bind(run.flow_id.as_str())
                .bind(status_str(run.status))
                .bind(run.started_at.map(to_i64))
                .bind(run.finished_at.map(to_i64))
                .bind(to_i64(run.last_seq))
                .bind(heads.as_str())
                .bind(state.as_str())
                .bind(previous)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            };
            if written != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut query = sqlx::query(AssertSqlSafe(insert_events_sql(chunk.len())));
                for (seq, e, payload) in chunk {
                    query = query
                        .bind(run.id.as_str())
                        .bind(*seq)
                        .bind(e.event.event_id.as_str())
                        .bind(kind_str(e.event.kind))
                        .bind(e.event.node_id.as_deref())
                        .bind(payload.as_str())
                        .bind(to_i64(e.event.ts));
                }
                query.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(true)
        })
        .map_err(db_error)?;
        if !applied {
            return Err(StoreError::Query(format!(
                "run {} was written concurrently (expected stored last_seq {previous} of flow {})",
                run.id, run.flow_id
            )));
        }
        debug!(run_id = %run.id, events = events.len(), last_seq = run.last_seq, "run events stored");
        Ok(())
    }

    async fn run_events_unbounded(
        &self,
        run_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RunEvent>, StoreError> {
        let rows: Vec<(i64, String)> = with_pool!(&self.pool, |p| {
            sqlx::query_as(
                "SELECT seq, payload FROM run_events WHERE run_id = $1 AND seq > $2 \
                 ORDER BY seq LIMIT $3",
            )
            .bind(run_id)
            .bind(to_i64(after_seq))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(p)
            .await
        })
        .map_err(db_error)?;
        rows.into_iter().map(decode_event).collect()
    }

    async fn flow_runs_unbounded(
        &self,
        flow_id: &str,
        limit: usize,
    ) -> Result<Vec<RunSummary>, StoreError> {
        let rows: Vec<SummaryRow> = with_pool!(&self.pool, |p| {
            sqlx::query_as(
                "SELECT id, flow_id, status, started_at, finished_at, last_seq FROM runs \
                 WHERE flow_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
            )
            .bind(flow_id)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(p)
            .await
        })
        .map_err(db_error)?;
        rows.into_iter()
            .map(|(id, flow_id, status, started_at, finished_at, last_seq)| {
                Ok(RunSummary {
                    id,
                    flow_id,
                    status: parse_status(&status)?,
                    started_at: started_at.map(to_u64),
                    finished_at: finished_at.map(to_u64),
                    last_seq: to_u64(last_seq),
                })
            })
            .collect()
    }

    /// The state of a run replayed from its whole event log (for rows whose `state`
    /// column cannot be used).
    async fn rebuild(&self, run_id: &str, row: &RunRow) -> Result<RunSnapshot, StoreError> {
        let mut run = new_snapshot(run_id, &row.0);
        let mut after = 0;
        loop {
            let page = self.run_events_unbounded(run_id, after, 10_000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in &page {
                // The same number of recent logs as a run actor keeps by default.
                apply(&mut run, e, 100);
            }
        }
        if run.last_seq != to_u64(row.4) {
            return Err(StoreError::Corrupt(format!(
                "run {run_id}: last_seq {} but events end at {}",
                row.4, run.last_seq
            )));
        }
        Ok(run)
    }
}

fn decode_event((seq, payload): (i64, String)) -> Result<RunEvent, StoreError> {
    let event: RunEventInput = serde_json::from_str(&payload)
        .map_err(|e| StoreError::Corrupt(format!("run event {seq}: {e}")))?;
    Ok(RunEvent {
        seq: to_u64(seq),
        event,
    })
}

fn parse_status(s: &str) -> Result<RunStatus, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| StoreError::Corrupt(format!("run status `{s}`")))
}

/// Sequence numbers and timestamps are validated to stay below 2^53 on the way in.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// `prefix $2, $3, ... )` for `n` values after `$1`.
fn in_list_sql(prefix: &str, n: usize) -> String {
    let mut sql = String::from(prefix);
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("${}", i + 2));
    }
    sql.push(')');
    sql
}

/// `INSERT INTO run_events ... VALUES ($1, ..., $7), ($8, ...)`: no `ON CONFLICT`, a
/// repeated seq or event id must fail the append.
fn insert_events_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO run_events (run_id, seq, event_id, kind, node_id, payload, ts) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        let b = 1 + 7 * i;
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
            b,
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5,
            b + 6
        ));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_per_row() {
        assert_eq!(
            insert_events_sql(2),
            "INSERT INTO run_events (run_id, seq, event_id, kind, node_id, payload, ts) VALUES \
             ($1, $2, $3, $4, $5, $6, $7), ($8, $9, $10, $11, $12, $13, $14)"
        );
        assert_eq!(
            in_list_sql("SELECT x WHERE a = $1 AND b IN (", 2),
            "SELECT x WHERE a = $1 AND b IN ($2, $3)"
        );
    }
}

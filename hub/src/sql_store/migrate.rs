//! Schema migrations, embedded in the binary and applied at connect.
//!
//! Each migration runs in its own transaction together with its row in
//! `flowhub_migrations`, so a migration is either fully applied and recorded or not at
//! all, and a restart applies only what is missing. Hubs starting at the same time are
//! serialised: on PostgreSQL by a transaction-scoped advisory lock (taken before even
//! creating `flowhub_migrations`, whose concurrent `CREATE TABLE IF NOT EXISTS` could
//! otherwise fail), on SQLite by `BEGIN IMMEDIATE`, which holds the file's write lock.

use flowhub_actors::store::StoreError;
use tracing::{info, warn};

use super::error::db_error;
use super::{now_ms, DbPool};

struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

/// Append only: never edit a released migration, add the next version instead.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sqlite: include_str!("../../../migrations/sqlite/0001_init.sql"),
        postgres: include_str!("../../../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "run_state",
        sqlite: include_str!("../../../migrations/sqlite/0002_run_state.sql"),
        postgres: include_str!("../../../migrations/postgres/0002_run_state.sql"),
    },
    Migration {
        version: 3,
        name: "flow_versions",
        sqlite: include_str!("../../../migrations/sqlite/0003_flow_versions.sql"),
        postgres: include_str!("../../../migrations/postgres/0003_flow_versions.sql"),
    },
];

/// Key of the `pg_advisory_xact_lock` every hub takes while migrating ("flowhub" in
/// ASCII); any constant works as long as all hubs agree.
const PG_LOCK_KEY: i64 = 0x66_6c6f_7768_7562;

const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS flowhub_migrations \
     (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)";

/// Applies every migration not yet recorded.
pub(super) async fn run(pool: &DbPool) -> Result<(), StoreError> {
    for migration in MIGRATIONS {
        let applied = apply(pool, migration).await.map_err(|e| {
            let e = db_error(e);
            warn!(version = migration.version, name = migration.name, error = %e, "migration failed");
            e
        })?;
        if applied {
            info!(
                backend = pool.backend(),
                version = migration.version,
                name = migration.name,
                "migration applied"
            );
        }
    }
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    let newest = applied(pool).await.map_err(db_error)?.into_iter().max();
    if let Some(newest) = newest.filter(|v| *v > known) {
        // A newer hub migrated this database (rolling upgrade or rollback): keep going,
        // new tables and columns are additive, but say so.
        warn!(newest, known, "database schema is newer than this hub");
    }
    Ok(())
}

/// Applies `migration` unless already recorded; returns whether it applied it.
async fn apply(pool: &DbPool, migration: &Migration) -> Result<bool, sqlx::Error> {
    let (sql, is_postgres) = match pool {
        DbPool::Sqlite(_) => (migration.sqlite, false),
        DbPool::Postgres(_) => (migration.postgres, true),
    };
    let begin = pool.begin_write();
    with_pool!(pool, |p| {
        let mut tx = p.begin_with(begin).await?;
        if is_postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PG_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(CREATE_MIGRATIONS_TABLE)
            .execute(&mut *tx)
            .await?;
        let recorded: Option<(i64,)> =
            sqlx::query_as("SELECT version FROM flowhub_migrations WHERE version = $1")
                .bind(migration.version)
                .fetch_optional(&mut *tx)
                .await?;
        if recorded.is_some() {
            tx.rollback().await?;
            return Ok(false);
        }
        // Several statements: `raw_sql` runs them all (simple query protocol on
        // PostgreSQL), inside this transaction.
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO flowhub_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(migration.version)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(true)
    })
}

/// Recorded migration versions, ascending.
pub(super) async fn applied(pool: &DbPool) -> Result<Vec<i64>, sqlx::Error> {
    with_pool!(pool, |p| {
        let rows: Vec<(i64,)> =
            sqlx::query_as("SELECT version FROM flowhub_migrations ORDER BY version")
                .fetch_all(p)
                .await?;
        Ok::<_, sqlx::Error>(rows.into_iter().map(|(v,)| v).collect())
    })
}

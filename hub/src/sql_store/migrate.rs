//! Schema migrations: sqlx's own [`Migrator`] over SQL files embedded in the binary.
//!
//! # What sqlx gives, and what this module adds
//! [`Migrator::run`] records each migration in `_sqlx_migrations` with the SHA-384 of its
//! SQL, applies each missing one in its own transaction together with its row, and
//! fails on a recorded migration whose checksum differs from the embedded file or that
//! the binary does not know. Around it this module:
//! - builds one migrator per backend from `migrations/sqlite` and `migrations/postgres`
//!   with `include_str!` and [`Migration::new`] (the `migrate!` macro needs sqlx's
//!   `macros` feature, which the workspace does not enable). `Migration::new` hashes the
//!   SQL exactly as the macro does; a unit test checks every field against sqlx's own
//!   reading of the directories;
//! - serialises concurrent runs over the whole sequence below: on PostgreSQL with sqlx's
//!   own advisory lock ([`Migrate::lock`], the key sqlx's migrator uses), on SQLite, where
//!   sqlx takes no lock, with one `BEGIN IMMEDIATE` transaction around everything (it
//!   holds the file's write lock; the busy timeout makes a second hub wait its turn, and
//!   sqlx's per-migration transactions become savepoints inside it);
//! - adopts databases created by the hand-written runner that came before (a
//!   `flowhub_migrations` table with versions only): each version recorded there and
//!   not yet in `_sqlx_migrations` is recorded there as applied, with the embedded
//!   file's checksum, without running its SQL again. `flowhub_migrations` itself is left
//!   alone, so a node of the previous release still starts during a rolling deploy;
//! - refuses, with a typed [`ConnectError`], a database that recorded a migration newer
//!   than this binary knows ([`ConnectError::SchemaTooNew`]) or one whose checksum
//!   differs ([`ConnectError::ChecksumMismatch`]), before applying anything.
//!
//! Append only: never edit a released migration (its checksum is recorded in every
//! database), add the next version instead, to both directories.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use flowhub_actors::store::StoreError;
use sqlx::migrate::{AppliedMigration, Migrate, MigrateError, Migration, MigrationType, Migrator};
use sqlx::{PgPool, SqlSafeStr, SqlitePool};
use tracing::info;

use super::error::db_error;
use super::DbPool;

/// sqlx's default table; kept so the `sqlx` CLI and `migrate!` would see the same record.
const TABLE: &str = "_sqlx_migrations";

/// `(version, description, file name)`: the description is what sqlx derives from the
/// file name (after the first `_`, without `.sql`, `_` read as a space).
const FILES: &[(i64, &str, &str)] = &[
    (1, "init", "0001_init.sql"),
    (2, "run state", "0002_run_state.sql"),
    (3, "flow versions", "0003_flow_versions.sql"),
    (4, "history", "0004_history.sql"),
];

/// The embedded SQL of each file in [`FILES`], in the same order.
macro_rules! embedded {
    ($dir:literal) => {
        [
            include_str!(concat!("../../../migrations/", $dir, "/0001_init.sql")),
            include_str!(concat!("../../../migrations/", $dir, "/0002_run_state.sql")),
            include_str!(concat!(
                "../../../migrations/",
                $dir,
                "/0003_flow_versions.sql"
            )),
            include_str!(concat!("../../../migrations/", $dir, "/0004_history.sql")),
        ]
    };
}

const SQLITE_SQL: [&str; FILES.len()] = embedded!("sqlite");
const POSTGRES_SQL: [&str; FILES.len()] = embedded!("postgres");

static SQLITE: LazyLock<Migrator> = LazyLock::new(|| migrator(&SQLITE_SQL));
static POSTGRES: LazyLock<Migrator> = LazyLock::new(|| migrator(&POSTGRES_SQL));

fn migrator(sql: &[&'static str; FILES.len()]) -> Migrator {
    let migrations = FILES
        .iter()
        .zip(sql)
        .map(|(&(version, description, _), &sql)| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                sql.into_sql_str(),
                // What sqlx's resolver reads from a file starting with this comment.
                sql.starts_with("-- no-transaction"),
            )
        })
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    // `run` takes the lock (PostgreSQL) or the transaction (SQLite) itself, so that
    // adopting and checking happen under it too.
    migrator.set_locking(false);
    migrator
}

/// The migrator for `pool`'s backend.
fn migrator_for(pool: &DbPool) -> &'static Migrator {
    match pool {
        DbPool::Sqlite(_) => &SQLITE,
        DbPool::Postgres(_) => &POSTGRES,
    }
}

/// The newest schema version this binary knows.
pub fn known_version() -> i64 {
    FILES.last().map_or(0, |&(version, _, _)| version)
}

/// Why a database could not be opened or brought up to this binary's schema.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The database is unreachable, or a statement failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A newer flowhub migrated the database: this binary would not know its tables.
    #[error(
        "database schema is at version {database}, this flowhub knows up to {known}: \
         upgrade flowhub or restore the database"
    )]
    SchemaTooNew { database: i64, known: i64 },
    /// A recorded migration is not this binary's, though older than its newest.
    #[error(
        "database records migration {version}, which this flowhub (schema 1 to {known}) \
         does not have: the database was migrated by a different build of flowhub"
    )]
    UnknownMigration { version: i64, known: i64 },
    /// The SQL recorded for a migration differs from the one built into this binary.
    #[error(
        "migration {version} ({description}) recorded in the database differs from the \
         one built into this flowhub (checksum mismatch): the database was migrated by a \
         different build of flowhub; run that build, or restore the database"
    )]
    ChecksumMismatch { version: i64, description: String },
    /// A migration failed halfway without a transaction to undo it.
    #[error(
        "migration {version} is recorded as partially applied: repair the schema by hand, \
         then delete its row from _sqlx_migrations"
    )]
    Dirty { version: i64 },
    /// The SQL of a migration failed; nothing of it was kept.
    #[error("migration {version} ({description}) failed: {source}")]
    MigrationFailed {
        version: i64,
        description: String,
        source: StoreError,
    },
}

impl From<sqlx::Error> for ConnectError {
    fn from(e: sqlx::Error) -> Self {
        ConnectError::Store(db_error(e))
    }
}

/// One migration, as reported by [`MigrationReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationInfo {
    pub version: i64,
    pub description: String,
}

/// What bringing a database up to date did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// `"sqlite"` or `"postgres"`.
    pub backend: &'static str,
    /// Recorded in `_sqlx_migrations` from the previous runner's `flowhub_migrations`;
    /// their SQL had run already and was not run again.
    pub adopted: Vec<MigrationInfo>,
    /// Run now.
    pub applied: Vec<MigrationInfo>,
    /// The schema version afterwards (the newest recorded migration).
    pub version: i64,
    /// The newest version this binary knows.
    pub known: i64,
}

/// Brings the database up to this binary's schema, or refuses it; see the module doc.
pub(super) async fn run(pool: &DbPool) -> Result<MigrationReport, ConnectError> {
    let migrator = migrator_for(pool);
    let plan = match pool {
        DbPool::Sqlite(p) => run_sqlite(p, migrator).await?,
        DbPool::Postgres(p) => run_postgres(p, migrator).await?,
    };
    let report = MigrationReport {
        backend: pool.backend(),
        adopted: plan.adopted,
        applied: plan.pending,
        version: plan.version_after,
        known: known_version(),
    };
    for m in &report.adopted {
        info!(
            backend = report.backend,
            version = m.version,
            name = %m.description,
            "migration adopted from flowhub_migrations"
        );
    }
    for m in &report.applied {
        info!(
            backend = report.backend,
            version = m.version,
            name = %m.description,
            "migration applied"
        );
    }
    Ok(report)
}

async fn run_sqlite(pool: &SqlitePool, migrator: &Migrator) -> Result<Plan, ConnectError> {
    // sqlx's SQLite `lock` does nothing: this transaction is the lock (see the module doc).
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let legacy_exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master \
         WHERE type = 'table' AND name = 'flowhub_migrations')",
    )
    .fetch_one(&mut *tx)
    .await?;
    let legacy: Vec<i64> = if legacy_exists {
        sqlx::query_scalar(LEGACY_VERSIONS)
            .fetch_all(&mut *tx)
            .await?
    } else {
        Vec::new()
    };
    let plan = prepare(&mut *tx, migrator, &legacy).await?;
    run_migrator(migrator, &mut *tx).await?;
    tx.commit().await?;
    Ok(plan)
}

async fn run_postgres(pool: &PgPool, migrator: &Migrator) -> Result<Plan, ConnectError> {
    let mut conn = pool.acquire().await?;
    conn.lock().await.map_err(from_migrate_error)?;
    let result = async {
        // Adopting is all or nothing; the migrator then runs each migration in its own
        // transaction, as sqlx does.
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let legacy_exists: bool =
            sqlx::query_scalar("SELECT to_regclass('flowhub_migrations') IS NOT NULL")
                .fetch_one(&mut *tx)
                .await?;
        let legacy: Vec<i64> = if legacy_exists {
            sqlx::query_scalar(LEGACY_VERSIONS)
                .fetch_all(&mut *tx)
                .await?
        } else {
            Vec::new()
        };
        let plan = prepare(&mut *tx, migrator, &legacy).await?;
        tx.commit().await?;
        run_migrator(migrator, &mut *conn).await?;
        Ok::<_, ConnectError>(plan)
    }
    .await;
    match result {
        Ok(plan) => match conn.unlock().await {
            Ok(()) => Ok(plan),
            Err(e) => {
                conn.close_on_drop();
                Err(from_migrate_error(e))
            }
        },
        Err(e) => {
            // The advisory lock belongs to the session: closing this connection instead
            // of returning it to the pool releases it even if the failure was the
            // connection's.
            conn.close_on_drop();
            Err(e)
        }
    }
}

/// [`Migrator::run`] on a connection we already hold (locked, or inside the SQLite
/// transaction). `run` itself takes an `Acquire` whose higher-ranked bound makes the
/// calling future "not general enough" to be `Send`, and the store's callers spawn it;
/// sqlx exposes `run_direct` (same code path: `run` only acquires, then calls it) for
/// exactly that.
async fn run_migrator<C: Migrate + Send>(
    migrator: &Migrator,
    conn: &mut C,
) -> Result<(), ConnectError> {
    migrator
        .run_direct(None, conn, false)
        .await
        .map_err(from_migrate_error)
}

/// Versions in the previous runner's `flowhub_migrations` (the caller checked it exists).
const LEGACY_VERSIONS: &str = "SELECT version FROM flowhub_migrations ORDER BY version";

/// What [`prepare`] found: what was adopted, what the migrator will run, and the
/// version the database will be at.
struct Plan {
    adopted: Vec<MigrationInfo>,
    pending: Vec<MigrationInfo>,
    version_after: i64,
}

/// Under the lock: creates `_sqlx_migrations`, adopts the previous runner's record,
/// and checks what is recorded against what this binary knows.
async fn prepare<C: Migrate + Send>(
    conn: &mut C,
    migrator: &Migrator,
    legacy: &[i64],
) -> Result<Plan, ConnectError> {
    conn.ensure_migrations_table(TABLE)
        .await
        .map_err(from_migrate_error)?;
    let known: BTreeMap<i64, &Migration> = migrator.iter().map(|m| (m.version, m)).collect();
    let known_max = known_version();
    let mut applied = applied_by_version(conn).await?;

    let mut adopted = Vec::new();
    for version in legacy {
        if applied.contains_key(version) {
            continue;
        }
        let Some(migration) = known.get(version) else {
            // Only a flowhub newer than this one could have recorded it.
            return Err(too_new_or_unknown(
                legacy.iter().chain(applied.keys()).copied(),
                known_max,
                *version,
            ));
        };
        // What sqlx's `skip` does: record as applied without running the SQL.
        conn.skip(TABLE, migration)
            .await
            .map_err(from_migrate_error)?;
        adopted.push(info_of(migration));
    }
    if !adopted.is_empty() {
        applied = applied_by_version(conn).await?;
    }

    if let Some(version) = conn
        .dirty_version(TABLE)
        .await
        .map_err(from_migrate_error)?
    {
        return Err(ConnectError::Dirty { version });
    }
    if let Some(&unknown) = applied.keys().find(|v| !known.contains_key(v)) {
        return Err(too_new_or_unknown(
            applied.keys().copied(),
            known_max,
            unknown,
        ));
    }
    for (version, recorded) in &applied {
        let migration = known[version];
        if migration.checksum != recorded.checksum {
            return Err(ConnectError::ChecksumMismatch {
                version: *version,
                description: migration.description.to_string(),
            });
        }
    }
    let pending: Vec<MigrationInfo> = known
        .values()
        .filter(|m| !applied.contains_key(&m.version))
        .map(|m| info_of(m))
        .collect();
    let version_after = applied
        .keys()
        .chain(pending.iter().map(|m| &m.version))
        .copied()
        .max()
        .unwrap_or(0);
    Ok(Plan {
        adopted,
        pending,
        version_after,
    })
}

async fn applied_by_version<C: Migrate + Send>(
    conn: &mut C,
) -> Result<BTreeMap<i64, AppliedMigration>, ConnectError> {
    Ok(conn
        .list_applied_migrations(TABLE)
        .await
        .map_err(from_migrate_error)?
        .into_iter()
        .map(|m| (m.version, m))
        .collect())
}

/// The refusal for a recorded `version` this binary lacks: "too new" when the database
/// is ahead of the binary, otherwise an unknown migration in the middle.
fn too_new_or_unknown(
    recorded: impl Iterator<Item = i64>,
    known: i64,
    version: i64,
) -> ConnectError {
    let newest = recorded.collect::<BTreeSet<_>>().last().copied();
    match newest {
        Some(database) if database > known => ConnectError::SchemaTooNew { database, known },
        _ => ConnectError::UnknownMigration { version, known },
    }
}

fn info_of(migration: &Migration) -> MigrationInfo {
    MigrationInfo {
        version: migration.version,
        description: migration.description.to_string(),
    }
}

fn description_of(version: i64) -> String {
    FILES
        .iter()
        .find(|(v, _, _)| *v == version)
        .map_or_else(String::new, |(_, d, _)| (*d).to_owned())
}

/// sqlx's migration errors as ours. The checks in [`prepare`] run first, so the
/// validation variants here are a backstop.
fn from_migrate_error(e: MigrateError) -> ConnectError {
    match e {
        MigrateError::Execute(e) => e.into(),
        MigrateError::ExecuteMigration(e, version) => ConnectError::MigrationFailed {
            version,
            description: description_of(version),
            source: db_error(e),
        },
        MigrateError::VersionMissing(version) => ConnectError::UnknownMigration {
            version,
            known: known_version(),
        },
        MigrateError::VersionMismatch(version) => ConnectError::ChecksumMismatch {
            version,
            description: description_of(version),
        },
        MigrateError::Dirty(version) => ConnectError::Dirty { version },
        other => ConnectError::Store(StoreError::Query(format!("migrating: {other}"))),
    }
}

/// Applied versions recorded in `_sqlx_migrations`, ascending.
pub(super) async fn applied(pool: &DbPool) -> Result<Vec<i64>, sqlx::Error> {
    with_pool!(pool, |p| {
        let rows: Vec<(i64,)> =
            sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                .fetch_all(p)
                .await?;
        Ok::<_, sqlx::Error>(rows.into_iter().map(|(v,)| v).collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our migrators must equal what sqlx resolves from the directories (what
    /// `migrate!` would embed): same versions, descriptions, types, checksums, no file
    /// forgotten.
    #[tokio::test]
    async fn embedded_migrations_match_sqlx_reading_of_the_directories() {
        for (dir, ours) in [("sqlite", &*SQLITE), ("postgres", &*POSTGRES)] {
            let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../migrations")
                .join(dir);
            let theirs = Migrator::new(path.as_path())
                .await
                .unwrap_or_else(|e| panic!("sqlx reads {}: {e}", path.display()));
            let summary = |m: &Migrator| {
                m.iter()
                    .map(|m| {
                        (
                            m.version,
                            m.description.to_string(),
                            m.migration_type,
                            m.checksum.to_vec(),
                            m.no_tx,
                            m.sql.as_str().to_owned(),
                        )
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(summary(ours), summary(&theirs), "{dir}");
            assert_eq!(ours.iter().last().map(|m| m.version), Some(known_version()));
        }
    }

    #[test]
    fn too_new_names_the_newest_recorded_version() {
        let e = too_new_or_unknown([1, 2, 3, 5, 4].into_iter(), 3, 4);
        assert_eq!(
            e.to_string(),
            "database schema is at version 5, this flowhub knows up to 3: \
             upgrade flowhub or restore the database"
        );
        assert!(matches!(
            too_new_or_unknown([1, 2, 3].into_iter(), 3, 2),
            ConnectError::UnknownMigration {
                version: 2,
                known: 3
            }
        ));
    }
}

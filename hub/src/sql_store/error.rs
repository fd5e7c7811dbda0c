//! Mapping sqlx errors onto [`StoreError`].
//!
//! The split matters to callers: `Unavailable` means "the database could not be reached
//! or is overloaded; the same request may succeed later" (readiness probes and retries key
//! on it), `Query` means the request itself failed, `Corrupt` means stored data did not
//! decode.

use flowhub_actors::store::StoreError;
use sqlx::error::DatabaseError;
use sqlx::postgres::PgDatabaseError;
use sqlx::sqlite::SqliteError;

pub(super) fn db_error(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match &e {
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::Configuration(_) => StoreError::Unavailable(e.to_string()),
        E::Database(db) if is_outage(db.as_ref()) => StoreError::Unavailable(e.to_string()),
        E::ColumnDecode { .. } | E::Decode(_) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Query(e.to_string()),
    }
}

/// Whether the same statement could succeed if simply run again: a lost connection, a
/// deadlock or serialization failure, a busy SQLite file. The writer retries these.
pub(super) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
                let code = pg.code();
                code.starts_with("08") || matches!(code, "40001" | "40P01" | "57P01")
            } else {
                matches!(sqlite_primary_code(db.as_ref()), Some(5 | 6))
            }
        }
        _ => false,
    }
}

/// Database errors that say "the server or file is not usable right now" rather than
/// "this statement is wrong".
fn is_outage(db: &(dyn DatabaseError + 'static)) -> bool {
    if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
        let code = pg.code();
        // 08: connection exception, 53: insufficient resources, 57: operator
        // intervention (shutdown), 58: system error; 40001/40P01: serialization failure
        // and deadlock, transient by definition.
        return ["08", "53", "57", "58"]
            .iter()
            .any(|class| code.starts_with(class))
            || matches!(code, "40001" | "40P01");
    }
    // SQLITE_BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN.
    matches!(sqlite_primary_code(db), Some(5 | 6 | 7 | 8 | 10 | 13 | 14))
}

/// The primary result code of a SQLite error (sqlx reports the extended code, whose low
/// byte is the primary one).
fn sqlite_primary_code(db: &(dyn DatabaseError + 'static)) -> Option<i32> {
    db.try_downcast_ref::<SqliteError>()?;
    let code: i32 = db.code()?.parse().ok()?;
    Some(code & 0xff)
}

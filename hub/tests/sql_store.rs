//! `SqlStore` against real databases: every scenario runs on SQLite (a file in a temp
//! dir) and on PostgreSQL (a fresh database per test).
//!
//! PostgreSQL is required: at `postgres://postgres@127.0.0.1:5432/postgres` (trust auth)
//! unless `FLOWHUB_TEST_POSTGRES` names another admin URL. If it is unreachable the
//! PostgreSQL tests fail with a message saying so; they never skip.

use std::collections::HashSet;
use std::sync::Arc;

use flowhub::sql_store::{ConnectError, SqlStore};
use flowhub_actors::store::{ChangeRecord, FlowVersions, Snapshot, Store, StoreError, StoredFlow};
use sqlx::{AssertSqlSafe, Connection};

const DEFAULT_POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Creates an empty database `flowhub_test_<random>` and returns its URL.
async fn fresh_postgres_url() -> String {
    let admin = std::env::var("FLOWHUB_TEST_POSTGRES")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_ADMIN_URL.to_owned());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required by these tests but {admin} is unreachable: {e}\n\
             Start PostgreSQL there (user `postgres`, trust auth) or point \
             FLOWHUB_TEST_POSTGRES at an admin URL."
            )
        });
    let name = format!("flowhub_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
    let _ = conn.close().await;
    let (base, _admin_db) = admin
        .rsplit_once('/')
        .expect("admin URL ends with /<database>");
    format!("{base}/{name}")
}

/// Drops the database a `fresh_postgres_url` made; best effort.
async fn drop_postgres_database(url: &str) {
    let admin = std::env::var("FLOWHUB_TEST_POSTGRES")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_ADMIN_URL.to_owned());
    let Some((_, name)) = url.rsplit_once('/') else {
        return;
    };
    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let _ = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await;
        let _ = conn.close().await;
    }
}

/// Generates `sqlite::<name>` and `postgres::<name>` tests running `async fn <name>(url)`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let url = format!("sqlite://{}/flowhub.db", dir.path().display());
                    super::$name(url).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let url = super::fresh_postgres_url().await;
                    // Run in a task so the database is dropped even if the scenario panics.
                    let outcome = tokio::spawn(super::$name(url.clone())).await;
                    super::drop_postgres_database(&url).await;
                    if let Err(e) = outcome {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
            )*
        }
    };
}

on_both_backends!(
    append_then_load_keeps_append_order,
    reappend_is_idempotent,
    compact_replaces_covered_changes,
    compact_keeps_concurrently_appended_changes,
    unknown_flow_does_not_exist,
    group_commit_batches_concurrent_appends,
    reopen_sees_everything,
    migrations_are_idempotent,
    flow_members_set_get_delete,
    close_flushes_then_rejects_appends,
    one_bad_append_fails_alone,
    appends_small_and_large_store_every_change_and_count_once,
    two_stores_appending_the_same_changes_store_each_once,
);

async fn connect(url: &str) -> SqlStore {
    // Store logs in test output (shown with --nocapture); RUST_LOG picks the level.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    SqlStore::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect failed: {e}"))
}

/// A change whose hash sorts *against* `n`, so any ordering other than append order
/// shows up, and whose bytes cover every byte value.
fn change(flow: &str, n: u32) -> ChangeRecord {
    let mut bytes: Vec<u8> = (0..=255u8).collect();
    bytes.extend_from_slice(format!("{flow}/{n}").as_bytes());
    ChangeRecord {
        hash: format!("{:08x}{}", u32::MAX - n, "ab".repeat(28)),
        bytes,
    }
}

fn changes(flow: &str, ns: impl IntoIterator<Item = u32>) -> Vec<ChangeRecord> {
    ns.into_iter().map(|n| change(flow, n)).collect()
}

fn snapshot(tag: &str) -> Snapshot {
    Snapshot {
        heads: vec![format!("{tag}01"), format!("{tag}02")],
        bytes: format!("snapshot {tag}").into_bytes(),
        base_heads: None,
    }
}

/// A snapshot built on the stored snapshot `base`.
fn snapshot_on(tag: &str, base: &str) -> Snapshot {
    Snapshot {
        base_heads: Some(snapshot(base).heads),
        ..snapshot(tag)
    }
}

async fn load(store: &SqlStore, flow: &str) -> StoredFlow {
    store
        .load_flow(flow)
        .await
        .unwrap_or_else(|e| panic!("load {flow}: {e}"))
}

async fn append(store: &SqlStore, flow: &str, records: &[ChangeRecord]) {
    store
        .append_changes(flow, records)
        .await
        .unwrap_or_else(|e| panic!("append to {flow}: {e}"));
}

fn backend_of(url: &str) -> &'static str {
    if url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    }
}

async fn append_then_load_keeps_append_order(url: String) {
    let store = connect(&url).await;
    assert_eq!(store.backend(), backend_of(&url));
    store.ping().await.expect("ping");

    append(&store, "f1", &changes("f1", [1, 2])).await;
    append(&store, "other", &changes("other", [1])).await;
    append(&store, "f1", &changes("f1", [3])).await;
    append(&store, "f1", &changes("f1", [4, 5, 6])).await;

    let flow = load(&store, "f1").await;
    assert!(flow.exists);
    assert_eq!(flow.snapshot, None);
    assert_eq!(
        flow.changes,
        changes("f1", 1..=6),
        "append order, bytes intact"
    );
    assert_eq!(load(&store, "other").await.changes, changes("other", [1]));
    if let Some(path) = url.strip_prefix("sqlite://") {
        let wal = format!("{path}-wal");
        assert!(
            std::path::Path::new(&wal).exists(),
            "SQLite runs in WAL mode"
        );
    }

    // An empty append still creates the flow, as the trait says.
    append(&store, "empty", &[]).await;
    let empty = load(&store, "empty").await;
    assert!(empty.exists);
    assert!(empty.changes.is_empty());
    store.close().await;
}

/// SQLite writes a batch of up to 500 rows in one command (both inserts), a larger one
/// statement by statement, as PostgreSQL always does: both must store every change in
/// order and count one version per append.
async fn appends_small_and_large_store_every_change_and_count_once(url: String) {
    let store = connect(&url).await;
    let versions = |rows: Vec<(String, FlowVersions)>, flow: &str| {
        rows.into_iter()
            .find(|(id, _)| id == flow)
            .map(|(_, v)| v.changes)
    };
    append(&store, "small", &changes("small", 1..=3)).await;
    append(&store, "small", &changes("small", 4..=4)).await;
    append(&store, "large", &changes("large", 1..=1_234)).await;
    append(&store, "large", &[]).await;
    assert_eq!(load(&store, "small").await.changes, changes("small", 1..=4));
    assert_eq!(
        load(&store, "large").await.changes,
        changes("large", 1..=1_234)
    );
    let rows = store
        .flow_versions(&["small".to_owned(), "large".to_owned()])
        .await
        .expect("flow versions");
    assert_eq!(versions(rows.clone(), "small"), Some(2));
    assert_eq!(versions(rows, "large"), Some(2));
    store.close().await;
}

/// Two hub nodes on one database append the same changes to the same flows at once
/// (a client that resends through another node): every append succeeds, and each
/// change is stored once, in an order both agree on.
async fn two_stores_appending_the_same_changes_store_each_once(url: String) {
    const FLOWS: u32 = 4;
    let stores = [Arc::new(connect(&url).await), Arc::new(connect(&url).await)];
    let mut tasks = Vec::new();
    for store in &stores {
        for f in 0..FLOWS {
            for n in 0..10u32 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    // Every flow of the batch, overlapping ranges of changes.
                    let flow = format!("shared-{}", (f + n) % FLOWS);
                    append(&store, &flow, &changes(&flow, n..n + 5)).await;
                }));
            }
        }
    }
    for task in tasks {
        task.await.expect("append task");
    }
    for f in 0..FLOWS {
        let flow = format!("shared-{f}");
        let from_first = load(&stores[0], &flow).await.changes;
        let mut hashes: Vec<String> = from_first.iter().map(|c| c.hash.clone()).collect();
        hashes.sort();
        hashes.dedup();
        assert_eq!(
            hashes.len(),
            from_first.len(),
            "{flow}: a change stored twice"
        );
        assert_eq!(hashes.len(), 14, "{flow}: changes 0..14, each once");
        assert_eq!(load(&stores[1], &flow).await.changes, from_first);
    }
    for store in &stores {
        store.close().await;
    }
}

async fn reappend_is_idempotent(url: String) {
    let store = Arc::new(connect(&url).await);
    append(&store, "f", &changes("f", [1, 2])).await;
    append(&store, "f", &changes("f", [2, 1, 3])).await;
    // The same change twice within one call, and within one batch (concurrent calls).
    append(&store, "f", &[change("f", 4), change("f", 4)]).await;
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { append(&store, "f", &changes("f", [5, 3, 1])).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("append task");
    }
    assert_eq!(load(&store, "f").await.changes, changes("f", 1..=5));
    store.close().await;
}

async fn compact_replaces_covered_changes(url: String) {
    let store = connect(&url).await;
    append(&store, "f", &changes("f", 1..=4)).await;
    let covered: Vec<String> = changes("f", 1..=3).into_iter().map(|c| c.hash).collect();
    store
        .compact("f", snapshot("s1"), &covered)
        .await
        .expect("compact 1");
    let flow = load(&store, "f").await;
    assert_eq!(flow.snapshot, Some(snapshot("s1").bytes));
    assert_eq!(flow.changes, changes("f", [4]), "uncovered change kept");

    // A second compaction replaces the snapshot; hashes not stored are ignored.
    append(&store, "f", &changes("f", [5])).await;
    let covered = vec![change("f", 4).hash, "feedface".to_owned()];
    store
        .compact("f", snapshot_on("s2", "s1"), &covered)
        .await
        .expect("compact 2");
    let flow = load(&store, "f").await;
    assert_eq!(flow.snapshot, Some(snapshot("s2").bytes));
    assert_eq!(flow.changes, changes("f", [5]));

    // Other flows are untouched by a compaction, even for equal hashes.
    append(&store, "g", &changes("g", 1..=2)).await;
    store
        .compact("f", snapshot_on("s3", "s2"), &[change("g", 1).hash])
        .await
        .expect("compact 3");
    assert_eq!(load(&store, "g").await.changes, changes("g", 1..=2));

    // A compaction built on a snapshot that is no longer the stored one (another node
    // compacted meanwhile) is refused and changes nothing.
    append(&store, "f", &changes("f", [6])).await;
    let stale = store
        .compact("f", snapshot_on("s9", "s1"), &[change("f", 6).hash])
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    let stale = store
        .compact("f", snapshot("s9"), &[change("f", 6).hash])
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    let flow = load(&store, "f").await;
    assert_eq!(flow.snapshot, Some(snapshot("s3").bytes));
    assert_eq!(flow.snapshot_heads, Some(snapshot("s3").heads));
    assert_eq!(flow.changes, changes("f", 5..=6));

    // Compacting a flow never written creates it.
    store
        .compact("fresh", snapshot("s4"), &[])
        .await
        .expect("compact fresh");
    let fresh = load(&store, "fresh").await;
    assert!(fresh.exists);
    assert_eq!(fresh.snapshot, Some(snapshot("s4").bytes));
    store.close().await;
}

async fn compact_keeps_concurrently_appended_changes(url: String) {
    let store = Arc::new(connect(&url).await);
    // More covered changes than one delete removes (the store deletes them in several
    // short transactions, appends in between).
    append(&store, "f", &changes("f", 1..=350)).await;
    let covered: Vec<String> = changes("f", 1..=350).into_iter().map(|c| c.hash).collect();

    // Appends racing the compaction, one at a time so their order is known.
    let appender = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 351..=380 {
                append(&store, "f", &changes("f", [n])).await;
            }
        })
    };
    store
        .compact("f", snapshot("s"), &covered)
        .await
        .expect("compact");
    appender.await.expect("appender");

    let flow = load(&store, "f").await;
    assert_eq!(flow.snapshot, Some(snapshot("s").bytes));
    assert_eq!(flow.changes, changes("f", 351..=380));
    store.close().await;
}

async fn unknown_flow_does_not_exist(url: String) {
    let store = connect(&url).await;
    assert_eq!(load(&store, "nope").await, StoredFlow::default());
    // Granting access does not make a flow exist.
    store
        .set_flow_member("nope", "alice", Some("owner"))
        .await
        .expect("set member");
    assert!(!load(&store, "nope").await.exists);
    store.close().await;
}

async fn group_commit_batches_concurrent_appends(url: String) {
    const FLOWS: u32 = 20;
    const PER_FLOW: u32 = 10;
    let store = Arc::new(connect(&url).await);
    let before = store.stats();
    let start = Arc::new(tokio::sync::Barrier::new((FLOWS * PER_FLOW) as usize));
    let mut tasks = Vec::new();
    for f in 0..FLOWS {
        for n in 0..PER_FLOW {
            let (store, start) = (store.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                let flow = format!("flow-{f}");
                // 1 to 3 changes per append.
                let records = changes(&flow, (0..=n % 3).map(|k| n * 10 + k));
                start.wait().await;
                append(&store, &flow, &records).await;
            }));
        }
    }
    for task in tasks {
        task.await.expect("append task");
    }
    let stats = store.stats();
    let (batches, appends) = (
        stats.batches - before.batches,
        stats.appends - before.appends,
    );
    let expected_changes: u64 =
        (0..PER_FLOW).map(|n| u64::from(n % 3 + 1)).sum::<u64>() * u64::from(FLOWS);
    assert_eq!(appends, u64::from(FLOWS * PER_FLOW));
    assert_eq!(stats.changes - before.changes, expected_changes);
    assert!(
        batches * 4 <= appends,
        "expected group commit (at least 4 appends per transaction on average), \
         got {batches} transactions for {appends} appends"
    );
    eprintln!(
        "{}: {appends} appends in {batches} transactions",
        backend_of(&url)
    );

    for f in 0..FLOWS {
        let flow = format!("flow-{f}");
        let stored: HashSet<String> = load(&store, &flow)
            .await
            .changes
            .into_iter()
            .map(|c| c.hash)
            .collect();
        let expected: HashSet<String> = (0..PER_FLOW)
            .flat_map(|n| changes(&flow, (0..=n % 3).map(move |k| n * 10 + k)))
            .map(|c| c.hash)
            .collect();
        assert_eq!(stored, expected, "{flow}");
    }
    store.close().await;
}

async fn reopen_sees_everything(url: String) {
    {
        let store = connect(&url).await;
        append(&store, "a", &changes("a", 1..=3)).await;
        append(&store, "b", &changes("b", 1..=2)).await;
        store
            .compact("a", snapshot("a"), &[change("a", 1).hash])
            .await
            .expect("compact");
        store
            .set_flow_member("a", "alice", Some("editor"))
            .await
            .expect("member");
        store.close().await;
    }
    {
        // Dropped without `close`: what `append_changes` acknowledged is committed.
        let store = connect(&url).await;
        append(&store, "c", &changes("c", [1])).await;
    }
    let store = connect(&url).await;
    let a = load(&store, "a").await;
    assert_eq!(a.snapshot, Some(snapshot("a").bytes));
    assert_eq!(a.changes, changes("a", 2..=3));
    assert_eq!(load(&store, "b").await.changes, changes("b", 1..=2));
    assert_eq!(load(&store, "c").await.changes, changes("c", [1]));
    assert_eq!(
        store
            .flow_role("a", "alice")
            .await
            .expect("role")
            .as_deref(),
        Some("editor")
    );
    store.close().await;
}

async fn migrations_are_idempotent(url: String) {
    // Two hubs starting at once on an empty database, then a restart.
    let (first, second) = tokio::join!(SqlStore::connect(&url), SqlStore::connect(&url));
    let first = first.unwrap_or_else(|e| panic!("first concurrent connect: {e}"));
    let second = second.unwrap_or_else(|e| panic!("second concurrent connect: {e}"));
    append(&first, "f", &changes("f", [1])).await;
    first.close().await;
    second.close().await;

    let again = connect(&url).await;
    assert_eq!(
        again.schema_versions().await.expect("versions"),
        vec![1, 2, 3, 4]
    );
    assert_eq!(load(&again, "f").await.changes, changes("f", [1]));
    again.close().await;
}

async fn flow_members_set_get_delete(url: String) {
    let store = connect(&url).await;
    let role = |flow: &'static str, user: &'static str| {
        let store = &store;
        async move { store.flow_role(flow, user).await.expect("flow_role") }
    };
    assert_eq!(role("f", "alice").await, None);
    store
        .set_flow_member("f", "alice", Some("editor"))
        .await
        .expect("grant");
    store
        .set_flow_member("f", "bob", Some("viewer"))
        .await
        .expect("grant bob");
    assert_eq!(role("f", "alice").await.as_deref(), Some("editor"));
    store
        .set_flow_member("f", "alice", Some("owner"))
        .await
        .expect("change role");
    assert_eq!(role("f", "alice").await.as_deref(), Some("owner"));
    assert_eq!(role("g", "alice").await, None, "roles are per flow");

    store
        .set_flow_member("f", "alice", None)
        .await
        .expect("revoke");
    assert_eq!(role("f", "alice").await, None);
    store
        .set_flow_member("f", "alice", None)
        .await
        .expect("revoking twice is fine");
    assert_eq!(role("f", "bob").await.as_deref(), Some("viewer"));
    store.close().await;
}

async fn close_flushes_then_rejects_appends(url: String) {
    let store = Arc::new(connect(&url).await);
    let tasks: Vec<_> = (0..50)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let record = change("f", n);
                store
                    .append_changes("f", std::slice::from_ref(&record))
                    .await
                    .map(|()| record)
            })
        })
        .collect();
    store.close().await;
    let mut acknowledged = Vec::new();
    for task in tasks {
        match task.await.expect("append task") {
            Ok(record) => acknowledged.push(record.hash),
            Err(StoreError::Unavailable(_)) => {}
            Err(e) => panic!("append racing close failed unexpectedly: {e}"),
        }
    }
    assert!(matches!(
        store.append_changes("f", &changes("f", [99])).await,
        Err(StoreError::Unavailable(_))
    ));
    store.close().await; // twice is fine

    let reopened = connect(&url).await;
    let stored: HashSet<String> = load(&reopened, "f")
        .await
        .changes
        .into_iter()
        .map(|c| c.hash)
        .collect();
    for hash in acknowledged {
        assert!(stored.contains(&hash), "acknowledged change {hash} lost");
    }
    reopened.close().await;
}

/// PostgreSQL rejects NUL in TEXT; that append must fail without failing the appends
/// that shared its transaction (the writer retries a failed batch request by request).
async fn one_bad_append_fails_alone(url: String) {
    const GOOD: u32 = 40;
    let store = Arc::new(connect(&url).await);
    let start = Arc::new(tokio::sync::Barrier::new(GOOD as usize + 1));
    let mut good = Vec::new();
    for n in 0..GOOD {
        let (store, start) = (store.clone(), start.clone());
        good.push(tokio::spawn(async move {
            start.wait().await;
            append(&store, &format!("good-{n}"), &changes("good", [n])).await;
        }));
    }
    let bad = {
        let (store, start) = (store.clone(), start.clone());
        tokio::spawn(async move {
            start.wait().await;
            store
                .append_changes("bad\0flow", &changes("bad", [1]))
                .await
        })
    };
    for task in good {
        task.await.expect("good append");
    }
    let bad = bad.await.expect("bad append task");
    match backend_of(&url) {
        "postgres" => assert!(matches!(bad, Err(StoreError::Query(_))), "{bad:?}"),
        _ => bad.expect("SQLite stores NUL in TEXT"),
    }
    for n in 0..GOOD {
        assert_eq!(
            load(&store, &format!("good-{n}")).await.changes,
            changes("good", [n])
        );
    }
    store.close().await;
}

#[tokio::test]
async fn bad_urls_are_unavailable() {
    let err = SqlStore::connect("mysql://root@localhost/db")
        .await
        .expect_err("mysql is not supported");
    assert!(
        matches!(err, ConnectError::Store(StoreError::Unavailable(_))),
        "{err}"
    );
    let err = SqlStore::connect("postgres://postgres@127.0.0.1:1/nothing")
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        matches!(err, ConnectError::Store(StoreError::Unavailable(_))),
        "{err}"
    );
}

/// SQLite's WAL is checkpointed by the store in the background, not left to the
/// commits (see `sql_store::checkpoint`): after appends and a pause, the database file
/// alone, without its WAL, holds every change. If background checkpoints stopped, the
/// counter would not move and the copied file would miss changes (SQLite's own
/// checkpoint waits for 10,000 WAL pages, far more than this test writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_is_checkpointed_in_the_background() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("flowhub.db");
    let store = connect(&format!("sqlite://{}", path.display())).await;
    let flows: Vec<String> = (0..5).map(|f| format!("ckpt-{f}")).collect();
    for n in 0..20 {
        for flow in &flows {
            append(&store, flow, &changes(flow, [n])).await;
        }
    }
    // The first commit started a checkpoint; the next starts once the interval is
    // over, and copies everything committed so far.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let before = store.stats().wal_checkpoints;
    append(&store, &flows[0], &changes(&flows[0], [20])).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.stats().wal_checkpoints <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "no background checkpoint after the interval"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let copy_dir = tempfile::tempdir().expect("temp dir");
    let copy = copy_dir.path().join("flowhub.db");
    std::fs::copy(&path, &copy).expect("copy the database file, not its WAL");
    store.close().await;
    let copied = connect(&format!("sqlite://{}", copy.display())).await;
    assert_eq!(
        load(&copied, &flows[0]).await.changes,
        changes(&flows[0], 0..=20)
    );
    for flow in &flows[1..] {
        assert_eq!(load(&copied, flow).await.changes, changes(flow, 0..20));
    }
    copied.close().await;
}

/// A SQLite append is one command holding its own `BEGIN IMMEDIATE … COMMIT`. When it
/// fails part-way (here a trigger refuses the change row after the flow row was
/// written), nothing of it stays, and the connection it ran on does not go back to
/// the pool with the transaction still open: later appends would fail with "cannot
/// start a transaction within a transaction", or wait out the busy timeout behind the
/// write lock the open transaction holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_append_failing_part_way_leaves_nothing_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/flowhub.db", dir.path().display());
    let store = connect(&url).await;
    append(&store, "before", &changes("before", [1])).await;
    let mut admin = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("admin connection");
    sqlx::raw_sql(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON flow_changes \
         WHEN NEW.flow_id = 'poisoned' BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END",
    )
    .execute(&mut admin)
    .await
    .expect("create trigger");
    admin.close().await.expect("close admin connection");

    for attempt in 0..3 {
        let refused = store
            .append_changes("poisoned", &changes("poisoned", [attempt]))
            .await;
        assert!(refused.is_err(), "the trigger refuses the change row");
        assert!(
            !load(&store, "poisoned").await.exists,
            "the flow row written before the refusal was rolled back"
        );
    }
    // With a transaction left open, these fail: on its connection at `BEGIN`, on
    // any other once the busy timeout is over.
    for n in 0..20 {
        append(&store, "after", &changes("after", [n])).await;
    }
    assert_eq!(load(&store, "after").await.changes, changes("after", 0..20));
    assert_eq!(load(&store, "before").await.changes, changes("before", [1]));
    store.close().await;
}

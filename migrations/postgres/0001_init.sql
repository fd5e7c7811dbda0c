-- flowhub schema v1 (PostgreSQL). Applied by hub/src/sql_store/migrate.rs inside one
-- transaction; `flowhub_migrations` is managed by the runner, not here.
-- Timestamps are BIGINT epoch milliseconds so the same Rust code serves SQLite too.

-- One row per flow that has ever been written; `load_flow` reports `exists` from it.
CREATE TABLE flows (
    id         TEXT PRIMARY KEY,
    name       TEXT   NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- No foreign key to `flows`: access may be granted before the first edit creates the
-- flow row, and granting access must not make the flow "exist".
CREATE TABLE flow_members (
    flow_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    role    TEXT NOT NULL,
    PRIMARY KEY (flow_id, user_id)
);

-- Automerge changes not yet folded into a snapshot. `seq` is the append order (one
-- writer task per hub assigns it in commit order); (flow_id, hash) makes appends
-- idempotent.
CREATE TABLE flow_changes (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    flow_id    TEXT   NOT NULL REFERENCES flows (id) ON DELETE CASCADE,
    hash       TEXT   NOT NULL,
    bytes      BYTEA  NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (flow_id, hash)
);
CREATE INDEX flow_changes_flow_seq ON flow_changes (flow_id, seq);

-- Latest compaction snapshot per flow (`heads` is a JSON array of hex hashes).
CREATE TABLE flow_snapshots (
    flow_id    TEXT PRIMARY KEY REFERENCES flows (id) ON DELETE CASCADE,
    heads      TEXT   NOT NULL,
    bytes      BYTEA  NOT NULL,
    created_at BIGINT NOT NULL
);

-- Flow runs and their event log (filled by later work). `runs.flow_id` has no foreign
-- key so run history can outlive (or precede the first edit of) its flow.
CREATE TABLE runs (
    id          TEXT PRIMARY KEY,
    flow_id     TEXT   NOT NULL,
    status      TEXT   NOT NULL,
    started_at  BIGINT,
    finished_at BIGINT,
    last_seq    BIGINT NOT NULL DEFAULT 0,
    flow_heads  TEXT   NOT NULL DEFAULT '[]'
);
CREATE INDEX runs_flow_started ON runs (flow_id, started_at);

CREATE TABLE run_events (
    run_id   TEXT   NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq      BIGINT NOT NULL,
    event_id TEXT   NOT NULL,
    kind     TEXT   NOT NULL,
    node_id  TEXT,
    payload  TEXT   NOT NULL,
    ts       BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq),
    UNIQUE (run_id, event_id)
);

-- flowhub schema v2 (SQLite): what the run actors need beyond v1's `runs` table.
-- `state` is the run's RunSnapshot as JSON (steps, recent logs) after its last stored
-- event, so a run reloads without replaying its whole log; the scalar columns stay the
-- queryable summary. `created_at` (epoch ms, when the hub first stored the run) orders
-- a flow's runs "most recent first".
ALTER TABLE runs ADD COLUMN state TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN created_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX runs_flow_created ON runs (flow_id, created_at);

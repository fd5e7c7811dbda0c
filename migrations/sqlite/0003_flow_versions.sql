-- flowhub schema v3: versions a node polls to notice, from the store alone, what the
-- (at most once) bus did not tell it.
-- `flows.version` goes up by one with every committed append to the flow: a node
-- holding the flow open compares it with what it has seen and catches up from the
-- store when another node wrote (a split bus, a lost message, a Redis outage).
ALTER TABLE flows ADD COLUMN version BIGINT NOT NULL DEFAULT 0;

-- Goes up by one with every change to the flow's `flow_members` rows: a node re-reads
-- the members of its open sessions when it is behind, so a lost revocation message
-- delays the revocation by one poll interval, never indefinitely. Its own table: access
-- may be granted before the flow row exists.
CREATE TABLE flow_member_versions (
    flow_id TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);

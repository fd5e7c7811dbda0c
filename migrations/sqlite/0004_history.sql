-- flowhub schema v4: history attribution and named versions.

-- Which verified user each Automerge actor of a flow belongs to. The hub binds an
-- actor to the user whose session first sent a change made by it, and refuses changes
-- by an actor bound to somebody else, so a change's author is what the hub saw, never
-- what the change claims. One row per actor (a client replica), not per change.
CREATE TABLE flow_actors (
    flow_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    user_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    PRIMARY KEY (flow_id, actor)
);

-- Heads pinned under a name (`POST /v1/flows/{id}/versions`).
CREATE TABLE flow_named_versions (
    flow_id TEXT NOT NULL,
    name TEXT NOT NULL,
    heads TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (flow_id, name)
);

-- stem SQLite schema, version 1: tasks, dead letters, results, workers.
-- Times are INTEGER ms since the Unix epoch. Every row carries ns, the
-- engine's namespace, so several deployments can share one file.

-- One row per applied migration; the schema version is max(version).
CREATE TABLE stem_schema_version (
    version     INTEGER PRIMARY KEY,
    applied_at  INTEGER NOT NULL,
    description TEXT    NOT NULL
);

-- One row per task waiting, delayed or leased. A row is claimable when
-- lease_until IS NULL and ready_at <= now, or when lease_until <= now (an
-- expired lease; the next claim clears it first). Claims take rows in
-- (ready_at, id) order, so the queue is FIFO, a delayed task takes its
-- place at its ETA, and a requeued or expired task goes back to its
-- original place at the head.
CREATE TABLE stem_tasks (
    id          INTEGER PRIMARY KEY,
    ns          TEXT    NOT NULL,
    queue       TEXT    NOT NULL,
    task_id     TEXT    NOT NULL,
    payload     BLOB    NOT NULL, -- the envelope as JSON
    ready_at    INTEGER NOT NULL, -- publish time, ETA or retry time
    lease_until INTEGER,          -- NULL unless leased
    token       TEXT              -- the current delivery's token, NULL unless leased
);
-- Claim and PendingCount: the ready rows of a queue in claim order.
CREATE INDEX stem_tasks_ready ON stem_tasks (ns, queue, ready_at) WHERE lease_until IS NULL;
-- Reclaiming expired leases, and the next lease deadline of a queue.
CREATE INDEX stem_tasks_leased ON stem_tasks (ns, queue, lease_until) WHERE lease_until IS NOT NULL;

-- Dead letters, newest = highest id; capped per queue at Nack time.
CREATE TABLE stem_dead_letters (
    id      INTEGER PRIMARY KEY,
    ns      TEXT    NOT NULL,
    queue   TEXT    NOT NULL,
    task_id TEXT    NOT NULL,
    payload BLOB    NOT NULL, -- the envelope as JSON
    reason  TEXT    NOT NULL,
    dead_at INTEGER NOT NULL
);
CREATE INDEX stem_dead_letters_queue ON stem_dead_letters (ns, queue, id);

-- Task states. attempt and state_rank (result.State.Rank) let an upsert keep the
-- newer state (result.Newer) without decoding the JSON.
CREATE TABLE stem_results (
    ns         TEXT    NOT NULL,
    task_id    TEXT    NOT NULL,
    attempt    INTEGER NOT NULL,
    state_rank INTEGER NOT NULL,
    state      BLOB    NOT NULL, -- result.TaskState as JSON
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (ns, task_id)
);
CREATE INDEX stem_results_expiry ON stem_results (expires_at);

-- Worker heartbeats; namespace is the registry namespace
-- (WorkerInfo.Namespace), a second level under ns.
CREATE TABLE stem_workers (
    ns         TEXT    NOT NULL,
    namespace  TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    info       BLOB    NOT NULL, -- registry.WorkerInfo as JSON
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (ns, namespace, id)
) WITHOUT ROWID;

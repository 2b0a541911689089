-- stem SQLite schema, version 4: the revoke store's table, owned by the
-- engine. Before version 4 the revoke store created the same table itself
-- (IF NOT EXISTS keeps its rows; migrate first adds the sig column to a
-- table made before records were signed). Keyed by (namespace, task_id); a
-- row is replaced only by a strictly higher version. Times are fixed-width
-- UTC text ("2006-01-02T15:04:05.000000000Z", NULL for the zero time),
-- which orders as the times do, to the nanosecond. sig is the record's
-- HMAC (STEM_CONTROL_SIGNING_KEY), '' when unsigned.
CREATE TABLE IF NOT EXISTS stem_revokes (
    namespace    TEXT    NOT NULL,
    task_id      TEXT    NOT NULL,
    version      INTEGER NOT NULL CHECK (version > 0),
    issued_at    TEXT,
    terminate    INTEGER NOT NULL DEFAULT 0,
    reason       TEXT    NOT NULL DEFAULT '',
    requested_by TEXT    NOT NULL DEFAULT '',
    expires_at   TEXT,
    updated_at   INTEGER NOT NULL, -- ms since the epoch
    sig          TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (namespace, task_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS stem_revokes_expiry ON stem_revokes (namespace, expires_at) WHERE expires_at IS NOT NULL;

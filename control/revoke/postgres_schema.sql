-- The Postgres revoke store's table, created by PostgresStore's migration.
-- It is idempotent: it runs at every OpenPostgres/NewPostgres, under a
-- transaction-scoped advisory lock, so processes starting together do not
-- race on CREATE. {{table}} and {{index}} are replaced by quoted identifiers.
-- Statements are separated by semicolons at the end of a line.

CREATE TABLE IF NOT EXISTS {{table}} (
    namespace    text        NOT NULL,
    task_id      text        NOT NULL,
    version      bigint      NOT NULL CHECK (version > 0),
    issued_at    timestamptz,
    terminate    boolean     NOT NULL DEFAULT false,
    reason       text        NOT NULL DEFAULT '',
    requested_by text        NOT NULL DEFAULT '',
    expires_at   timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    sig          text        NOT NULL DEFAULT '',
    PRIMARY KEY (namespace, task_id)
);

-- Signed records (STEM_CONTROL_SIGNING_KEY): tables made before them gain
-- the column; unsigned rows keep ''.
ALTER TABLE {{table}} ADD COLUMN IF NOT EXISTS sig text NOT NULL DEFAULT '';

CREATE INDEX IF NOT EXISTS {{index}} ON {{table}} (namespace, expires_at)
    WHERE expires_at IS NOT NULL;

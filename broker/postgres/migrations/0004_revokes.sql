-- stem Postgres schema, version 4: the revoke store lives in the engine's
-- schema. Keyed by (namespace, task_id); a row is replaced only by a
-- strictly higher version. sig is the record's HMAC
-- (STEM_CONTROL_SIGNING_KEY), '' when unsigned.
CREATE TABLE {schema}.revokes (
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
CREATE INDEX ON {schema}.revokes (namespace, expires_at) WHERE expires_at IS NOT NULL;

-- Before version 4 the revoke store kept its own table, stem_revokes in
-- the search path, for every namespace: copy its rows (the table stays,
-- for an older binary still running).
DO $$
BEGIN
    IF to_regclass('stem_revokes') IS NOT NULL THEN
        IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('stem_revokes') AND attname = 'sig' AND NOT attisdropped) THEN
            INSERT INTO {schema}.revokes (namespace, task_id, version, issued_at, terminate, reason, requested_by, expires_at, sig)
            SELECT namespace, task_id, version, issued_at, terminate, reason, requested_by, expires_at, sig FROM stem_revokes
            ON CONFLICT DO NOTHING;
        ELSE
            INSERT INTO {schema}.revokes (namespace, task_id, version, issued_at, terminate, reason, requested_by, expires_at)
            SELECT namespace, task_id, version, issued_at, terminate, reason, requested_by, expires_at FROM stem_revokes
            ON CONFLICT DO NOTHING;
        END IF;
    END IF;
END
$$;

-- stem SQLite schema, version 3: pauses scoped to a worker, and signed.
-- A pause row is keyed by (ns, namespace, worker, queue): worker is ''
-- for every worker of the control namespace, a node name, or a full
-- worker id; a worker applies only the rows that designate it. sig is the
-- record's HMAC (STEM_CONTROL_SIGNING_KEY), '' when unsigned. paused_at
-- becomes fixed-width UTC text to the microsecond (the signed precision).
-- SQLite cannot change a primary key, so the table is rebuilt; existing
-- pauses become namespace-wide, unsigned.
CREATE TABLE stem_paused_queues_v3 (
    ns           TEXT NOT NULL,
    namespace    TEXT NOT NULL,
    worker       TEXT NOT NULL DEFAULT '',
    queue        TEXT NOT NULL,
    paused_at    TEXT NOT NULL,
    requested_by TEXT NOT NULL DEFAULT '',
    sig          TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (ns, namespace, worker, queue)
) WITHOUT ROWID;
INSERT INTO stem_paused_queues_v3 (ns, namespace, worker, queue, paused_at)
    SELECT ns, namespace, '', queue,
           strftime('%Y-%m-%dT%H:%M:%S', paused_at / 1000, 'unixepoch') || printf('.%06dZ', (paused_at % 1000) * 1000)
    FROM stem_paused_queues;
DROP TABLE stem_paused_queues;
ALTER TABLE stem_paused_queues_v3 RENAME TO stem_paused_queues;

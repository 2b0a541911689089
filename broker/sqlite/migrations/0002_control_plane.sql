-- stem SQLite schema, version 2: the control plane. Control messages,
-- their live subscribers, and paused queues (broker/sqlite/control.go).
-- ns is the engine's namespace (as in version 1); namespace is the control
-- namespace, a second level under it.

-- Control messages. A subscription remembers the highest id it has seen
-- (taken when it subscribes) and polls for higher ids on its channels:
-- "all" (broadcast), "w:<worker id>" or "r:<reply id>". AUTOINCREMENT keeps
-- ids growing even after the newest rows are deleted, so a subscriber
-- never mistakes a new message for one it has seen. Rows are deleted after
-- a minute, and a reply channel's rows when its subscription closes.
CREATE TABLE stem_control (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    ns         TEXT    NOT NULL,
    namespace  TEXT    NOT NULL,
    channel    TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    created_at INTEGER NOT NULL
);
-- A subscription's poll: its channels' rows above the id it has seen.
CREATE INDEX stem_control_channel ON stem_control (ns, namespace, channel, id);
-- Pruning by age.
CREATE INDEX stem_control_age ON stem_control (created_at);

-- Live subscriptions, one row per channel, refreshed while they live:
-- publishing counts them (the receiver count a requester waits for) in
-- the transaction that inserts the message. A row whose process died
-- without closing expires.
CREATE TABLE stem_control_subscribers (
    ns         TEXT    NOT NULL,
    namespace  TEXT    NOT NULL,
    channel    TEXT    NOT NULL,
    sub_id     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (ns, namespace, channel, sub_id)
) WITHOUT ROWID;

-- Paused queues of a control namespace (stem worker pause / resume).
CREATE TABLE stem_paused_queues (
    ns        TEXT    NOT NULL,
    namespace TEXT    NOT NULL,
    queue     TEXT    NOT NULL,
    paused_at INTEGER NOT NULL,
    PRIMARY KEY (ns, namespace, queue)
) WITHOUT ROWID;

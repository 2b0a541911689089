package postgres

import "strings"

// Every SQL statement of the engine, each with its parameters and result.
// {schema} stands for the Engine's quoted schema; newStatements fills it
// in once per Engine. pgx prepares and caches each statement per
// connection, so the text is parsed and planned once.
const (
	// tplPublish inserts a batch of tasks in the order given (identity ids
	// follow unnest's order, so FIFO holds within a batch).
	// Params: $1 queues text[], $2 task ids text[], $3 envelope JSON
	// bytea[], $4 ETAs in ms since the epoch int8[] (0: none; an ETA in the
	// past counts as now).
	tplPublish = `INSERT INTO {schema}.tasks (queue, task_id, payload, ready_at)
SELECT d.queue, d.task_id, d.payload,
       CASE WHEN d.eta_ms > 0 THEN greatest(to_timestamp(d.eta_ms / 1000.0), now()) ELSE now() END
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int8[]) AS d(queue, task_id, payload, eta_ms)`

	// tplNotify wakes the claims waiting on queues, through every Engine's
	// listening connection; sent at commit.
	// Params: $1 channel text, $2 queues text[].
	// Returns: one void row per queue.
	tplNotify = `SELECT pg_notify($1::text, q) FROM unnest($2::text[]) AS q`

	// tplReclaim clears the expired leases of queues (at most 1000 rows
	// per call, skipping rows another claim holds); the rows keep their
	// ready_at, so they go back to the head.
	// Params: $1 queues text[].
	tplReclaim = `UPDATE {schema}.tasks SET lease_until = NULL, token = NULL
WHERE id IN (
    SELECT id FROM {schema}.tasks
    WHERE queue = ANY($1::text[]) AND lease_until <= now()
    LIMIT 1000
    FOR UPDATE SKIP LOCKED)`

	// tplClaim leases up to $2 ready rows across queues in priority order
	// in one statement: per queue (in the order of $1) the oldest ready
	// rows, locked with SKIP LOCKED so concurrent claims never wait for
	// each other nor take the same row, then the first $2 overall. Rows
	// locked but not taken are released at commit.
	// Params: $1 queues text[] in priority order, $2 max int, $3 lease in
	// ms int8, $4 token tag text ("<tag>."; the row id is appended).
	// Returns: id, queue, lease_until, payload of each leased row, in no
	// particular order (the caller sorts by queue priority, then
	// ready_at, id: prio and ready_at are returned for that).
	tplClaim = `WITH picked AS (
    SELECT t.id, q.prio, t.ready_at
    FROM unnest($1::text[]) WITH ORDINALITY AS q(name, prio)
    CROSS JOIN LATERAL (
        SELECT id, ready_at FROM {schema}.tasks
        WHERE queue = q.name AND lease_until IS NULL AND ready_at <= now()
        ORDER BY ready_at, id
        LIMIT $2::int8
        FOR UPDATE SKIP LOCKED
    ) AS t
    ORDER BY q.prio, t.ready_at, t.id
    LIMIT $2::int8
)
UPDATE {schema}.tasks AS t
SET lease_until = now() + $3::int8 * interval '1 millisecond', token = $4::text || t.id
FROM picked
WHERE t.id = picked.id
RETURNING t.id, picked.prio, picked.ready_at, t.lease_until, t.payload`

	// tplNextDue says when queues next have a claimable task: the earliest
	// ready_at of their unleased rows or deadline of their leased rows,
	// as ms from now by the server's clock (<= 0: due now), or NULL when
	// they hold no task. Two index probes per queue.
	// Params: $1 queues text[].
	// Returns: ms int8 or NULL.
	tplNextDue = `SELECT (extract(epoch FROM min(least(r.ready, r.lease)) - clock_timestamp()) * 1000)::int8
FROM unnest($1::text[]) AS q(name), LATERAL (SELECT
    (SELECT ready_at FROM {schema}.tasks WHERE queue = q.name AND lease_until IS NULL ORDER BY ready_at LIMIT 1) AS ready,
    (SELECT lease_until FROM {schema}.tasks WHERE queue = q.name AND lease_until IS NOT NULL ORDER BY lease_until LIMIT 1) AS lease
) AS r`

	// tplAck deletes delivered rows that still carry their tokens. A token
	// names its row ("<tag>.<id>"), so matching ids and tokens as two sets
	// is exact.
	// Params: $1 ids int8[], $2 tokens text[].
	tplAck = `DELETE FROM {schema}.tasks WHERE id = ANY($1::int8[]) AND token = ANY($2::text[])`

	// tplRetry puts delivered rows back with new envelopes, ready after
	// their delays (at the tail of their queues).
	// Params: $1 ids int8[], $2 tokens text[], $3 queues text[], $4
	// envelope JSON bytea[], $5 delays in ms int8[].
	tplRetry = `UPDATE {schema}.tasks AS t
SET queue = d.queue, payload = d.payload, ready_at = now() + d.delay_ms * interval '1 millisecond',
    lease_until = NULL, token = NULL
FROM unnest($1::int8[], $2::text[], $3::text[], $4::bytea[], $5::int8[]) AS d(id, token, queue, payload, delay_ms)
WHERE t.id = d.id AND t.token = d.token`

	// tplRequeue hands delivered rows back unchanged; they keep their
	// ready_at, so they are claimed before anything published after them.
	// Params: $1 ids int8[], $2 tokens text[].
	tplRequeue = `UPDATE {schema}.tasks SET lease_until = NULL, token = NULL
WHERE id = ANY($1::int8[]) AND token = ANY($2::text[])`

	// tplDeadLetter moves delivered rows to the dead letters, in the order
	// given (so the last is the newest).
	// Params: $1 ids int8[], $2 tokens text[], $3 reasons text[].
	tplDeadLetter = `WITH d AS (
    SELECT * FROM unnest($1::int8[], $2::text[], $3::text[]) WITH ORDINALITY AS d(id, token, reason, ord)
), gone AS (
    DELETE FROM {schema}.tasks AS t USING d
    WHERE t.id = d.id AND t.token = d.token
    RETURNING t.queue, t.task_id, t.payload, d.reason, d.ord
)
INSERT INTO {schema}.dead_letters (queue, task_id, payload, reason, dead_at)
SELECT queue, task_id, payload, reason, now() FROM gone ORDER BY ord`

	// tplTrimDead deletes all but the newest $2 dead letters of each queue.
	// Params: $1 queues text[], $2 cap int.
	tplTrimDead = `DELETE FROM {schema}.dead_letters AS dl
USING unnest($1::text[]) AS q(name)
WHERE dl.queue = q.name AND dl.id <= (
    SELECT id FROM {schema}.dead_letters WHERE queue = q.name ORDER BY id DESC OFFSET $2 LIMIT 1)`

	// tplExtend raises the lease of delivered rows that still carry their
	// tokens to now + $3 ms by the server's clock (never lowers it).
	// Params: $1 ids int8[], $2 tokens text[], $3 lease in ms int8.
	// Returns: the token of each extended row.
	tplExtend = `UPDATE {schema}.tasks AS t SET lease_until = greatest(t.lease_until, now() + $3::int8 * interval '1 millisecond')
FROM unnest($1::int8[], $2::text[]) AS d(id, token)
WHERE t.id = d.id AND t.token = d.token
RETURNING t.token`

	// tplPending counts the ready rows of a queue (an index range scan).
	// Params: $1 queue. Returns: count.
	tplPending = `SELECT count(*) FROM {schema}.tasks WHERE queue = $1 AND lease_until IS NULL AND ready_at <= now()`

	// tplDeadLetters lists a queue's dead letters, newest first.
	// Params: $1 queue, $2 limit. Returns: payload, reason, dead_at.
	tplDeadLetters = `SELECT payload, reason, dead_at FROM {schema}.dead_letters WHERE queue = $1 ORDER BY id DESC LIMIT $2`

	// tplSetResults upserts states (one per task id, in task id order so
	// concurrent calls lock rows in the same order), keeping the stored
	// one unless the new one is result.Newer (a later attempt, or the same
	// attempt and an equal or higher rank) or the stored one has expired.
	// Params: $1 task ids text[], $2 attempts int4[], $3 ranks int4[], $4
	// state JSON bytea[], $5 TTL in ms int8.
	tplSetResults = `INSERT INTO {schema}.results AS r (task_id, attempt, state_rank, state, expires_at)
SELECT d.task_id, d.attempt, d.state_rank, d.state, now() + $5::int8 * interval '1 millisecond'
FROM unnest($1::text[], $2::int4[], $3::int4[], $4::bytea[]) AS d(task_id, attempt, state_rank, state)
ON CONFLICT (task_id) DO UPDATE SET
    attempt = excluded.attempt, state_rank = excluded.state_rank,
    state = excluded.state, expires_at = excluded.expires_at
WHERE excluded.attempt > r.attempt
   OR (excluded.attempt = r.attempt AND excluded.state_rank >= r.state_rank)
   OR r.expires_at <= now()`

	// tplGetResult reads one unexpired state.
	// Params: $1 task id. Returns: state JSON.
	tplGetResult = `SELECT state FROM {schema}.results WHERE task_id = $1 AND expires_at > now()`

	// tplSweepResults deletes up to 5000 expired states.
	tplSweepResults = `DELETE FROM {schema}.results WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM {schema}.results WHERE expires_at <= now() LIMIT 5000))`

	// tplSweepWorkers deletes expired heartbeats.
	tplSweepWorkers = `DELETE FROM {schema}.workers WHERE expires_at <= now()`

	// tplHeartbeat upserts a worker's record.
	// Params: $1 registry namespace, $2 worker id, $3 info JSON, $4 TTL in
	// ms int8.
	tplHeartbeat = `INSERT INTO {schema}.workers (namespace, id, info, expires_at)
VALUES ($1, $2, $3, now() + $4::int8 * interval '1 millisecond')
ON CONFLICT (namespace, id) DO UPDATE SET info = excluded.info, expires_at = excluded.expires_at`

	// tplRemoveWorker deletes a worker's record.
	// Params: $1 registry namespace, $2 worker id.
	tplRemoveWorker = `DELETE FROM {schema}.workers WHERE namespace = $1 AND id = $2`

	// tplListWorkers lists the live records of a registry namespace (the
	// caller sorts them by id, whatever the database's collation).
	// Params: $1 registry namespace. Returns: info JSON.
	tplListWorkers = `SELECT info FROM {schema}.workers WHERE namespace = $1 AND expires_at > now()`
)

// statements are the engine's SQL with its schema filled in.
type statements struct {
	publish, notify, reclaim, claim, nextDue, ack, retry, requeue string
	deadLetter, trimDead, extend, pending, deadLetters            string
	setResults, getResult, sweepResults, sweepWorkers             string
	heartbeat, removeWorker, listWorkers                          string
}

func newStatements(quotedSchema string) statements {
	f := func(tpl string) string { return strings.ReplaceAll(tpl, "{schema}", quotedSchema) }
	return statements{
		publish: f(tplPublish), notify: tplNotify, reclaim: f(tplReclaim), claim: f(tplClaim),
		nextDue: f(tplNextDue), ack: f(tplAck), retry: f(tplRetry), requeue: f(tplRequeue),
		deadLetter: f(tplDeadLetter), trimDead: f(tplTrimDead), extend: f(tplExtend),
		pending: f(tplPending), deadLetters: f(tplDeadLetters),
		setResults: f(tplSetResults), getResult: f(tplGetResult),
		sweepResults: f(tplSweepResults), sweepWorkers: f(tplSweepWorkers),
		heartbeat: f(tplHeartbeat), removeWorker: f(tplRemoveWorker), listWorkers: f(tplListWorkers),
	}
}

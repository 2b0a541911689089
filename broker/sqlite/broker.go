package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stemhq/stem/broker"
)

// Every SQL statement of the broker, with its parameters and result.
const (
	// sqlInsertTask publishes one task.
	// Params: ns, queue, task id, envelope JSON, ready_at (ms).
	sqlInsertTask = `INSERT INTO stem_tasks (ns, queue, task_id, payload, ready_at) VALUES (?, ?, ?, ?, ?)`

	// sqlReclaim clears the expired leases of a queue; the rows keep their
	// ready_at, so they go back to the head.
	// Params: ns, queue, now (ms).
	sqlReclaim = `UPDATE stem_tasks SET lease_until = NULL, token = NULL
WHERE ns = ? AND queue = ? AND lease_until <= ?`

	// sqlClaim leases the oldest ready rows of a queue in one statement.
	// Params: lease deadline (ms), token tag ("<tag>."; the row id is
	// appended), ns, queue, now (ms), limit.
	// Returns: id, ready_at, payload of each leased row (in no particular
	// order; the caller sorts by ready_at, id).
	sqlClaim = `UPDATE stem_tasks SET lease_until = ?1, token = ?2 || id
WHERE id IN (
    SELECT id FROM stem_tasks
    WHERE ns = ?3 AND queue = ?4 AND lease_until IS NULL AND ready_at <= ?5
    ORDER BY ready_at, id LIMIT ?6)
RETURNING id, ready_at, payload`

	// sqlNextDue reads when a queue next has a claimable task: the
	// earliest ready_at of its unleased rows and the earliest deadline of
	// its leased ones (each NULL when there is none). Two index probes.
	// Params: ns, queue.
	sqlNextDue = `SELECT
    (SELECT ready_at FROM stem_tasks WHERE ns = ?1 AND queue = ?2 AND lease_until IS NULL ORDER BY ready_at LIMIT 1),
    (SELECT lease_until FROM stem_tasks WHERE ns = ?1 AND queue = ?2 AND lease_until IS NOT NULL ORDER BY lease_until LIMIT 1)`

	// sqlAck deletes a delivered row if it still carries the token.
	// Params: id, token.
	sqlAck = `DELETE FROM stem_tasks WHERE id = ? AND token = ?`

	// sqlRetry puts a delivered row back with a new envelope and ready time.
	// Params: queue, envelope JSON, ready_at (ms), id, token.
	sqlRetry = `UPDATE stem_tasks SET queue = ?, payload = ?, ready_at = ?, lease_until = NULL, token = NULL
WHERE id = ? AND token = ?`

	// sqlRequeue hands a delivered row back unchanged; it keeps its
	// ready_at, so it is claimed before anything published after it.
	// Params: id, token.
	// Returns: the row's queue.
	sqlRequeue = `UPDATE stem_tasks SET lease_until = NULL, token = NULL WHERE id = ? AND token = ? RETURNING queue`

	// sqlDeadLetter moves a delivered row to the dead letters.
	// Params: reason, dead_at (ms), id, token.
	sqlDeadLetter = `INSERT INTO stem_dead_letters (ns, queue, task_id, payload, reason, dead_at)
SELECT ns, queue, task_id, payload, ?, ? FROM stem_tasks WHERE id = ? AND token = ?`

	// sqlTrimDead deletes all but the newest cap dead letters of a queue.
	// Params: ns, queue, ns, queue, cap.
	sqlTrimDead = `DELETE FROM stem_dead_letters WHERE ns = ? AND queue = ? AND id <= (
    SELECT id FROM stem_dead_letters WHERE ns = ? AND queue = ? ORDER BY id DESC LIMIT 1 OFFSET ?)`

	// sqlExtend raises a lease deadline (never lowers it), if the row still
	// carries the token.
	// Params: deadline (ms), id, token.
	sqlExtend = `UPDATE stem_tasks SET lease_until = max(coalesce(lease_until, 0), ?) WHERE id = ? AND token = ?`

	// sqlPending counts the ready rows of a queue (an index range scan).
	// Params: ns, queue, now (ms).
	sqlPending = `SELECT count(*) FROM stem_tasks WHERE ns = ? AND queue = ? AND lease_until IS NULL AND ready_at <= ?`

	// sqlDeadLetters lists a queue's dead letters, newest first.
	// Params: ns, queue, limit.
	// Returns: payload, reason, dead_at.
	sqlDeadLetters = `SELECT payload, reason, dead_at FROM stem_dead_letters WHERE ns = ? AND queue = ? ORDER BY id DESC LIMIT ?`
)

// Publish enqueues one envelope (one write transaction).
func (e *Engine) Publish(ctx context.Context, env broker.Envelope) error {
	return e.PublishBatch(ctx, []broker.Envelope{env})
}

// PublishBatch enqueues envelopes in one write transaction, all or nothing.
// An invalid envelope rejects the whole batch before anything is written.
// Waiting claims of this Engine are woken at once; those of other Engines
// on the file within their poll interval.
func (e *Engine) PublishBatch(ctx context.Context, envs []broker.Envelope) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	if len(envs) == 0 {
		return nil
	}
	payloads := make([][]byte, len(envs))
	for i, env := range envs {
		if err := env.Validate(); err != nil {
			return fmt.Errorf("sqlite engine: publish: %w", err)
		}
		js, err := json.Marshal(env)
		if err != nil {
			return fmt.Errorf("sqlite engine: publish: encode envelope %s: %w", env.ID, err)
		}
		payloads[i] = js
	}
	now := nowMs()
	var queues []string
	err := e.write(ctx, func(tx *sql.Tx) error {
		st, err := tx.PrepareContext(ctx, sqlInsertTask)
		if err != nil {
			return err
		}
		defer st.Close()
		for i, env := range envs {
			ready := now // an ETA in the past counts as now
			if !env.ETA.IsZero() {
				ready = max(env.ETA.UnixMilli(), now)
			}
			if _, err := st.ExecContext(ctx, e.ns, env.Queue, env.ID, payloads[i], ready); err != nil {
				return err
			}
			if !slices.Contains(queues, env.Queue) {
				queues = append(queues, env.Queue)
			}
		}
		return nil
	})
	if err != nil {
		return e.fail(fmt.Sprintf("publish %d task(s)", len(envs)), err)
	}
	e.wake.notify(queues)
	return nil
}

// write runs fn in a write transaction (BEGIN IMMEDIATE on the Engine's
// single write connection) and commits it.
func (e *Engine) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := e.wdb.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// validateClaim checks ClaimParams.
// Claim leases up to p.Max ready deliveries across p.Queues in priority
// order, in one write transaction. With Wait, when nothing is ready, it
// waits for a publish through this Engine, a commit by another connection
// (seen by the watcher), the earliest ETA or lease deadline of the queues,
// or the end of Wait, and looks again; it takes the write lock again only
// when a read shows a claimable task.
func (e *Engine) Claim(ctx context.Context, p broker.ClaimParams) ([]broker.Delivery, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("sqlite engine: %w", err)
	}
	if err := e.checkOpen(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if p.Wait <= 0 {
		return e.claimOnce(ctx, p)
	}
	deadline := time.Now().Add(p.Wait)
	w := e.wake.register(p.Queues)
	if w == nil {
		return nil, broker.ErrClosed
	}
	defer e.wake.unregister(w)
	for {
		ds, err := e.claimOnce(ctx, p)
		if err != nil || len(ds) > 0 {
			return ds, err
		}
		// Nothing now: wait until something may be claimable.
		for {
			next, err := e.nextDue(ctx, p.Queues)
			if err != nil {
				return nil, err
			}
			now := time.Now()
			if next >= 0 && next <= now.UnixMilli() {
				break // claimable now: claim again
			}
			left := deadline.Sub(now)
			if left <= 0 {
				return nil, nil
			}
			if next >= 0 {
				left = min(left, max(time.UnixMilli(next).Sub(now), time.Millisecond))
			}
			timer := time.NewTimer(left)
			select {
			case <-ctx.Done():
				timer.Stop()
				return nil, ctx.Err()
			case <-e.done:
				timer.Stop()
				return nil, broker.ErrClosed
			case <-w.ch:
			case <-timer.C:
			}
			timer.Stop()
		}
	}
}

// claimOnce runs one claim transaction: per queue in priority order, clear
// its expired leases and lease its oldest ready rows, until p.Max.
func (e *Engine) claimOnce(ctx context.Context, p broker.ClaimParams) ([]broker.Delivery, error) {
	now := time.Now()
	nowMs := now.UnixMilli()
	deadline := now.Add(p.Lease).UnixMilli()
	tag := e.nextTag() + "."
	var out []broker.Delivery
	var corrupt []corruptRow
	err := e.write(ctx, func(tx *sql.Tx) error {
		out, corrupt = out[:0], corrupt[:0]
		for _, q := range p.Queues {
			want := p.Max - len(out)
			if want <= 0 {
				break
			}
			if _, err := tx.ExecContext(ctx, sqlReclaim, e.ns, q, nowMs); err != nil {
				return err
			}
			rows, err := tx.QueryContext(ctx, sqlClaim, deadline, tag, e.ns, q, nowMs, want)
			if err != nil {
				return err
			}
			type claimed struct {
				id, readyAt int64
				payload     []byte
			}
			var got []claimed
			for rows.Next() {
				var c claimed
				if err := rows.Scan(&c.id, &c.readyAt, &c.payload); err != nil {
					rows.Close()
					return err
				}
				got = append(got, c)
			}
			if err := rows.Close(); err != nil {
				return err
			}
			if err := rows.Err(); err != nil {
				return err
			}
			slices.SortFunc(got, func(a, b claimed) int {
				if a.readyAt != b.readyAt {
					return cmpInt(a.readyAt, b.readyAt)
				}
				return cmpInt(a.id, b.id)
			})
			leaseUntil := time.UnixMilli(deadline)
			for _, c := range got {
				token := tag + strconv.FormatInt(c.id, 10)
				var env broker.Envelope
				if err := json.Unmarshal(c.payload, &env); err != nil {
					corrupt = append(corrupt, corruptRow{id: c.id, token: token, err: err})
					continue
				}
				env.Queue = q // the row lives in this queue, whatever the payload says
				out = append(out, broker.Delivery{Envelope: env, Token: token, LeaseUntil: leaseUntil})
			}
			// Undecodable payloads go to the dead letters in the same
			// transaction, so they neither block the queue nor come back.
			for _, c := range corrupt {
				if _, err := tx.ExecContext(ctx, sqlDeadLetter, "undecodable payload: "+c.err.Error(), nowMs, c.id, c.token); err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, sqlAck, c.id, c.token); err != nil {
					return err
				}
			}
			corrupt = corrupt[:0]
		}
		return nil
	})
	if err != nil {
		return nil, e.fail(fmt.Sprintf("claim from %v", p.Queues), err)
	}
	return out, nil
}

// corruptRow is a claimed row whose payload is not an envelope.
type corruptRow struct {
	id    int64
	token string
	err   error
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// nextDue returns the earliest time (ms) at which one of queues has a
// claimable task — possibly now or in the past — or -1 when they hold no
// task at all. It reads only.
func (e *Engine) nextDue(ctx context.Context, queues []string) (int64, error) {
	next := int64(-1)
	for _, q := range queues {
		var ready, lease sql.NullInt64
		if err := e.rdb.QueryRowContext(ctx, sqlNextDue, e.ns, q).Scan(&ready, &lease); err != nil {
			return -1, e.fail(fmt.Sprintf("look for work in queue %s", q), err)
		}
		for _, v := range []sql.NullInt64{ready, lease} {
			if v.Valid && (next < 0 || v.Int64 < next) {
				next = v.Int64
			}
		}
	}
	return next, nil
}

// parseToken returns the row id of a delivery token "<tag>.<id>".
func parseToken(token string) (int64, bool) {
	i := strings.LastIndexByte(token, '.')
	if i < 0 {
		return 0, false
	}
	id, err := strconv.ParseInt(token[i+1:], 10, 64)
	return id, err == nil
}

// Ack deletes finished deliveries in one write transaction. A delivery
// whose lease was lost (the row was redelivered with a new token, or is
// gone) is skipped.
func (e *Engine) Ack(ctx context.Context, ds []broker.Delivery) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	if len(ds) == 0 {
		return nil
	}
	err := e.write(ctx, func(tx *sql.Tx) error {
		st, err := tx.PrepareContext(ctx, sqlAck)
		if err != nil {
			return err
		}
		defer st.Close()
		for _, d := range ds {
			id, ok := parseToken(d.Token)
			if !ok {
				continue
			}
			if _, err := st.ExecContext(ctx, id, d.Token); err != nil {
				return err
			}
		}
		return nil
	})
	return e.fail(fmt.Sprintf("ack %d deliveries", len(ds)), err)
}

// Nack hands deliveries back in one write transaction; each item applies
// only if the row still carries the delivery's token, so a lost lease
// creates no duplicate. Retry rewrites the envelope and makes the row ready
// after Delay (at the tail of its queue); Requeue clears the lease, so the
// row is claimed again from its original place at the head; DeadLetter
// moves the row to the queue's dead letters (trimmed to DeadLetterCap).
func (e *Engine) Nack(ctx context.Context, ns []broker.Nack) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	for _, n := range ns {
		if err := n.Validate(); err != nil {
			return fmt.Errorf("sqlite engine: %w", err)
		}
	}
	if len(ns) == 0 {
		return nil
	}
	payloads := make([][]byte, len(ns))
	for i, n := range ns {
		if n.Action == broker.Retry {
			js, err := json.Marshal(n.Envelope)
			if err != nil {
				return fmt.Errorf("sqlite engine: nack: encode envelope %s: %w", n.Envelope.ID, err)
			}
			payloads[i] = js
		}
	}
	now := nowMs()
	var woken []string
	err := e.write(ctx, func(tx *sql.Tx) error {
		woken = woken[:0]
		var dead []string
		for i, n := range ns {
			id, ok := parseToken(n.Delivery.Token)
			if !ok {
				continue
			}
			switch n.Action {
			case broker.Retry:
				ready := now + max(n.Delay.Milliseconds(), 0)
				res, err := tx.ExecContext(ctx, sqlRetry, n.Envelope.Queue, payloads[i], ready, id, n.Delivery.Token)
				if err != nil {
					return err
				}
				if k, _ := res.RowsAffected(); k > 0 && !slices.Contains(woken, n.Envelope.Queue) {
					woken = append(woken, n.Envelope.Queue)
				}
			case broker.Requeue:
				var q string
				err := tx.QueryRowContext(ctx, sqlRequeue, id, n.Delivery.Token).Scan(&q)
				if errors.Is(err, sql.ErrNoRows) {
					continue
				}
				if err != nil {
					return err
				}
				if !slices.Contains(woken, q) {
					woken = append(woken, q)
				}
			case broker.DeadLetter:
				res, err := tx.ExecContext(ctx, sqlDeadLetter, n.Reason, now, id, n.Delivery.Token)
				if err != nil {
					return err
				}
				if k, _ := res.RowsAffected(); k == 0 {
					continue
				}
				if _, err := tx.ExecContext(ctx, sqlAck, id, n.Delivery.Token); err != nil {
					return err
				}
				if q := n.Delivery.Envelope.Queue; !slices.Contains(dead, q) {
					dead = append(dead, q)
				}
			}
		}
		for _, q := range dead {
			if _, err := tx.ExecContext(ctx, sqlTrimDead, e.ns, q, e.ns, q, e.opts.DeadLetterCap); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return e.fail(fmt.Sprintf("nack %d deliveries", len(ns)), err)
	}
	if len(woken) > 0 {
		e.wake.notify(woken)
	}
	return nil
}

// ExtendLease raises each delivery's lease deadline to max(current, now+d) in place, in
// one write transaction. Tasks whose lease was lost are named by the
// returned *broker.LeaseLostError; the others were extended.
func (e *Engine) ExtendLease(ctx context.Context, ds []broker.Delivery, d time.Duration) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	if d <= 0 {
		return fmt.Errorf("sqlite engine: extend lease: duration %v is not positive", d)
	}
	if len(ds) == 0 {
		return nil
	}
	deadline := time.Now().Add(d).UnixMilli()
	var lost []string
	err := e.write(ctx, func(tx *sql.Tx) error {
		lost = lost[:0]
		st, err := tx.PrepareContext(ctx, sqlExtend)
		if err != nil {
			return err
		}
		defer st.Close()
		for _, dl := range ds {
			id, ok := parseToken(dl.Token)
			if !ok {
				lost = append(lost, dl.Envelope.ID)
				continue
			}
			res, err := st.ExecContext(ctx, deadline, id, dl.Token)
			if err != nil {
				return err
			}
			if k, _ := res.RowsAffected(); k == 0 {
				lost = append(lost, dl.Envelope.ID)
			}
		}
		return nil
	})
	if err != nil {
		return e.fail(fmt.Sprintf("extend %d lease(s)", len(ds)), err)
	}
	if len(lost) > 0 {
		return &broker.LeaseLostError{IDs: lost}
	}
	return nil
}

// PendingCount returns how many tasks of queue are ready now (not delayed,
// not leased). It counts an index range, so it costs O(ready tasks) — a
// few ms for 100,000 — rather than O(1).
func (e *Engine) PendingCount(ctx context.Context, queue string) (int64, error) {
	if err := e.checkOpen(); err != nil {
		return 0, err
	}
	var n int64
	err := e.rdb.QueryRowContext(ctx, sqlPending, e.ns, queue, nowMs()).Scan(&n)
	if err != nil {
		return 0, e.fail("pending count of queue "+queue, err)
	}
	return n, nil
}

// DeadLetters lists up to limit dead letters of queue, newest first.
func (e *Engine) DeadLetters(ctx context.Context, queue string, limit int) ([]broker.DeadLetterEntry, error) {
	if err := e.checkOpen(); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return nil, nil
	}
	op := "list dead letters of queue " + queue
	rows, err := e.rdb.QueryContext(ctx, sqlDeadLetters, e.ns, queue, limit)
	if err != nil {
		return nil, e.fail(op, err)
	}
	defer rows.Close()
	var out []broker.DeadLetterEntry
	for rows.Next() {
		var payload []byte
		var dl broker.DeadLetterEntry
		var deadAt int64
		if err := rows.Scan(&payload, &dl.Reason, &deadAt); err != nil {
			return nil, e.fail(op, err)
		}
		if err := json.Unmarshal(payload, &dl.Envelope); err != nil {
			// An undecodable payload dead-lettered by a claim: keep
			// what can be shown.
			dl.Envelope = broker.Envelope{Queue: queue}
		}
		dl.DeadAt = time.UnixMilli(deadAt).UTC()
		out = append(out, dl)
	}
	if err := rows.Err(); err != nil {
		return nil, e.fail(op, err)
	}
	return out, nil
}

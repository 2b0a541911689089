package postgres

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stemhq/stem/broker"
)

// unconfirmedPoll is how often a waiting claim retries while the Engine's
// listening connection is down or not yet listening.
const unconfirmedPoll = 250 * time.Millisecond

// Publish enqueues one envelope (one round trip).
func (e *Engine) Publish(ctx context.Context, env broker.Envelope) error {
	return e.PublishBatch(ctx, []broker.Envelope{env})
}

// PublishBatch enqueues envelopes in one round trip and one transaction:
// an INSERT of all of them and a NOTIFY per queue. An invalid envelope
// rejects the whole batch before anything is sent.
func (e *Engine) PublishBatch(ctx context.Context, envs []broker.Envelope) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	if len(envs) == 0 {
		return nil
	}
	queues := make([]string, len(envs))
	ids := make([]string, len(envs))
	payloads := make([][]byte, len(envs))
	etas := make([]int64, len(envs))
	var distinct []string
	for i, env := range envs {
		if err := env.Validate(); err != nil {
			return fmt.Errorf("postgres engine: publish: %w", err)
		}
		js, err := json.Marshal(env)
		if err != nil {
			return fmt.Errorf("postgres engine: publish: encode envelope %s: %w", env.ID, err)
		}
		queues[i], ids[i], payloads[i] = env.Queue, env.ID, js
		if !env.ETA.IsZero() {
			etas[i] = max(env.ETA.UnixMilli(), 1)
		}
		if !slices.Contains(distinct, env.Queue) {
			distinct = append(distinct, env.Queue)
		}
	}
	b := &pgx.Batch{}
	b.Queue(e.q.publish, queues, ids, payloads, etas)
	b.Queue(e.q.notify, e.channel, distinct)
	return e.fail(fmt.Sprintf("publish %d task(s)", len(envs)), e.pool.SendBatch(ctx, b).Close())
}

// validateClaim checks ClaimParams.
// Claim leases up to p.Max ready deliveries across p.Queues in priority
// order, in one round trip (see the package doc). With Wait, when nothing
// is ready, it waits for a notification on one of its queues, the
// earliest ETA or lease deadline of the queues, or the end of Wait, and
// claims again.
func (e *Engine) Claim(ctx context.Context, p broker.ClaimParams) ([]broker.Delivery, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("postgres engine: %w", err)
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
	w := e.listen.register(p.Queues)
	if w == nil {
		return nil, broker.ErrClosed
	}
	defer e.listen.unregister(w)
	// spin paces retries when a task is due but the claim got nothing
	// (another claim holds it locked): it doubles up to 100ms.
	spin := 5 * time.Millisecond
	for {
		ds, err := e.claimOnce(ctx, p)
		if err != nil || len(ds) > 0 {
			return ds, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, nil
		}
		dueIn, due, err := e.nextDue(ctx, p.Queues)
		if err != nil {
			return nil, err
		}
		if due {
			if dueIn <= 0 {
				left = min(left, spin)
				spin = min(2*spin, 100*time.Millisecond)
			} else {
				left = min(left, dueIn)
			}
		}
		if !e.listen.listening() {
			left = min(left, unconfirmedPoll)
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

// claimed is one row leased by tplClaim.
type claimed struct {
	id, prio   int64
	readyAt    time.Time
	leaseUntil time.Time
	payload    []byte
}

// claimOnce clears expired leases and leases ready rows, in one round
// trip (tplReclaim then tplClaim, one transaction).
func (e *Engine) claimOnce(ctx context.Context, p broker.ClaimParams) ([]broker.Delivery, error) {
	tag := e.nextTag() + "."
	var got []claimed
	b := &pgx.Batch{}
	b.Queue(e.q.reclaim, p.Queues)
	b.Queue(e.q.claim, p.Queues, p.Max, max(p.Lease.Milliseconds(), 1), tag).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var c claimed
			if err := rows.Scan(&c.id, &c.prio, &c.readyAt, &c.leaseUntil, &c.payload); err != nil {
				return err
			}
			got = append(got, c)
		}
		return rows.Err()
	})
	if err := e.pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, e.fail(fmt.Sprintf("claim from %v", p.Queues), err)
	}
	if len(got) == 0 {
		return nil, nil
	}
	slices.SortFunc(got, func(a, b claimed) int {
		return cmp.Or(cmp.Compare(a.prio, b.prio), a.readyAt.Compare(b.readyAt), cmp.Compare(a.id, b.id))
	})
	out := make([]broker.Delivery, 0, len(got))
	var corrupt []broker.Nack
	for _, c := range got {
		token := tag + strconv.FormatInt(c.id, 10)
		q := p.Queues[c.prio-1]
		var env broker.Envelope
		if err := json.Unmarshal(c.payload, &env); err != nil {
			corrupt = append(corrupt, broker.Nack{
				Delivery: broker.Delivery{Envelope: broker.Envelope{Queue: q}, Token: token},
				Action:   broker.DeadLetter, Reason: "undecodable payload: " + err.Error(),
			})
			continue
		}
		env.Queue = q // the row lives in this queue, whatever the payload says
		out = append(out, broker.Delivery{Envelope: env, Token: token, LeaseUntil: c.leaseUntil})
	}
	if len(corrupt) > 0 {
		// Undecodable payloads go to the dead letters, so they neither
		// block the queue nor come back.
		if err := e.Nack(ctx, corrupt); err != nil {
			return out, err
		}
	}
	return out, nil
}

// nextDue returns how long until one of queues has a claimable task, by
// the server's clock (<= 0: now), and false when they hold no task.
func (e *Engine) nextDue(ctx context.Context, queues []string) (time.Duration, bool, error) {
	var ms *int64
	if err := e.pool.QueryRow(ctx, e.q.nextDue, queues).Scan(&ms); err != nil {
		return 0, false, e.fail(fmt.Sprintf("look for work in %v", queues), err)
	}
	if ms == nil {
		return 0, false, nil
	}
	return time.Duration(*ms) * time.Millisecond, true, nil
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

// tokenArrays returns the row ids and tokens of deliveries, skipping
// malformed tokens (they cannot name a lease).
func tokenArrays(ds []broker.Delivery) (ids []int64, tokens []string) {
	ids = make([]int64, 0, len(ds))
	tokens = make([]string, 0, len(ds))
	for _, d := range ds {
		if id, ok := parseToken(d.Token); ok {
			ids = append(ids, id)
			tokens = append(tokens, d.Token)
		}
	}
	return ids, tokens
}

// Ack deletes finished deliveries in one statement. A delivery whose lease
// was lost (the row was redelivered with a new token, or is gone) is
// skipped.
func (e *Engine) Ack(ctx context.Context, ds []broker.Delivery) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	ids, tokens := tokenArrays(ds)
	if len(ids) == 0 {
		return nil
	}
	_, err := e.pool.Exec(ctx, e.q.ack, ids, tokens)
	return e.fail(fmt.Sprintf("ack %d deliveries", len(ds)), err)
}

// Nack hands deliveries back in one round trip and one transaction (one
// statement per kind of action present); each item applies only if its
// row still carries the delivery's token, so a lost lease creates no
// duplicate. Retry rewrites the envelope and makes the row ready after
// Delay (at the tail of its queue); Requeue clears the lease, so the row
// is claimed again from its original place at the head; DeadLetter moves
// the row to the queue's dead letters (trimmed to DeadLetterCap).
func (e *Engine) Nack(ctx context.Context, ns []broker.Nack) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	for _, n := range ns {
		if err := n.Validate(); err != nil {
			return fmt.Errorf("postgres engine: %w", err)
		}
	}
	var (
		retry struct {
			ids, delays    []int64
			tokens, queues []string
			payloads       [][]byte
		}
		requeue struct {
			ids    []int64
			tokens []string
		}
		dead struct {
			ids                     []int64
			tokens, reasons, queues []string
		}
		woken    []string
		addQueue = func(qs *[]string, q string) {
			if !slices.Contains(*qs, q) {
				*qs = append(*qs, q)
			}
		}
	)
	for _, n := range ns {
		id, ok := parseToken(n.Delivery.Token)
		if !ok {
			continue
		}
		switch n.Action {
		case broker.Retry:
			js, err := json.Marshal(n.Envelope)
			if err != nil {
				return fmt.Errorf("postgres engine: nack: encode envelope %s: %w", n.Envelope.ID, err)
			}
			retry.ids = append(retry.ids, id)
			retry.tokens = append(retry.tokens, n.Delivery.Token)
			retry.queues = append(retry.queues, n.Envelope.Queue)
			retry.payloads = append(retry.payloads, js)
			retry.delays = append(retry.delays, max(n.Delay.Milliseconds(), 0))
			addQueue(&woken, n.Envelope.Queue)
		case broker.Requeue:
			requeue.ids = append(requeue.ids, id)
			requeue.tokens = append(requeue.tokens, n.Delivery.Token)
			addQueue(&woken, n.Delivery.Envelope.Queue)
		case broker.DeadLetter:
			dead.ids = append(dead.ids, id)
			dead.tokens = append(dead.tokens, n.Delivery.Token)
			dead.reasons = append(dead.reasons, n.Reason)
			addQueue(&dead.queues, n.Delivery.Envelope.Queue)
		}
	}
	b := &pgx.Batch{}
	if len(retry.ids) > 0 {
		b.Queue(e.q.retry, retry.ids, retry.tokens, retry.queues, retry.payloads, retry.delays)
	}
	if len(requeue.ids) > 0 {
		b.Queue(e.q.requeue, requeue.ids, requeue.tokens)
	}
	if len(dead.ids) > 0 {
		b.Queue(e.q.deadLetter, dead.ids, dead.tokens, dead.reasons)
		b.Queue(e.q.trimDead, dead.queues, e.opts.DeadLetterCap)
	}
	if len(woken) > 0 {
		b.Queue(e.q.notify, e.channel, woken)
	}
	if b.Len() == 0 {
		return nil
	}
	return e.fail(fmt.Sprintf("nack %d deliveries", len(ns)), e.pool.SendBatch(ctx, b).Close())
}

// ExtendLease raises each delivery's lease deadline to max(current, now+d) (by the
// server's clock) in place, in one statement. Tasks whose lease was lost
// are named by the returned *broker.LeaseLostError; the others were
// extended.
func (e *Engine) ExtendLease(ctx context.Context, ds []broker.Delivery, d time.Duration) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	if d <= 0 {
		return fmt.Errorf("postgres engine: extend lease: duration %v is not positive", d)
	}
	if len(ds) == 0 {
		return nil
	}
	ids, tokens := tokenArrays(ds)
	extended := make(map[string]bool, len(ds))
	if len(ids) > 0 {
		rows, err := e.pool.Query(ctx, e.q.extend, ids, tokens, max(d.Milliseconds(), 1))
		if err != nil {
			return e.fail(fmt.Sprintf("extend %d lease(s)", len(ds)), err)
		}
		for rows.Next() {
			var tok string
			if err := rows.Scan(&tok); err != nil {
				rows.Close()
				return e.fail(fmt.Sprintf("extend %d lease(s)", len(ds)), err)
			}
			extended[tok] = true
		}
		if err := rows.Err(); err != nil {
			return e.fail(fmt.Sprintf("extend %d lease(s)", len(ds)), err)
		}
	}
	var lost []string
	for _, dl := range ds {
		if !extended[dl.Token] {
			lost = append(lost, dl.Envelope.ID)
		}
	}
	if len(lost) > 0 {
		return &broker.LeaseLostError{IDs: lost}
	}
	return nil
}

// PendingCount returns how many tasks of queue are ready now (not delayed,
// not leased). It counts an index range, so it costs O(ready tasks) rather
// than O(1).
func (e *Engine) PendingCount(ctx context.Context, queue string) (int64, error) {
	if err := e.checkOpen(); err != nil {
		return 0, err
	}
	var n int64
	if err := e.pool.QueryRow(ctx, e.q.pending, queue).Scan(&n); err != nil {
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
	rows, err := e.pool.Query(ctx, e.q.deadLetters, queue, limit)
	if err != nil {
		return nil, e.fail(op, err)
	}
	defer rows.Close()
	var out []broker.DeadLetterEntry
	for rows.Next() {
		var payload []byte
		var dl broker.DeadLetterEntry
		if err := rows.Scan(&payload, &dl.Reason, &dl.DeadAt); err != nil {
			return nil, e.fail(op, err)
		}
		if err := json.Unmarshal(payload, &dl.Envelope); err != nil {
			// An undecodable payload dead-lettered by a claim.
			dl.Envelope = broker.Envelope{Queue: queue}
		}
		dl.DeadAt = dl.DeadAt.UTC()
		out = append(out, dl)
	}
	if err := rows.Err(); err != nil {
		return nil, e.fail(op, err)
	}
	return out, nil
}

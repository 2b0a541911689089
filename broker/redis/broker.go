package redis

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stemhq/stem/broker"
)

// publishChunk bounds the arguments of one RPUSH or ZADD of a batch.
const publishChunk = 5000

// unconfirmedPoll is how often a waiting claim retries while its wake-up
// subscription is not confirmed (Redis unreachable, or just subscribing).
const unconfirmedPoll = 250 * time.Millisecond

// Publish enqueues one envelope (one round trip).
func (e *Engine) Publish(ctx context.Context, env broker.Envelope) error {
	return e.PublishBatch(ctx, []broker.Envelope{env})
}

// queueBatch is the part of a publish batch bound for one queue.
type queueBatch struct {
	queue   string
	ready   []any
	delayed []goredis.Z
}

// PublishBatch enqueues envelopes in one round trip: per queue, an RPUSH of
// the ready ones, a ZADD of the delayed ones and one PUBLISH on the queue's
// wake channel, wrapped in MULTI/EXEC when there is more than one write. An invalid envelope rejects the whole batch
// before anything is sent.
func (e *Engine) PublishBatch(ctx context.Context, envs []broker.Envelope) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	if len(envs) == 0 {
		return nil
	}
	now := time.Now()
	var tag string
	var batches []*queueBatch
	byQueue := map[string]*queueBatch{}
	for i, env := range envs {
		if err := env.Validate(); err != nil {
			return fmt.Errorf("redis engine: publish: %w", err)
		}
		payload, err := json.Marshal(env)
		if err != nil {
			return fmt.Errorf("redis engine: publish: encode envelope %s: %w", env.ID, err)
		}
		qb := byQueue[env.Queue]
		if qb == nil {
			qb = &queueBatch{queue: env.Queue}
			byQueue[env.Queue] = qb
			batches = append(batches, qb)
		}
		if env.ETA.After(now) {
			if tag == "" {
				tag = e.nextTag()
			}
			member := tag + "." + strconv.Itoa(i) + "|" + string(payload)
			qb.delayed = append(qb.delayed, goredis.Z{Score: float64(env.ETA.UnixMilli()), Member: member})
			continue
		}
		qb.ready = append(qb.ready, payload)
	}
	// MULTI/EXEC makes a batch that spans several commands all-or-nothing;
	// a batch that is a single RPUSH or ZADD is atomic by itself, and
	// skips the two extra commands.
	writes := 0
	for _, qb := range batches {
		writes += (len(qb.ready)+publishChunk-1)/publishChunk + (len(qb.delayed)+publishChunk-1)/publishChunk
	}
	var pipe goredis.Pipeliner
	if writes == 1 {
		pipe = e.client.Pipeline()
	} else {
		pipe = e.client.TxPipeline()
	}
	for _, qb := range batches {
		for i := 0; i < len(qb.ready); i += publishChunk {
			pipe.RPush(ctx, e.keys.ready(qb.queue), qb.ready[i:min(i+publishChunk, len(qb.ready))]...)
		}
		for i := 0; i < len(qb.delayed); i += publishChunk {
			pipe.ZAdd(ctx, e.keys.delayed(qb.queue), qb.delayed[i:min(i+publishChunk, len(qb.delayed))]...)
		}
		pipe.Publish(ctx, e.keys.wake(qb.queue), "1")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return e.fail(fmt.Sprintf("publish %d task(s)", len(envs)), err)
	}
	return nil
}

// validateClaim checks ClaimParams.
// Claim leases up to p.Max ready deliveries across p.Queues in priority
// order. Without Wait it is one script call (one round trip); with Wait it
// retries when a wake-up arrives, at the earliest known ETA or lease
// deadline, or when Wait passes.
func (e *Engine) Claim(ctx context.Context, p broker.ClaimParams) ([]broker.Delivery, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("redis engine: %w", err)
	}
	if err := e.checkOpen(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if p.Wait <= 0 {
		ds, _, err := e.claimOnce(ctx, p)
		return ds, err
	}
	deadline := time.Now().Add(p.Wait)
	channels := make([]string, len(p.Queues))
	for i, q := range p.Queues {
		channels[i] = e.keys.wake(q)
	}
	w := e.wake.register(ctx, channels)
	if w == nil {
		return nil, broker.ErrClosed
	}
	defer e.wake.unregister(w)
	for {
		ds, next, err := e.claimOnce(ctx, p)
		if err != nil || len(ds) > 0 {
			return ds, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, nil
		}
		if next >= 0 {
			left = min(left, max(time.Duration(next)*time.Millisecond, time.Millisecond))
		}
		if !e.wake.allConfirmed(w) {
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

// claimOnce runs claimScript once. It returns the deliveries and, when
// there are none, the earliest ETA or lease deadline in ms (-1 if none).
func (e *Engine) claimOnce(ctx context.Context, p broker.ClaimParams) ([]broker.Delivery, int64, error) {
	keys := make([]string, 0, 4*len(p.Queues))
	for _, q := range p.Queues {
		keys = append(keys, e.keys.ready(q), e.keys.delayed(q), e.keys.leased(q), e.keys.epoch(q))
	}
	res, err := claimScript.Run(ctx, e.client, keys,
		p.Lease.Milliseconds(), p.Max, e.nextTag(), promoteLimit, e.nextTag()).Slice()
	if err != nil {
		return nil, -1, e.fail(fmt.Sprintf("claim from %v", p.Queues), err)
	}
	nq := len(p.Queues)
	if len(res) < 2+nq {
		return nil, -1, fmt.Errorf("redis engine at %s: claim from %v: malformed script reply of %d elements", e.url, p.Queues, len(res))
	}
	next, _ := res[0].(int64)
	if len(res) == 2+nq {
		return nil, next, nil
	}
	now, _ := res[1].(int64)
	leaseUntil := time.UnixMilli(now).Add(p.Lease)
	out := make([]broker.Delivery, 0, len(res)-2-nq)
	var corrupt []corruptToken
	pos := 2 + nq
	for qi, q := range p.Queues {
		count, _ := res[2+qi].(int64)
		for range count {
			tok, _ := res[pos].(string)
			pos++
			var env broker.Envelope
			if err := json.Unmarshal([]byte(payloadOf(tok)), &env); err != nil {
				corrupt = append(corrupt, corruptToken{queue: q, token: tok, err: err})
				continue
			}
			env.Queue = q // the lease lives in this queue, whatever the payload says
			out = append(out, broker.Delivery{Envelope: env, Token: tok, LeaseUntil: leaseUntil})
		}
	}
	if len(corrupt) > 0 {
		if err := e.deadLetterCorrupt(ctx, corrupt); err != nil {
			return out, -1, err
		}
	}
	return out, -1, nil
}

// payloadOf returns the envelope JSON of a delivery token or delayed member.
func payloadOf(member string) string {
	if i := strings.IndexByte(member, '|'); i >= 0 {
		return member[i+1:]
	}
	return member
}

// corruptToken is a claimed member whose payload is not an envelope.
type corruptToken struct {
	queue, token string
	err          error
}

// deadLetterCorrupt moves undecodable payloads to their queue's dead
// letters (with the raw payload kept under "payload"), so they neither
// block the queue nor come back forever.
func (e *Engine) deadLetterCorrupt(ctx context.Context, cs []corruptToken) error {
	b := newNackBuilder(e, len(cs))
	for _, c := range cs {
		entry, _ := json.Marshal(struct {
			Envelope broker.Envelope `json:"envelope"`
			Reason   string          `json:"reason"`
			DeadAt   time.Time       `json:"deadAt"`
			Payload  string          `json:"payload"`
		}{
			Envelope: broker.Envelope{Queue: c.queue},
			Reason:   "undecodable payload: " + c.err.Error(),
			DeadAt:   time.Now().UTC(),
			Payload:  payloadOf(c.token),
		})
		b.add(nackDead, c.queue, c.token, e.keys.dead(c.queue), string(entry), 0)
	}
	return b.run(ctx, "dead-letter undecodable payloads")
}

// groupTokens groups delivery tokens by their leased key, keeping order.
func (e *Engine) groupTokens(ds []broker.Delivery) (keys []string, tokens map[string][]any) {
	tokens = map[string][]any{}
	for _, d := range ds {
		k := e.keys.leased(d.Envelope.Queue)
		if _, ok := tokens[k]; !ok {
			keys = append(keys, k)
		}
		tokens[k] = append(tokens[k], d.Token)
	}
	return keys, tokens
}

// Ack removes finished deliveries: one ZREM per queue, pipelined into one
// round trip. A delivery whose lease was lost is simply not there. The
// deliveries must be passed back as Claim returned them (Envelope.Queue
// and Token locate the lease).
func (e *Engine) Ack(ctx context.Context, ds []broker.Delivery) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	if len(ds) == 0 {
		return nil
	}
	keys, tokens := e.groupTokens(ds)
	var err error
	if len(keys) == 1 {
		err = e.client.ZRem(ctx, keys[0], tokens[keys[0]]...).Err()
	} else {
		_, err = e.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
			for _, k := range keys {
				p.ZRem(ctx, k, tokens[k]...)
			}
			return nil
		})
	}
	return e.fail(fmt.Sprintf("ack %d deliveries", len(ds)), err)
}

// nackBuilder assembles the KEYS and ARGV of one nackScript call.
type nackBuilder struct {
	e        *Engine
	keys     []string
	keyIdx   map[string]int
	items    []any
	n        int
	channels map[string]bool
}

func newNackBuilder(e *Engine, n int) *nackBuilder {
	return &nackBuilder{e: e, keyIdx: map[string]int{}, items: make([]any, 0, 8*n), channels: map[string]bool{}}
}

func (b *nackBuilder) key(k string) int {
	i, ok := b.keyIdx[k]
	if !ok {
		b.keys = append(b.keys, k)
		i = len(b.keys)
		b.keyIdx[k] = i
	}
	return i
}

// add appends one item: the lease (queue, token) and what to do with it;
// delay is in ms and used by nackDelay only.
func (b *nackBuilder) add(action, queue, token, target, value string, delay int64) {
	b.items = append(b.items, action, b.key(b.e.keys.leased(queue)), b.key(b.e.keys.epoch(queue)), b.key(b.e.keys.settled(queue)),
		token, b.key(target), value, delay)
	b.n++
}

// wake asks the script to PUBLISH on queue's wake channel.
func (b *nackBuilder) wake(queue string) { b.channels[b.e.keys.wake(queue)] = true }

// run calls nackScript once.
func (b *nackBuilder) run(ctx context.Context, op string) error {
	if b.n == 0 {
		return nil
	}
	args := make([]any, 0, 3+len(b.items)+len(b.channels))
	args = append(args, b.e.opts.DeadLetterCap, b.n, b.e.nextTag())
	args = append(args, b.items...)
	for c := range b.channels {
		args = append(args, c)
	}
	return b.e.fail(op, nackScript.Run(ctx, b.e.client, b.keys, args...).Err())
}

// Nack hands deliveries back in one script call: each item is applied only
// if its lease is still held (so a lost lease creates no duplicate). Retry
// with a delay goes to the delayed ZSET, without one to the tail of the
// ready list; Requeue goes back to the head in the order given; DeadLetter
// goes to the queue's capped dead-letter list.
func (e *Engine) Nack(ctx context.Context, ns []broker.Nack) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	for _, n := range ns {
		if err := n.Validate(); err != nil {
			return fmt.Errorf("redis engine: %w", err)
		}
	}
	if len(ns) == 0 {
		return nil
	}
	now := time.Now()
	b := newNackBuilder(e, len(ns))
	var tag string
	var requeues []broker.Nack
	for i, n := range ns {
		q := n.Delivery.Envelope.Queue
		switch n.Action {
		case broker.Retry:
			payload, err := json.Marshal(n.Envelope)
			if err != nil {
				return fmt.Errorf("redis engine: nack: encode envelope %s: %w", n.Envelope.ID, err)
			}
			tq := n.Envelope.Queue
			if n.Delay > 0 {
				if tag == "" {
					tag = e.nextTag()
				}
				member := tag + "." + strconv.Itoa(i) + "|" + string(payload)
				b.add(nackDelay, q, n.Delivery.Token, e.keys.delayed(tq), member, max(n.Delay.Milliseconds(), 1))
			} else {
				b.add(nackPush, q, n.Delivery.Token, e.keys.ready(tq), string(payload), 0)
			}
			b.wake(tq)
		case broker.Requeue:
			requeues = append(requeues, n)
		case broker.DeadLetter:
			entry, err := json.Marshal(struct {
				Envelope json.RawMessage `json:"envelope"`
				Reason   string          `json:"reason"`
				DeadAt   time.Time       `json:"deadAt"`
			}{json.RawMessage(payloadOf(n.Delivery.Token)), n.Reason, now.UTC()})
			if err != nil {
				// The token's payload is not JSON: store the caller's copy.
				entry, err = json.Marshal(broker.DeadLetterEntry{Envelope: n.Delivery.Envelope, Reason: n.Reason, DeadAt: now.UTC()})
				if err != nil {
					return fmt.Errorf("redis engine: nack: encode dead letter %s: %w", n.Delivery.Envelope.ID, err)
				}
			}
			b.add(nackDead, q, n.Delivery.Token, e.keys.dead(q), string(entry), 0)
		}
	}
	// Each LPUSH puts its item at the head: push the last first so the
	// batch keeps its order.
	for i := len(requeues) - 1; i >= 0; i-- {
		q := requeues[i].Delivery.Envelope.Queue
		b.add(nackRequeue, q, requeues[i].Delivery.Token, e.keys.ready(q), "", 0)
		b.wake(q)
	}
	return b.run(ctx, fmt.Sprintf("nack %d deliveries", len(ns)))
}

// ExtendLease raises each delivery's lease deadline to max(current, now+d)
// by the server's clock, in place, in one script call. Tasks whose lease
// was taken by another claim are named by the returned
// *broker.LeaseLostError; deliveries the server lost with its data (a
// restart without persistence) are restored, leased to the caller, from
// the caller's copy (see extendScript); the others were extended.
func (e *Engine) ExtendLease(ctx context.Context, ds []broker.Delivery, d time.Duration) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	if d <= 0 {
		return fmt.Errorf("redis engine: extend lease: duration %v is not positive", d)
	}
	if len(ds) == 0 {
		return nil
	}
	var keys []string
	keyIdx := map[string]int{}
	args := make([]any, 0, 2+2*len(ds))
	args = append(args, max(d.Milliseconds(), 1), e.nextTag())
	for _, dl := range ds {
		k := e.keys.leased(dl.Envelope.Queue)
		i, ok := keyIdx[k]
		if !ok {
			keys = append(keys, k, e.keys.epoch(dl.Envelope.Queue), e.keys.settled(dl.Envelope.Queue))
			i = len(keys) - 2
			keyIdx[k] = i
		}
		args = append(args, i, dl.Token)
	}
	res, err := extendScript.Run(ctx, e.client, keys, args...).Slice()
	if err != nil {
		return e.fail(fmt.Sprintf("extend %d lease(s)", len(ds)), err)
	}
	if len(res) != 3 {
		return fmt.Errorf("redis engine at %s: extend leases: malformed script reply of %d elements", e.url, len(res))
	}
	pick := func(v any) []string {
		ps, _ := v.([]any)
		ids := make([]string, 0, len(ps))
		for _, x := range ps {
			if p, ok := x.(int64); ok && p >= 1 && int(p) <= len(ds) {
				ids = append(ids, ds[p-1].Envelope.ID)
			}
		}
		return ids
	}
	lost, restored := pick(res[1]), pick(res[2])
	if len(lost) > 0 || len(restored) > 0 {
		return &broker.LeaseLostError{IDs: lost, Restored: restored}
	}
	return nil
}

// PendingCount returns how many tasks of queue are ready now: the ready
// list plus delayed tasks already due (not yet moved by a claim). It is one
// round trip of LLEN and ZCOUNT, O(log n).
func (e *Engine) PendingCount(ctx context.Context, queue string) (int64, error) {
	if err := e.checkOpen(); err != nil {
		return 0, err
	}
	var llen *goredis.IntCmd
	var due *goredis.IntCmd
	_, err := e.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		llen = p.LLen(ctx, e.keys.ready(queue))
		due = p.ZCount(ctx, e.keys.delayed(queue), "-inf", strconv.FormatInt(time.Now().UnixMilli(), 10))
		return nil
	})
	if err != nil {
		return 0, e.fail("pending count of queue "+queue, err)
	}
	return llen.Val() + due.Val(), nil
}

// DeadLetters lists up to limit dead letters of queue, newest first.
func (e *Engine) DeadLetters(ctx context.Context, queue string, limit int) ([]broker.DeadLetterEntry, error) {
	if err := e.checkOpen(); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return nil, nil
	}
	raw, err := e.client.LRange(ctx, e.keys.dead(queue), 0, int64(limit-1)).Result()
	if err != nil {
		return nil, e.fail("list dead letters of queue "+queue, err)
	}
	out := make([]broker.DeadLetterEntry, 0, len(raw))
	for i, r := range raw {
		var dl broker.DeadLetterEntry
		if err := json.Unmarshal([]byte(r), &dl); err != nil {
			return nil, fmt.Errorf("redis engine at %s: dead letter %d of queue %s is not valid JSON: %w", e.url, i, queue, err)
		}
		out = append(out, dl)
	}
	return out, nil
}

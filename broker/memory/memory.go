// Package memory is the in-process stem engine: one Engine value serves as
// the broker (broker.Broker), the result backend (result.Backend) and the
// worker registry (registry.Registry). It is meant for tests and for
// embedding stem in a single process; nothing survives the process.
//
// Semantics follow package broker and the broker/conformance contract suite:
// publish appends to a queue's ready list (or to its delayed heap when the
// ETA is in the future), Claim leases up to Max deliveries across queues in
// priority order, an expired lease goes back to the head of its queue on
// the next Claim, and ExtendLease moves a deadline in place.
//
// Time comes from Options.Now, so tests can use a fake clock for ETAs,
// lease deadlines and TTLs. Claim's Wait is real time: a waiting Claim is
// woken by a channel that every publish, nack and Close closes, and by a
// timer set to the earliest known ETA or lease deadline. A test that
// advances a fake clock should claim again rather than rely on a waiter.
package memory

import (
	"container/heap"
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/registry"
	"github.com/stemhq/stem/result"
)

// Default option values.
const (
	// DefaultResultTTL is how long result states are kept by default.
	DefaultResultTTL = 24 * time.Hour
	// DefaultDeadLetterCap is how many dead letters a queue keeps by
	// default; older ones are dropped.
	DefaultDeadLetterCap = 10000
)

// sweepEvery is how many Set calls pass between sweeps of expired results.
const sweepEvery = 1024

// Options configure an Engine. The zero value is usable.
type Options struct {
	// Now returns the current time; time.Now when nil.
	Now func() time.Time
	// ResultTTL is how long a result state lives after its last write;
	// DefaultResultTTL when <= 0.
	ResultTTL time.Duration
	// DeadLetterCap is the most dead letters kept per queue;
	// DefaultDeadLetterCap when <= 0.
	DeadLetterCap int
}

// WithDefaults returns o with every unset field given its default.
func (o Options) WithDefaults() Options {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.ResultTTL <= 0 {
		o.ResultTTL = DefaultResultTTL
	}
	if o.DeadLetterCap <= 0 {
		o.DeadLetterCap = DefaultDeadLetterCap
	}
	return o
}

// Engine is the in-process broker, result backend, worker registry,
// control transport and pause store. It is safe for concurrent use. Close
// closes every role at once.
type Engine struct {
	*controlPlane
	opts Options

	mu      sync.Mutex
	closed  bool
	done    chan struct{} // closed by Close
	changed chan struct{} // closed and replaced when claimable work may have appeared
	seq     uint64

	queues map[string]*queue
	leases map[string]*lease // by delivery token
	leaseQ leaseHeap         // every lease, earliest deadline first

	results   map[string]storedState
	resultOps int

	workers map[string]map[string]storedWorker // namespace -> id -> record
}

// The roles an Engine provides.
var (
	_ broker.Broker           = (*Engine)(nil)
	_ result.Backend          = (*Engine)(nil)
	_ registry.Registry       = (*Engine)(nil)
	_ broker.ControlTransport = (*Engine)(nil)
	_ broker.PauseStore       = (*Engine)(nil)
)

// New returns an empty engine.
func New(opts Options) *Engine {
	return &Engine{
		controlPlane: newControlPlane(),
		opts:         opts.WithDefaults(),
		done:         make(chan struct{}),
		changed:      make(chan struct{}),
		queues:       map[string]*queue{},
		leases:       map[string]*lease{},
		results:      map[string]storedState{},
		workers:      map[string]map[string]storedWorker{},
	}
}

// Close closes the engine for every role: waiting claims return
// broker.ErrClosed, control subscriptions end, sends are refused. Closing
// twice is safe.
func (e *Engine) Close() error {
	e.mu.Lock()
	if !e.closed {
		e.closed = true
		close(e.done)
	}
	e.mu.Unlock()
	e.controlPlane.close()
	return nil
}

// queue is one named queue.
type queue struct {
	ready   deque
	delayed delayedHeap
	dead    []broker.DeadLetterEntry // oldest first
}

// lease is one leased delivery.
type lease struct {
	token    string
	env      broker.Envelope
	deadline time.Time
	seq      uint64
	index    int // in leaseHeap
}

// lock takes the engine lock, or reports broker.ErrClosed.
func (e *Engine) lock() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return broker.ErrClosed
	}
	return nil
}

// queueLocked returns the named queue, creating it.
func (e *Engine) queueLocked(name string) *queue {
	q := e.queues[name]
	if q == nil {
		q = &queue{}
		e.queues[name] = q
	}
	return q
}

// wakeLocked wakes every waiting Claim.
func (e *Engine) wakeLocked() {
	close(e.changed)
	e.changed = make(chan struct{})
}

func (e *Engine) nextSeqLocked() uint64 {
	e.seq++
	return e.seq
}

// Publish enqueues one envelope.
func (e *Engine) Publish(ctx context.Context, env broker.Envelope) error {
	return e.PublishBatch(ctx, []broker.Envelope{env})
}

// PublishBatch enqueues envelopes atomically: an invalid envelope rejects
// the whole batch.
func (e *Engine) PublishBatch(ctx context.Context, envs []broker.Envelope) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, env := range envs {
		if err := env.Validate(); err != nil {
			return fmt.Errorf("memory broker: publish: %w", err)
		}
	}
	if err := e.lock(); err != nil {
		return err
	}
	defer e.mu.Unlock()
	now := e.opts.Now()
	for _, env := range envs {
		e.enqueueLocked(cloneEnvelope(env), env.ETA, now)
	}
	if len(envs) > 0 {
		e.wakeLocked()
	}
	return nil
}

// enqueueLocked puts env on its queue: delayed until due when due is after
// now, else at the tail of the ready list.
func (e *Engine) enqueueLocked(env broker.Envelope, due, now time.Time) {
	q := e.queueLocked(env.Queue)
	if due.After(now) {
		heap.Push(&q.delayed, &delayedItem{due: due, seq: e.nextSeqLocked(), env: env})
		return
	}
	q.ready.pushBack(env)
}

// validateClaim checks ClaimParams.
// Claim leases up to p.Max ready deliveries from p.Queues in priority
// order, waiting up to p.Wait for work when none is ready.
func (e *Engine) Claim(ctx context.Context, p broker.ClaimParams) ([]broker.Delivery, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("memory broker: %w", err)
	}
	deadline := time.Now().Add(p.Wait)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := e.lock(); err != nil {
			return nil, err
		}
		now := e.opts.Now()
		ds := e.claimLocked(p, now)
		if len(ds) > 0 || p.Wait <= 0 {
			e.mu.Unlock()
			return ds, nil
		}
		next, hasNext := e.nextDueLocked(p.Queues)
		changed := e.changed
		e.mu.Unlock()

		left := time.Until(deadline)
		if left <= 0 {
			return nil, nil
		}
		if hasNext {
			left = min(left, max(next.Sub(now), time.Millisecond))
		}
		timer := time.NewTimer(left)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, ctx.Err()
		case <-e.done:
			timer.Stop()
			return nil, broker.ErrClosed
		case <-changed:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// claimLocked returns expired leases to their queues, promotes due delayed
// tasks of the claimed queues, and leases up to p.Max ready tasks.
func (e *Engine) claimLocked(p broker.ClaimParams, now time.Time) []broker.Delivery {
	e.reclaimExpiredLocked(now)
	var out []broker.Delivery
	deadline := now.Add(p.Lease)
	for _, name := range p.Queues {
		q := e.queueLocked(name)
		e.promoteLocked(q, now)
		for len(out) < p.Max && q.ready.len() > 0 {
			env := q.ready.popFront()
			seq := e.nextSeqLocked()
			l := &lease{token: "mem-" + strconv.FormatUint(seq, 10), env: env, deadline: deadline, seq: seq}
			e.leases[l.token] = l
			heap.Push(&e.leaseQ, l)
			out = append(out, broker.Delivery{Envelope: cloneEnvelope(env), Token: l.token, LeaseUntil: deadline})
		}
	}
	return out
}

// reclaimExpiredLocked moves every lease whose deadline has passed back to
// the head of its queue, the earliest deadline first.
func (e *Engine) reclaimExpiredLocked(now time.Time) {
	var expired []*lease
	for len(e.leaseQ) > 0 && !e.leaseQ[0].deadline.After(now) {
		l := heap.Pop(&e.leaseQ).(*lease)
		delete(e.leases, l.token)
		expired = append(expired, l)
	}
	for _, l := range slices.Backward(expired) {
		e.queueLocked(l.env.Queue).ready.pushFront(l.env)
	}
}

// promoteLocked moves q's due delayed tasks to the tail of its ready list.
func (e *Engine) promoteLocked(q *queue, now time.Time) {
	for len(q.delayed) > 0 && !q.delayed[0].due.After(now) {
		q.ready.pushBack(heap.Pop(&q.delayed).(*delayedItem).env)
	}
}

// nextDueLocked returns the earliest time at which a claim of queues could
// find work that is not ready now: a delayed task's ETA or a lease deadline.
func (e *Engine) nextDueLocked(queues []string) (time.Time, bool) {
	var next time.Time
	found := false
	consider := func(t time.Time) {
		if !found || t.Before(next) {
			next, found = t, true
		}
	}
	for _, name := range queues {
		if q := e.queues[name]; q != nil && len(q.delayed) > 0 {
			consider(q.delayed[0].due)
		}
	}
	if len(e.leaseQ) > 0 {
		consider(e.leaseQ[0].deadline)
	}
	return next, found
}

// removeLeaseLocked ends a lease and returns it, or nil if it was lost.
func (e *Engine) removeLeaseLocked(token string) *lease {
	l := e.leases[token]
	if l == nil {
		return nil
	}
	delete(e.leases, token)
	heap.Remove(&e.leaseQ, l.index)
	return l
}

// Ack removes finished deliveries; a delivery whose lease was lost is
// skipped.
func (e *Engine) Ack(ctx context.Context, ds []broker.Delivery) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := e.lock(); err != nil {
		return err
	}
	defer e.mu.Unlock()
	for _, d := range ds {
		e.removeLeaseLocked(d.Token)
	}
	return nil
}

// Nack hands deliveries back per their Action. Deliveries whose lease was
// lost are skipped. Requeued deliveries go back to the head of their queue
// in the order given.
func (e *Engine) Nack(ctx context.Context, ns []broker.Nack) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, n := range ns {
		if err := n.Validate(); err != nil {
			return fmt.Errorf("memory broker: %w", err)
		}
	}
	if err := e.lock(); err != nil {
		return err
	}
	defer e.mu.Unlock()
	now := e.opts.Now()
	var requeued []*lease
	for _, n := range ns {
		l := e.removeLeaseLocked(n.Delivery.Token)
		if l == nil {
			continue
		}
		switch n.Action {
		case broker.Retry:
			e.enqueueLocked(cloneEnvelope(n.Envelope), now.Add(n.Delay), now)
		case broker.Requeue:
			requeued = append(requeued, l)
		case broker.DeadLetter:
			q := e.queueLocked(l.env.Queue)
			q.dead = append(q.dead, broker.DeadLetterEntry{Envelope: l.env, Reason: n.Reason, DeadAt: now})
			if over := len(q.dead) - e.opts.DeadLetterCap; over > 0 {
				q.dead = slices.Delete(q.dead, 0, over)
			}
		}
	}
	for _, l := range slices.Backward(requeued) {
		e.queueLocked(l.env.Queue).ready.pushFront(l.env)
	}
	e.wakeLocked()
	return nil
}

// ExtendLease raises the lease of each delivery to max(current, now+d) in place (never lowers it). It
// returns a *broker.LeaseLostError naming the tasks whose lease was lost.
func (e *Engine) ExtendLease(ctx context.Context, ds []broker.Delivery, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		return fmt.Errorf("memory broker: extend lease: duration %v is not positive", d)
	}
	if err := e.lock(); err != nil {
		return err
	}
	defer e.mu.Unlock()
	deadline := e.opts.Now().Add(d)
	var lost []string
	for _, dl := range ds {
		l := e.leases[dl.Token]
		if l == nil {
			lost = append(lost, dl.Envelope.ID)
			continue
		}
		if deadline.After(l.deadline) {
			l.deadline = deadline
			heap.Fix(&e.leaseQ, l.index)
		}
	}
	if len(lost) > 0 {
		return &broker.LeaseLostError{IDs: lost}
	}
	return nil
}

// PendingCount returns how many tasks of queue are ready now.
func (e *Engine) PendingCount(ctx context.Context, queue string) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := e.lock(); err != nil {
		return 0, err
	}
	defer e.mu.Unlock()
	q := e.queues[queue]
	if q == nil {
		return 0, nil
	}
	e.promoteLocked(q, e.opts.Now())
	return int64(q.ready.len()), nil
}

// DeadLetters lists up to limit dead letters of queue, newest first.
func (e *Engine) DeadLetters(ctx context.Context, queue string, limit int) ([]broker.DeadLetterEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := e.lock(); err != nil {
		return nil, err
	}
	defer e.mu.Unlock()
	q := e.queues[queue]
	if q == nil || limit <= 0 {
		return nil, nil
	}
	out := make([]broker.DeadLetterEntry, 0, min(limit, len(q.dead)))
	for _, dl := range slices.Backward(q.dead) {
		if len(out) == limit {
			break
		}
		dl.Envelope = cloneEnvelope(dl.Envelope)
		out = append(out, dl)
	}
	return out, nil
}

// cloneEnvelope copies the parts of env that share memory, so callers can
// neither change stored envelopes nor see later changes.
func cloneEnvelope(env broker.Envelope) broker.Envelope {
	env.Args = slices.Clone(env.Args)
	env.Headers = maps.Clone(env.Headers)
	return env
}

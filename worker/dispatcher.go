package worker

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/result"
)

// run is one outstanding delivery.
type run struct {
	d      broker.Delivery
	h      Handler // set by the dispatcher before the start
	ctx    context.Context
	cancel context.CancelCauseFunc
	// state: 0 queued, 1 running, 2 settled (finished or handed back).
	state     atomic.Int32
	startedAt time.Time
	lastBeat  atomic.Int64 // unix nanos of the last checkpoint
	// progress is the last TaskContext.Progress value (math.Float64bits).
	progress atomic.Uint64
	// deadline is the lease deadline this worker can prove, on its
	// monotonic clock (Worker.mono): the send time of the last confirmed
	// claim or renewal plus the duration granted (lease.go). d stays
	// immutable so it can be read without the lock.
	deadline atomic.Int64
	// lost is set when the lease is fenced: not renewed in time, or
	// reported taken by the broker. A lost run never starts.
	lost atomic.Bool
	// lostCh is closed when lost is set. A task whose context was already
	// cancelled for another reason (shutdown, revoke, time limit) and that
	// waits out a grace period watches it to be killed at once.
	lostCh chan struct{}
}

// newRun returns the run of delivery d, whose handler context is ctx.
func newRun(d broker.Delivery, ctx context.Context, cancel context.CancelCauseFunc) *run {
	return &run{d: d, ctx: ctx, cancel: cancel, lostCh: make(chan struct{})}
}

const (
	runQueued int32 = iota
	runRunning
	runSettled
)

// outstanding is the set of deliveries claimed and not yet settled (acked
// or handed back), by delivery token. The fetcher adds to it up to the
// capacity, the completer removes from it; its lock is the worker's
// central lock, which Alive probes.
type outstanding struct {
	mu       sync.Mutex
	cond     *sync.Cond // capacity freed, concurrency changed, or stopping
	m        map[string]*run
	stopping bool
}

func newOutstanding(capacity int) *outstanding {
	o := &outstanding{m: make(map[string]*run, capacity)}
	o.cond = sync.NewCond(&o.mu)
	return o
}

func (o *outstanding) len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.m)
}

// each calls fn for every outstanding run, under the lock.
func (o *outstanding) each(fn func(*run)) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, r := range o.m {
		fn(r)
	}
}

// waitFree blocks until fewer than capacity() runs are outstanding and
// returns how many more may be claimed; false once stopping.
func (o *outstanding) waitFree(capacity func() int) (int, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for !o.stopping && len(o.m) >= capacity() {
		o.cond.Wait()
	}
	return capacity() - len(o.m), !o.stopping
}

func (o *outstanding) add(rs []*run) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, r := range rs {
		o.m[r.d.Token] = r
	}
}

// settle removes the settled deliveries and wakes the fetcher.
func (o *outstanding) settle(fs []finish) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, f := range fs {
		delete(o.m, f.run.d.Token)
		f.run.cancel(nil)
	}
	o.cond.Broadcast()
}

// wake wakes a fetcher waiting for capacity (the concurrency changed);
// stop makes waitFree return false.
func (o *outstanding) wake()           { o.update(func() {}) }
func (o *outstanding) stop()           { o.update(func() { o.stopping = true }) }
func (o *outstanding) update(f func()) { o.mu.Lock(); defer o.mu.Unlock(); f(); o.cond.Broadcast() }

// slots is a counting semaphore whose limit can change at run time (the
// autoscaler resizes it). Shrinking never interrupts holders: it only stops
// new acquisitions until enough slots are released.
type slots struct {
	mu     sync.Mutex
	cond   *sync.Cond
	limit  int
	held   int
	closed bool
}

func newSlots(limit int) *slots {
	s := &slots{limit: limit}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// acquire blocks until a slot is free; it returns false once closed.
func (s *slots) acquire() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.held >= s.limit && !s.closed {
		s.cond.Wait()
	}
	if s.closed {
		return false
	}
	s.held++
	return true
}

func (s *slots) release()        { s.update(func() { s.held-- }) }
func (s *slots) setLimit(n int)  { s.update(func() { s.limit = n }) }
func (s *slots) close()          { s.update(func() { s.closed = true }) }
func (s *slots) update(f func()) { s.mu.Lock(); f(); s.mu.Unlock(); s.cond.Broadcast() }

func (s *slots) stats() (held, limit int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held, s.limit
}

// dispatch starts a handler for each queued delivery as slots free up. When
// the queue is closed (shutdown), it hands back what was never started.
func (w *Worker) dispatch() {
	margin := fenceMargin(w.cfg.Lease)
	for r := range w.queue {
		if !r.lost.Load() && w.mono() >= time.Duration(r.deadline.Load())-margin {
			w.fence(r, "its lease ran out while it waited for a slot")
		}
		if act, e := w.beforeStart(r); act != actRun {
			w.settleUnstarted(r, act, e)
			continue
		}
		if !w.slots.acquire() {
			w.handBack(r)
			continue
		}
		// Set before the task is seen running (inspect reads them then).
		now := w.cfg.Now()
		r.startedAt = now
		r.lastBeat.Store(now.UnixNano())
		if !r.state.CompareAndSwap(runQueued, runRunning) {
			w.slots.release()
			continue
		}
		// A shutdown, a pause of its queue, a revoke or a fence may have
		// come while this waited for the slot: a task that has not started
		// is not started. The revoke cache is written before running tasks
		// are scanned, so either this check sees a revoke or ApplyRevokes
		// sees the task running.
		if act, e := w.beforeStart(r); act != actRun {
			r.state.Store(runQueued)
			w.slots.release()
			w.settleUnstarted(r, act, e)
			continue
		}
		w.running.Add(1)
		// The "started" event is sent here, not in the goroutine, so it
		// can never race the completer's channel being closed.
		st := w.taskState(r.d.Envelope, result.Started, now)
		st.StartedAt = now
		w.comp.send(finish{run: r, hasState: true, startedOnly: true, state: st})
		go w.execute(r)
	}
}

// beforeStart decides whether r may start now; e is its revoke entry.
func (w *Worker) beforeStart(r *run) (action, revoke.Entry) {
	env := r.d.Envelope
	h, known := w.cfg.Handlers.Lookup(env.Name)
	r.h = h
	e, revoked := w.revokedEntry(env.ID)
	o := outcome{leaseLost: r.lost.Load(), revoked: revoked, unknown: !known, unknownTTL: w.cfg.UnknownTaskTTL,
		holdBack: w.currentMode() != 0 || w.queuePaused(env.Queue)}
	if o.unknown {
		now := w.cfg.Now()
		since, _ := unknownSince(env, now)
		o.unknownFor = now.Sub(since)
	}
	return decide(o), e
}

// settleUnstarted settles a run that is not to start, as act says.
func (w *Worker) settleUnstarted(r *run, act action, e revoke.Entry) {
	switch act {
	case actRevoke:
		w.settleRevoked(r, e)
	case actDeadLetter, actHandBackUnknown:
		w.settleUnknown(r, act == actDeadLetter)
	default:
		w.handBack(r)
	}
}

// handBack requeues a run that never started. A run whose lease was fenced
// is handed back too, never acked: when the lease was only unconfirmed (a
// broker that did not answer in time) the task is still the worker's to
// give back, and when another claim holds it the broker skips the
// hand-back.
func (w *Worker) handBack(r *run) {
	if r.state.CompareAndSwap(runQueued, runSettled) {
		if r.lost.Load() {
			w.taskLog(r.d.Envelope).Warn("lease lost before the task started; not running it here")
		}
		w.comp.send(finish{run: r, action: broker.Requeue})
	}
}

// settleRevoked records a claimed but never started task as revoked and
// acks it: a revoked task never runs.
func (w *Worker) settleRevoked(r *run, e revoke.Entry) {
	if !r.state.CompareAndSwap(runQueued, runSettled) {
		return
	}
	now := w.cfg.Now()
	w.counters.revoked.Add(1)
	w.taskLog(r.d.Envelope).Info("task revoked; not run")
	st := w.taskState(r.d.Envelope, result.Revoked, now)
	st.FinishedAt, st.Reason, st.RevokedBy = now, e.Reason, e.RequestedBy
	w.comp.send(finish{run: r, hasState: true, state: st})
}

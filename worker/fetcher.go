package worker

import (
	"context"
	"sync"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/logging"
)

// capacity is Concurrency+Prefetch (the concurrency as it is now).
func (w *Worker) capacity() int {
	_, limit := w.slots.stats()
	return limit + w.cfg.Prefetch
}

// fetch claims deliveries while there is outstanding capacity, and queues
// them for the dispatcher, until ctx ends or the outstanding set stops.
func (w *Worker) fetch(ctx context.Context) {
	backoff := &backoff{base: 100 * time.Millisecond, max: 10 * time.Second}
	readyOnce := sync.Once{}
	for {
		free, ok := w.out.waitFree(w.capacity)
		if !ok {
			return
		}
		free = min(free, w.cfg.MaxBatch)
		queues := w.activeQueues()
		if len(queues) == 0 {
			// Every queue is paused: claim nothing, look again soon.
			readyOnce.Do(func() { close(w.ready) })
			if !sleep(ctx.Done(), min(w.cfg.ClaimWait, 250*time.Millisecond)) {
				return
			}
			continue
		}
		w.claimSince.Store(time.Now().UnixNano())
		sent := w.mono()
		ds, err := w.cfg.Broker.Claim(ctx, broker.ClaimParams{Queues: queues, Max: free, Lease: w.cfg.Lease, Wait: w.cfg.ClaimWait})
		w.claimSince.Store(0)
		if ctx.Err() != nil {
			// Deliveries claimed as we were cancelled are handed back.
			if len(ds) > 0 {
				w.requeueNow(ds)
			}
			return
		}
		if err != nil {
			d := backoff.next()
			w.log.WithError(err).WithField(logging.FieldDelay, d.String()).Warn("claim failed; retrying")
			if !sleep(ctx.Done(), d) {
				return
			}
			continue
		}
		if backoff.failures > 0 {
			w.log.Info("broker reachable again")
		}
		backoff.failures = 0
		readyOnce.Do(func() { close(w.ready) })
		if len(ds) == 0 {
			continue
		}
		rs := make([]*run, len(ds))
		for i, d := range ds {
			rctx, cancel := context.WithCancelCause(context.Background())
			rs[i] = newRun(d, rctx, cancel)
			// A claim that waited (ClaimWait) may have leased its tasks
			// at any moment after sent: sent is the safe lower bound.
			rs[i].deadline.Store(int64(sent + w.cfg.Lease))
		}
		w.out.add(rs)
		for _, r := range rs {
			w.queue <- r
		}
	}
}

// requeueNow hands deliveries back that never became outstanding.
func (w *Worker) requeueNow(ds []broker.Delivery) {
	ns := make([]broker.Nack, len(ds))
	for i, d := range ds {
		ns[i] = broker.Nack{Delivery: d, Action: broker.Requeue}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.cfg.Broker.Nack(ctx, ns); err != nil {
		w.log.WithError(err).Warn("could not hand back claimed deliveries; they return when their lease expires")
	}
}

// backoff counts consecutive failures and spaces the next attempt.
type backoff struct {
	base, max time.Duration
	failures  int
}

func (b *backoff) next() time.Duration {
	d := Backoff(b.failures, b.base, b.max)
	b.failures++
	return d
}

// sleep waits d unless stop closes first, and reports whether it waited d.
func sleep(stop <-chan struct{}, d time.Duration) bool {
	select {
	case <-stop:
		return false
	case <-time.After(d):
		return true
	}
}

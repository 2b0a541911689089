package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/logging"
)

// ErrLeaseLost is the cause (context.Cause) of a task's context when the
// worker can no longer prove that it holds the task's lease: no renewal
// was confirmed before the lease's deadline minus the fencing margin, or
// the broker reports that another worker holds it. The worker stops the
// task before any other worker can claim it: inline handlers see their
// context cancelled, and exec and isolated tasks have their process
// groups killed at once (no grace period).
var ErrLeaseLost = errors.New("lease lost")

// Lease keeping and self-fencing
//
// Every outstanding delivery (running or prefetched) carries a local
// deadline on the worker's monotonic clock: the time at which its last
// confirmed claim or renewal was *sent*, plus the duration granted. The
// broker computes its own deadline from its clock when the request
// arrives, which is no earlier than the send, so the broker's deadline is
// never before the local one as long as the two clocks run at the same
// rate and the broker's clock does not jump forward. An unconfirmed
// request (an error, a timeout) counts for nothing.
//
// The lease keeper renews every delivery whose local deadline is less than
// half a lease away, batching those due within the next eighth of a lease
// with it, and retries a failed renewal after retryDelay. A delivery whose
// local deadline minus the fencing margin has passed, or that the broker
// reports lost, is fenced: a prefetched one is never started, a running
// one has its context cancelled with ErrLeaseLost (exec and isolated
// process groups are killed at once). The fence therefore falls before the
// broker's deadline, that is before any other worker can reclaim the
// task: no two copies run at once, provided handlers honour cancellation
// (an inline Go handler cannot be stopped otherwise) and the clocks do not
// jump.

// LeaseWatcher is implemented by the TaskContext the worker gives inline
// handlers. LeaseLost returns a channel closed when the task's lease is
// lost, even after its context was cancelled for another reason (a soft
// shutdown, a revoke, a time limit): a handler that waits out a grace
// period before killing what it started (exec tasks) kills it at once
// when the channel closes.
type LeaseWatcher interface {
	LeaseLost() <-chan struct{}
}

// LeaseLost implements LeaseWatcher.
func (t *taskContext) LeaseLost() <-chan struct{} { return t.run.lostCh }

// fenceMargin is how long before the local deadline a delivery is fenced:
// a tenth of the lease, at least 50ms. It covers the time to kill a
// process group and a late timer.
func fenceMargin(lease time.Duration) time.Duration {
	return max(lease/10, 50*time.Millisecond)
}

// renewRetryDelay is the pause after a failed renewal: a twentieth of the
// lease, between 50ms and 1s, so a renewal is tried many times before the
// fence.
func renewRetryDelay(lease time.Duration) time.Duration {
	return min(max(lease/20, 50*time.Millisecond), time.Second)
}

// mono is the time since the worker was created on the monotonic clock,
// the unit of every run's local lease deadline.
func (w *Worker) mono() time.Duration { return time.Since(w.monoBase) }

// raiseDeadline moves r's local deadline to until unless it is already
// later (renewals and handler extensions only ever raise a lease).
func (r *run) raiseDeadline(until time.Duration) {
	for {
		cur := r.deadline.Load()
		if int64(until) <= cur || r.deadline.CompareAndSwap(cur, int64(until)) {
			return
		}
	}
}

// fence marks r's lease lost and stops it: a queued run is dropped by the
// dispatcher, a running one has its context cancelled with ErrLeaseLost.
// It returns false when r was already fenced or settled.
func (w *Worker) fence(r *run, why string) bool {
	if r.state.Load() == runSettled || !r.lost.CompareAndSwap(false, true) {
		return false
	}
	w.log.WithFields(logrus.Fields{logging.FieldTask: r.d.Envelope.ID, logging.FieldTaskName: r.d.Envelope.Name}).
		Warnf("lease lost (%s); stopping the task here so that it never runs twice at once", why)
	w.counters.leasesLost.Add(1)
	r.cancel(ErrLeaseLost)
	if r.lostCh != nil {
		close(r.lostCh)
	}
	return true
}

// renewal is the outcome of one ExtendLease call of the lease keeper.
type renewal struct {
	rs   []*run
	sent time.Duration
	err  error
}

// keepLeases renews outstanding leases and fences those it cannot keep,
// until ctx ends. The broker call runs on its own goroutine, one at a
// time, so a call that hangs (a partition: drivers may wait for their own
// read timeout whatever the context says) never delays a fence.
func (w *Worker) keepLeases(ctx context.Context) {
	lease := w.cfg.Lease
	margin := fenceMargin(lease)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var retryAt time.Duration // no renewal before this (after a failure)
	var inflight chan renewal // non-nil while a renewal is outstanding
	for {
		now := w.mono()
		// A delivery claimed after now needs renewing at now+lease/2 at
		// the earliest: never sleep longer than that.
		next := now + lease/2
		var batch, fenced []*run
		due := false
		w.out.each(func(r *run) {
			if r.state.Load() == runSettled || r.lost.Load() {
				return
			}
			dl := time.Duration(r.deadline.Load())
			fenceAt := dl - margin
			if now >= fenceAt {
				fenced = append(fenced, r)
				return
			}
			next = min(next, fenceAt)
			left := dl - now
			if left <= lease/2+lease/8 {
				batch = append(batch, r)
				due = due || left <= lease/2
			}
			if renewAt := dl - lease/2; renewAt > now {
				next = min(next, renewAt)
			}
		})
		for _, r := range fenced {
			w.fence(r, fmt.Sprintf("no renewal confirmed by %s before its deadline", margin))
		}
		if due && inflight == nil {
			if now >= retryAt {
				inflight = make(chan renewal, 1)
				go w.renew(ctx, batch, inflight)
			} else {
				next = min(next, retryAt)
			}
		}
		timer.Reset(max(next-w.mono(), time.Millisecond))
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case res := <-inflight:
			inflight = nil
			if !w.applyRenewal(res) {
				retryAt = w.mono() + renewRetryDelay(lease)
			}
		}
	}
}

// renew extends the leases of rs in one broker call and reports the
// outcome on out.
func (w *Worker) renew(ctx context.Context, rs []*run, out chan<- renewal) {
	ds := make([]broker.Delivery, len(rs))
	for i, r := range rs {
		ds[i] = r.d
	}
	sent := w.mono()
	rctx, cancel := context.WithTimeout(ctx, w.cfg.Lease)
	err := w.cfg.Broker.ExtendLease(rctx, ds, w.cfg.Lease)
	cancel()
	out <- renewal{rs: rs, sent: sent, err: err}
}

// applyRenewal raises the deadlines a renewal confirmed and fences the
// leases it reports lost. It returns whether the broker answered.
func (w *Worker) applyRenewal(res renewal) bool {
	if _, answered := broker.LeasesLost(res.err); !answered {
		w.log.WithError(res.err).WithField("tasks", len(res.rs)).Warn("lease renewal failed; retrying before the fencing deadline")
		return false
	}
	w.confirmed(res.rs, res.err, res.sent+w.cfg.Lease)
	return true
}

// confirmed applies an extension of rs's leases that the broker answered
// (err nil, or a LeaseLostError): the leases it reports lost are fenced,
// the others raised to until. It reports whether any was lost.
func (w *Worker) confirmed(rs []*run, err error, until time.Duration) (anyLost bool) {
	var l *broker.LeaseLostError
	if errors.As(err, &l) && len(l.Restored) > 0 {
		w.log.WithField("tasks", l.Restored).Warn("the broker had lost these held tasks with its data (restarted without persistence?); restored them from this worker's copies")
	}
	lostIDs, _ := broker.LeasesLost(err)
	lost := make(map[string]bool, len(lostIDs))
	for _, id := range lostIDs {
		lost[id] = true
	}
	for _, r := range rs {
		if lost[r.d.Envelope.ID] {
			w.fence(r, "the broker reports that another claim holds it")
			anyLost = true
		} else {
			r.raiseDeadline(until)
		}
	}
	return anyLost
}

// extendLease raises r's lease to at least now+d, in the broker and in
// r's local deadline (which the lease keeper reads). A lease the broker
// reports lost fences the task.
func (w *Worker) extendLease(ctx context.Context, r *run, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	sent := w.mono()
	err := w.cfg.Broker.ExtendLease(ctx, []broker.Delivery{r.d}, d)
	if _, answered := broker.LeasesLost(err); !answered {
		return fmt.Errorf("extend lease of task %s: %w", r.d.Envelope.ID, err)
	}
	if w.confirmed([]*run{r}, err, sent+d) {
		return fmt.Errorf("extend lease of task %s: %w", r.d.Envelope.ID, ErrLeaseLost)
	}
	return nil
}

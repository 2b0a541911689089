package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/internal/testutil"
	"github.com/stemhq/stem/result"
	"github.com/stemhq/stem/worker"
)

// flakyRenewals fails the first n ExtendLease calls with ErrUnavailable
// (a broker that does not answer), then passes them through.
type flakyRenewals struct {
	broker.Broker
	fail  atomic.Int32
	calls atomic.Int32
}

func (f *flakyRenewals) ExtendLease(ctx context.Context, ds []broker.Delivery, d time.Duration) error {
	f.calls.Add(1)
	if f.fail.Add(-1) >= 0 {
		return stem.ErrUnavailable
	}
	return f.Broker.ExtendLease(ctx, ds, d)
}

// TestRenewalRetriesAfterFailure: renewals that fail are retried quickly,
// so a few failures within the first half of the lease do not fence a
// task that the worker still holds.
func TestRenewalRetriesAfterFailure(t *testing.T) {
	f := setup(t)
	fb := &flakyRenewals{Broker: f.eng}
	fb.fail.Store(3)
	release := make(chan struct{})
	f.reg.MustRegister("long", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		select {
		case <-release:
			return "done", nil
		case <-tc.Context().Done():
			return nil, tc.Heartbeat()
		}
	}, worker.TaskOptions{})
	w := f.worker(func(c *worker.Config) { c.Broker = fb; c.Lease = time.Second })
	stop := f.start(w)
	ids := f.publish("long", 1, nil)
	// Hold the task for two and a half leases: at least the three failed
	// renewals and two good ones.
	testutil.Eventually(t, 10*time.Second, func() bool { return fb.calls.Load() >= 6 }, "only %d renewals were tried", fb.calls.Load())
	close(release)
	f.waitState(ids, result.Succeeded, 5*time.Second)
	stop(worker.Warm)
	if n := w.Counters().LeasesLost; n != 0 {
		t.Fatalf("%d leases fenced although renewals succeeded after three quick failures", n)
	}
}

// TestUnconfirmedLeaseFencesTask: when no renewal can be confirmed, the
// task's context is cancelled with ErrLeaseLost before the lease's
// deadline, and the task is handed back (another worker runs it).
func TestUnconfirmedLeaseFencesTask(t *testing.T) {
	f := setup(t)
	fb := &flakyRenewals{Broker: f.eng}
	fb.fail.Store(1 << 30)
	var runs atomic.Int32
	cause := make(chan error, 1)
	f.reg.MustRegister("long", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		if runs.Add(1) > 1 {
			return "second run", nil
		}
		<-tc.Context().Done()
		cause <- context.Cause(tc.Context())
		return nil, tc.Heartbeat()
	}, worker.TaskOptions{})
	const lease = time.Second
	w := f.worker(func(c *worker.Config) { c.Broker = fb; c.Lease = lease })
	f.start(w)
	start := time.Now()
	ids := f.publish("long", 1, nil)
	var got error
	select {
	case got = <-cause:
	case <-time.After(10 * time.Second):
		t.Fatal("the task was not stopped although no renewal succeeded")
	}
	if !errors.Is(got, worker.ErrLeaseLost) {
		t.Fatalf("context cause = %v, want worker.ErrLeaseLost", got)
	}
	if took := time.Since(start); took >= lease+time.Second {
		t.Fatalf("fenced %v after the publish, later than the lease allows", took)
	}
	// The hand-back lets the task run again (here on the same worker, whose
	// claims still work) to success.
	f.waitState(ids, result.Succeeded, 10*time.Second)
	if n := w.Counters().LeasesLost; n < 1 {
		t.Fatalf("LeasesLost = %d, want at least 1", n)
	}
}

// TestExtendLeaseNeverShortensLocally: a handler asking for a short
// extension under a long lease keeps the long lease (it is not fenced at
// the short deadline).
func TestExtendLeaseNeverShortensLocally(t *testing.T) {
	f := setup(t)
	release := make(chan struct{})
	f.reg.MustRegister("short", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		if err := tc.ExtendLease(100 * time.Millisecond); err != nil {
			return nil, err
		}
		select {
		case <-release:
			return "done", nil
		case <-tc.Context().Done():
			return nil, tc.Heartbeat()
		}
	}, worker.TaskOptions{})
	w := f.worker(func(c *worker.Config) { c.Lease = 30 * time.Second })
	stop := f.start(w)
	ids := f.publish("short", 1, nil)
	f.waitState(ids, result.Started, 5*time.Second)
	// Past the short deadline and its margin, with nothing renewed (the
	// renewal is due only at half of 30s): still running, not fenced.
	testutil.Eventually(t, 5*time.Second, func() bool { return w.Stats().InFlight == 1 }, "task not running")
	timer := time.NewTimer(500 * time.Millisecond)
	<-timer.C // a bound on how long the shortened deadline would have taken to fence: this is the behaviour under test, not synchronisation
	if n := w.Counters().LeasesLost; n != 0 {
		t.Fatalf("ExtendLease(100ms) under a 30s lease fenced the task")
	}
	close(release)
	f.waitState(ids, result.Succeeded, 5*time.Second)
	stop(worker.Warm)
}

package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/memory"
	"github.com/stemhq/stem/internal/testutil"
	"github.com/stemhq/stem/registry"
	"github.com/stemhq/stem/result"
	"github.com/stemhq/stem/worker"
)

func TestMain(m *testing.M) {
	// Isolation tests re-execute this test binary as the child.
	worker.ServeChildIfRequested(isolatedRegistry())
	serveIsoWorkerIfRequested()
	goleak.VerifyTestMain(m)
}

type fixture struct {
	t   *testing.T
	eng *memory.Engine
	reg *worker.Registry
}

func setup(t *testing.T) *fixture {
	t.Helper()
	eng := memory.New(memory.Options{})
	t.Cleanup(func() { eng.Close() })
	return &fixture{t: t, eng: eng, reg: worker.NewRegistry()}
}

func (f *fixture) worker(mod func(*worker.Config)) *worker.Worker {
	f.t.Helper()
	cfg := worker.Config{
		Broker: f.eng, Results: f.eng, Registry: f.eng, Handlers: f.reg, Node: "n", Hostname: "h",
		Concurrency: 4, Prefetch: 4, Lease: time.Second, ClaimWait: 50 * time.Millisecond, Heartbeat: 50 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	w, err := worker.New(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	return w
}

// start runs w and returns a function that stops it (warm) and waits.
func (f *fixture) start(w *worker.Worker) (stop func(worker.Mode)) {
	done := make(chan error, 1)
	go func() { done <- w.Run(context.Background()) }()
	var once sync.Once
	stop = func(m worker.Mode) {
		once.Do(func() {
			w.Shutdown(m)
			select {
			case err := <-done:
				if err != nil {
					f.t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				f.t.Fatal("worker did not stop within 10s")
			}
		})
	}
	f.t.Cleanup(func() { stop(worker.Hard) })
	select {
	case <-w.Ready():
	case <-time.After(5 * time.Second):
		f.t.Fatal("worker not ready within 5s")
	}
	return stop
}

func (f *fixture) publish(name string, n int, mod func(*broker.Envelope)) []string {
	f.t.Helper()
	envs := make([]broker.Envelope, n)
	ids := make([]string, n)
	for i := range envs {
		ids[i] = fmt.Sprintf("%s-%d-%d", name, i, time.Now().UnixNano())
		envs[i] = broker.Envelope{ID: ids[i], Name: name, Queue: "default", MaxRetries: -1, Args: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i)), CreatedAt: time.Now()}
		if mod != nil {
			mod(&envs[i])
		}
	}
	if err := f.eng.PublishBatch(context.Background(), envs); err != nil {
		f.t.Fatal(err)
	}
	return ids
}

// waitState waits until every id is in state want.
func (f *fixture) waitState(ids []string, want result.State, within time.Duration) []result.TaskState {
	f.t.Helper()
	out := make([]result.TaskState, len(ids))
	var last result.TaskState
	var lastErr error
	testutil.Eventually(f.t, within, func() bool {
		for i, id := range ids {
			st, err := f.eng.Get(context.Background(), id)
			if err != nil || st.State != want {
				last, lastErr = st, err
				return false
			}
			out[i] = st
		}
		return true
	}, "task %s: state %q (err %v), want %q", func() any { return last.ID }(), last.State, lastErr, want)
	return out
}

func TestRunsTasksAndRecordsResults(t *testing.T) {
	f := setup(t)
	f.reg.MustRegister("double", func(tc worker.TaskContext, args json.RawMessage) (any, error) {
		var a struct{ I int }
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, err
		}
		return a.I * 2, nil
	}, worker.TaskOptions{})
	w := f.worker(nil)
	stop := f.start(w)
	ids := f.publish("double", 1000, nil)
	states := f.waitState(ids, result.Succeeded, 20*time.Second)
	for i, st := range states {
		if string(st.Result) != fmt.Sprint(i*2) || st.Worker != "n@h" || st.StartedAt.IsZero() || st.FinishedAt.IsZero() {
			t.Fatalf("task %d: %+v", i, st)
		}
	}
	stop(worker.Warm)
	if c := w.Counters(); c.Processed != 1000 || c.Succeeded != 1000 {
		t.Fatalf("counters %+v", c)
	}
	if n, _ := f.eng.PendingCount(context.Background(), "default"); n != 0 {
		t.Fatalf("pending %d after all succeeded", n)
	}
}

func TestConcurrencyIsNeverExceeded(t *testing.T) {
	f := setup(t)
	var running, peak atomic.Int32
	release := make(chan struct{})
	f.reg.MustRegister("block", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release
		running.Add(-1)
		return nil, nil
	}, worker.TaskOptions{})
	w := f.worker(func(c *worker.Config) { c.Concurrency = 3; c.Prefetch = 2 })
	stop := f.start(w)
	ids := f.publish("block", 30, nil)
	// Wait until the worker is saturated: 3 running, 2 prefetched.
	testutil.Eventually(t, 5*time.Second, func() bool { s := w.Stats(); return s.InFlight >= 3 && s.Outstanding >= 5 }, "worker never saturated")
	if s := w.Stats(); s.InFlight != 3 || s.Outstanding != 5 {
		t.Fatalf("stats %+v, want 3 running and 5 outstanding", s)
	}
	if n, _ := f.eng.PendingCount(context.Background(), "default"); n != 25 {
		t.Fatalf("pending %d, want 25 (prefetch must bound claims)", n)
	}
	close(release)
	f.waitState(ids, result.Succeeded, 10*time.Second)
	stop(worker.Warm)
	if p := peak.Load(); p != 3 {
		t.Fatalf("peak concurrency %d, want 3", p)
	}
}

func TestRetriesWithBackoffThenSucceeds(t *testing.T) {
	f := setup(t)
	var calls atomic.Int32
	f.reg.MustRegister("flaky", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		if calls.Add(1) <= 2 {
			return nil, errors.New("transient")
		}
		return "ok", nil
	}, worker.TaskOptions{MaxRetries: 3, RetryBackoff: 10 * time.Millisecond})
	w := f.worker(nil)
	stop := f.start(w)
	ids := f.publish("flaky", 1, nil)
	st := f.waitState(ids, result.Succeeded, 5*time.Second)[0]
	stop(worker.Warm)
	if st.Attempt != 2 || calls.Load() != 3 {
		t.Fatalf("attempt %d after %d calls", st.Attempt, calls.Load())
	}
	if c := w.Counters(); c.Retried != 2 || c.Succeeded != 1 {
		t.Fatalf("counters %+v", c)
	}
}

func TestExhaustedRetriesDeadLetter(t *testing.T) {
	f := setup(t)
	f.reg.MustRegister("broken", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		return nil, errors.New("always broken")
	}, worker.TaskOptions{MaxRetries: 5, RetryBackoff: time.Millisecond})
	w := f.worker(nil)
	stop := f.start(w)
	// The envelope's MaxRetries overrides the handler's.
	ids := f.publish("broken", 1, func(e *broker.Envelope) { e.MaxRetries = 1 })
	st := f.waitState(ids, result.Failed, 5*time.Second)[0]
	stop(worker.Warm)
	if st.Attempt != 1 || st.Error != "always broken" {
		t.Fatalf("state %+v", st)
	}
	dl, err := f.eng.DeadLetters(context.Background(), "default", 10)
	if err != nil || len(dl) != 1 || dl[0].Envelope.ID != ids[0] || dl[0].Reason != "always broken" {
		t.Fatalf("dead letters %+v %v", dl, err)
	}
}

// TestUnknownTaskHandedBack: a worker without a handler for a task name
// (an old worker during a rolling deploy) hands the task back without
// counting an attempt, and a worker that knows the name runs it.
func TestUnknownTaskHandedBack(t *testing.T) {
	f := setup(t)
	old := f.worker(func(c *worker.Config) { c.Handlers = worker.NewRegistry(); c.Node = "old" })
	stopOld := f.start(old)
	ids := f.publish("new.task", 1, func(e *broker.Envelope) { e.MaxRetries = 0 })
	// The old worker sees it and hands it back (it is delayed, not dead).
	testutil.Eventually(t, 5*time.Second, func() bool {
		n, _ := f.eng.PendingCount(context.Background(), "default")
		return n == 0 && old.Stats().Outstanding == 0
	}, "the old worker did not hand the unknown task back")
	if dl, _ := f.eng.DeadLetters(context.Background(), "default", 10); len(dl) != 0 {
		t.Fatalf("an unknown task was dead-lettered at once: %+v", dl)
	}
	// The deploy goes on: the old worker stops (otherwise it could keep
	// claiming the task back first, each time with a longer backoff), the
	// new one runs the task once its hand-back delay (at most 1s) is over.
	stopOld(worker.Warm)
	f.reg.MustRegister("new.task", func(tc worker.TaskContext, _ json.RawMessage) (any, error) { return "ran", nil }, worker.TaskOptions{})
	knows := f.worker(func(c *worker.Config) { c.Node = "new" })
	stopNew := f.start(knows)
	st := f.waitState(ids, result.Succeeded, 10*time.Second)[0]
	stopNew(worker.Warm)
	if st.Attempt != 0 || st.Worker != knows.ID() {
		t.Fatalf("state %+v: want attempt 0 on %s", st, knows.ID())
	}
}

// TestUnknownTaskDeadLetteredAfterTTL: when no worker knows the name
// within UnknownTaskTTL, the task fails with the reason "unknown task" and
// is dead-lettered (never dropped).
func TestUnknownTaskDeadLetteredAfterTTL(t *testing.T) {
	f := setup(t)
	w := f.worker(func(c *worker.Config) { c.UnknownTaskTTL = 500 * time.Millisecond })
	stop := f.start(w)
	ids := f.publish("no.such.task", 1, func(e *broker.Envelope) { e.MaxRetries = 3 })
	st := f.waitState(ids, result.Failed, 10*time.Second)[0]
	stop(worker.Warm)
	if !strings.HasPrefix(st.Error, `unknown task: no worker had a handler for task "no.such.task" within 500ms`) || st.Attempt != 0 {
		t.Fatalf("state %+v", st)
	}
	dl, _ := f.eng.DeadLetters(context.Background(), "default", 10)
	if len(dl) != 1 || !strings.HasPrefix(dl[0].Reason, worker.ReasonUnknownTask) {
		t.Fatalf("dead letters %+v", dl)
	}
	if dl[0].Envelope.Headers[worker.HeaderUnknownSince] == "" {
		t.Fatalf("dead letter lacks the %s header: %+v", worker.HeaderUnknownSince, dl[0].Envelope)
	}
}

func TestTimeLimitAndPanic(t *testing.T) {
	f := setup(t)
	f.reg.MustRegister("slow", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		<-tc.Context().Done()
		return nil, tc.Context().Err()
	}, worker.TaskOptions{TimeLimit: 50 * time.Millisecond})
	f.reg.MustRegister("panics", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		panic("kaboom")
	}, worker.TaskOptions{})
	w := f.worker(nil)
	stop := f.start(w)
	slow := f.publish("slow", 1, nil)
	pan := f.publish("panics", 1, nil)
	st := f.waitState(slow, result.Failed, 5*time.Second)[0]
	if want := "time limit 50ms exceeded"; !contains(st.Error, want) {
		t.Fatalf("error %q, want %q", st.Error, want)
	}
	st = f.waitState(pan, result.Failed, 5*time.Second)[0]
	if !contains(st.Error, "handler panicked: kaboom") {
		t.Fatalf("error %q", st.Error)
	}
	stop(worker.Warm)
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// TestLeaseRenewalKeepsLongTaskSingle runs a task for 2.5 lease periods
// while a second worker polls the queue: the lease is renewed in place, so
// the task runs exactly once.
func TestLeaseRenewalKeepsLongTaskSingle(t *testing.T) {
	f := setup(t)
	var calls atomic.Int32
	f.reg.MustRegister("long", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		calls.Add(1)
		select {
		case <-time.After(2500 * time.Millisecond):
		case <-tc.Context().Done():
			return nil, tc.Heartbeat() // stopped: the task must not succeed
		}
		return nil, nil
	}, worker.TaskOptions{})
	mod := func(c *worker.Config) { c.Lease = time.Second }
	w1 := f.worker(mod)
	stop1 := f.start(w1)
	ids := f.publish("long", 1, nil)
	testutil.Eventually(t, 5*time.Second, func() bool { return calls.Load() > 0 }, "long task never started")
	w2 := f.worker(func(c *worker.Config) { mod(c); c.Node = "second" })
	stop2 := f.start(w2)
	f.waitState(ids, result.Succeeded, 5*time.Second)
	stop1(worker.Warm)
	stop2(worker.Warm)
	if n := calls.Load(); n != 1 {
		t.Fatalf("task ran %d times, want 1", n)
	}
}

func TestWarmShutdownFinishesInFlight(t *testing.T) {
	f := setup(t)
	started := make(chan struct{})
	release := make(chan struct{})
	f.reg.MustRegister("work", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		close(started)
		<-release
		return "done", nil
	}, worker.TaskOptions{})
	w := f.worker(func(c *worker.Config) { c.Concurrency = 1; c.Prefetch = 3 })
	f.start(w)
	ids := f.publish("work", 1, nil)
	<-started
	others := f.publish("work", 3, nil) // prefetched or pending: must be handed back untouched
	stopped := make(chan struct{})
	go func() { w.Shutdown(worker.Warm); close(release) }()
	go func() {
		f.waitState(ids, result.Succeeded, 5*time.Second)
		close(stopped)
	}()
	<-stopped
	// Nothing of the others ran, and all of them are claimable again.
	testutil.Eventually(t, 5*time.Second, func() bool {
		n, _ := f.eng.PendingCount(context.Background(), "default")
		return n == int64(len(others))
	}, "the %d other tasks were not handed back", len(others))
}

// TestHardShutdownHandsBackWithoutAttempt blocks a handler that ignores
// cancellation; hard shutdown must hand the delivery back (attempt not
// counted) so another worker completes it.
func TestHardShutdownHandsBackWithoutAttempt(t *testing.T) {
	f := setup(t)
	started := make(chan struct{}, 1)
	block := make(chan struct{})
	defer close(block)
	var first atomic.Bool
	f.reg.MustRegister("stubborn", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		if first.CompareAndSwap(false, true) {
			started <- struct{}{}
			<-block // ignores its context
		}
		return "second run", nil
	}, worker.TaskOptions{})
	w1 := f.worker(func(c *worker.Config) { c.HardWait = 50 * time.Millisecond })
	stop1 := f.start(w1)
	ids := f.publish("stubborn", 1, nil)
	<-started
	stop1(worker.Hard)
	w2 := f.worker(func(c *worker.Config) { c.Node = "other" })
	stop2 := f.start(w2)
	st := f.waitState(ids, result.Succeeded, 5*time.Second)[0]
	stop2(worker.Warm)
	if st.Attempt != 0 || st.Worker != "other@h" {
		t.Fatalf("state %+v: want attempt 0 completed by other@h", st)
	}
}

func TestSoftShutdownCancelsAndHandsBack(t *testing.T) {
	f := setup(t)
	started := make(chan struct{}, 1)
	f.reg.MustRegister("coop", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		select {
		case started <- struct{}{}:
		default:
		}
		for {
			if err := tc.Heartbeat(); err != nil {
				return nil, err
			}
			select {
			case <-tc.Context().Done():
			case <-time.After(5 * time.Millisecond):
			}
		}
	}, worker.TaskOptions{MaxRetries: 0})
	w := f.worker(nil)
	stop := f.start(w)
	ids := f.publish("coop", 1, nil)
	<-started
	t0 := time.Now()
	stop(worker.Soft)
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("soft shutdown took %s", d)
	}
	ds, err := f.eng.Claim(context.Background(), broker.ClaimParams{Queues: []string{"default"}, Max: 10, Lease: time.Second})
	if err != nil || len(ds) != 1 || ds[0].Envelope.ID != ids[0] || ds[0].Envelope.Attempt != 0 {
		t.Fatalf("claim after soft shutdown: %+v %v", ds, err)
	}
}

func TestHeartbeatRegistry(t *testing.T) {
	f := setup(t)
	w := f.worker(func(c *worker.Config) { c.Namespace = "ns1"; c.Queues = []string{"a", "b"} })
	stop := f.start(w)
	var rec registry.WorkerInfo
	testutil.Eventually(t, 5*time.Second, func() bool {
		ws, err := f.eng.List(context.Background(), "ns1")
		if err == nil && len(ws) == 1 {
			rec = ws[0]
			return true
		}
		return false
	}, "no heartbeat record")
	if rec.ID != "n@h" || len(rec.Queues) != 2 || rec.Concurrency != 4 || rec.PID == 0 {
		t.Fatalf("record %+v", rec)
	}
	stop(worker.Warm)
	if ws, _ := f.eng.List(context.Background(), "ns1"); len(ws) != 0 {
		t.Fatalf("record left after stop: %+v", ws)
	}
}

func TestProgressAndCheckpoints(t *testing.T) {
	f := setup(t)
	f.reg.MustRegister("prog", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		if err := tc.Progress(0.5, map[string]int{"done": 5}); err != nil {
			return nil, err
		}
		if err := tc.ExtendLease(time.Minute); err != nil {
			return nil, err
		}
		if err := tc.Progress(2, nil); err == nil {
			return nil, errors.New("progress 2 accepted")
		}
		return nil, tc.Heartbeat()
	}, worker.TaskOptions{})
	w := f.worker(nil)
	stop := f.start(w)
	st := f.waitState(f.publish("prog", 1, nil), result.Succeeded, 5*time.Second)[0]
	stop(worker.Warm)
	if st.Progress != 0.5 || string(st.ProgressData) != `{"done":5}` {
		t.Fatalf("state %+v", st)
	}
}

func TestConfigValidation(t *testing.T) {
	if _, err := worker.New(worker.Config{}); err == nil {
		t.Fatal("a worker without a broker was accepted")
	}
	eng := memory.New(memory.Options{})
	defer eng.Close()
	if _, err := worker.New(worker.Config{Broker: eng, Results: eng, Lease: time.Millisecond}); err == nil {
		t.Fatal("a 1ms lease was accepted")
	}
}

func TestBackoffBounds(t *testing.T) {
	for attempt := 0; attempt < 40; attempt++ {
		d := worker.Backoff(attempt, time.Second, time.Minute)
		want := min(time.Second<<min(attempt, 30), time.Minute)
		if attempt > 30 {
			want = time.Minute
		}
		if d < want/2 || d > want {
			t.Fatalf("attempt %d: %s outside [%s, %s]", attempt, d, want/2, want)
		}
	}
}

// pickyBackend refuses, for good, any state whose result holds "poison".
type pickyBackend struct {
	result.Backend
}

func (p pickyBackend) Set(ctx context.Context, states []result.TaskState) error {
	for _, st := range states {
		if strings.Contains(string(st.Result), "poison") {
			return errors.New("value too large for column")
		}
	}
	return p.Backend.Set(ctx, states)
}

// TestRefusedResultDoesNotStallTheWorker: a result the backend refuses for
// good is recorded without it, and the worker keeps settling other tasks.
func TestRefusedResultDoesNotStallTheWorker(t *testing.T) {
	f := setup(t)
	f.reg.MustRegister("poison", func(worker.TaskContext, json.RawMessage) (any, error) { return "poison", nil }, worker.TaskOptions{})
	f.reg.MustRegister("fine", func(worker.TaskContext, json.RawMessage) (any, error) { return "ok", nil }, worker.TaskOptions{})
	w := f.worker(func(c *worker.Config) { c.Results = pickyBackend{f.eng} })
	stop := f.start(w)
	bad := f.publish("poison", 1, nil)
	good := f.publish("fine", 5, nil)
	f.waitState(good, result.Succeeded, 20*time.Second)
	st := f.waitState(bad, result.Succeeded, 20*time.Second)[0]
	if st.Result != nil || !strings.Contains(st.Error, "result not stored: value too large for column") {
		t.Fatalf("state %+v", st)
	}
	stop(worker.Warm)
	if n, _ := f.eng.PendingCount(context.Background(), "default"); n != 0 {
		t.Fatalf("pending %d", n)
	}
}

// nackRecorder records the Nack calls made through it.
type nackRecorder struct {
	broker.Broker
	ch chan broker.Nack
}

func (n *nackRecorder) Nack(ctx context.Context, ns []broker.Nack) error {
	for _, x := range ns {
		n.ch <- x
	}
	return n.Broker.Nack(ctx, ns)
}

// TestUnknownSinceForgottenOnceKnown: a task an old worker once handed
// back as unknown, then run and retried by a worker that knows it, is not
// dead-lettered at once when a later attempt reaches an old worker again
// more than UnknownTaskTTL after that first hand-back (a rolling deploy
// that lasts, or a rollback): someone knew it in between, so its TTL
// starts again.
func TestUnknownSinceForgottenOnceKnown(t *testing.T) {
	f := setup(t)
	f.reg.MustRegister("x", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		return nil, errors.New("transient")
	}, worker.TaskOptions{MaxRetries: 3, RetryBackoff: 2 * time.Second, RetryBackoffMax: 2 * time.Second})
	knows := f.worker(func(c *worker.Config) { c.Node = "new" })
	stopNew := f.start(knows)
	ids := f.publish("x", 1, func(e *broker.Envelope) {
		e.Headers = map[string]string{
			worker.HeaderUnknownSince:     time.Now().Add(-2 * time.Hour).UTC().Format(time.RFC3339Nano),
			worker.HeaderUnknownHandbacks: "7",
		}
	})
	f.waitState(ids, result.Retried, 5*time.Second)
	stopNew(worker.Warm) // before the retry (1s to 2s away) is due

	rec := &nackRecorder{Broker: f.eng, ch: make(chan broker.Nack, 16)}
	old := f.worker(func(c *worker.Config) { c.Handlers = worker.NewRegistry(); c.Node = "old"; c.Broker = rec })
	f.start(old)
	select {
	case n := <-rec.ch:
		if n.Action != broker.Retry {
			t.Fatalf("the old worker settled the retried task with action %d (reason %q), want a hand-back (Retry %d): it was known a moment ago", n.Action, n.Reason, broker.Retry)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the old worker never settled the retried task")
	}
}

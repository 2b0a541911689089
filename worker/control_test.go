package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	logrustest "github.com/sirupsen/logrus/hooks/test"

	"github.com/sirupsen/logrus"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/memory"
	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/internal/testutil"
	"github.com/stemhq/stem/result"
	"github.com/stemhq/stem/worker"
)

// mapStore is a minimal revoke.Store for these tests (the real stores
// have their own contract suite).
type mapStore struct {
	mu sync.Mutex
	m  map[string]revoke.Entry
}

func newMapStore() *mapStore { return &mapStore{m: map[string]revoke.Entry{}} }

func (s *mapStore) Upsert(_ context.Context, es []revoke.Entry) ([]revoke.Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]revoke.Entry, len(es))
	for i, e := range es {
		k := e.Namespace + "/" + e.TaskID
		if old, ok := s.m[k]; !ok || e.Version > old.Version {
			s.m[k] = e
		}
		out[i] = s.m[k]
	}
	return out, nil
}

func (s *mapStore) List(_ context.Context, ns string) ([]revoke.Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []revoke.Entry
	for _, e := range s.m {
		if e.Namespace == ns {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

func (s *mapStore) Prune(context.Context, string, time.Time) (int, error) { return 0, nil }
func (s *mapStore) Trim(context.Context, string, int) (int, error)        { return 0, nil }
func (s *mapStore) Close() error                                          { return nil }

type ctlFixture struct {
	*fixture
	bus    *memory.Engine
	store  *mapStore
	ns     string
	calls  atomic.Int32
	sigKey []byte
}

func setupControl(t *testing.T) *ctlFixture {
	f := &ctlFixture{fixture: setup(t), bus: memory.New(memory.Options{}), store: newMapStore(), ns: "ctl"}
	f.reg.MustRegister("count", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		f.calls.Add(1)
		return nil, nil
	}, worker.TaskOptions{})
	f.reg.MustRegister("loop", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		for {
			if err := tc.Heartbeat(); err != nil {
				return nil, err
			}
			time.Sleep(time.Millisecond) // the task's own work, not test synchronisation
		}
	}, worker.TaskOptions{MaxRetries: 3})
	return f
}

func (f *ctlFixture) worker(node string, mod func(*worker.Config)) *worker.Worker {
	return f.fixture.worker(func(c *worker.Config) {
		c.Node = node
		c.Namespace = f.ns
		c.Control = f.bus
		c.Pauses = f.bus
		c.Revokes = f.store
		c.SigningKey = f.sigKey
		if mod != nil {
			mod(c)
		}
	})
}

func (f *ctlFixture) requester() *control.Requester {
	r := &control.Requester{Transport: f.bus, Registry: f.eng, Namespace: f.ns, SigningKey: f.sigKey}
	f.t.Cleanup(func() { r.Close() })
	return r
}

func (f *ctlFixture) waitRegistered(n int) {
	testutil.Eventually(f.t, 5*time.Second, func() bool {
		ws, _ := f.eng.List(context.Background(), f.ns)
		return len(ws) == n
	}, "%d workers never registered", n)
}

func TestBroadcastReachesEveryWorkerAndReturnsEarly(t *testing.T) {
	f := setupControl(t)
	for _, n := range []string{"a", "b", "c", "d"} {
		f.start(f.worker(n, nil))
	}
	f.waitRegistered(4)
	res, err := f.requester().Do(context.Background(), control.TypePing, nil, nil, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Replies) != 4 || res.Expected != 4 || len(res.Missing) != 0 {
		t.Fatalf("result %+v", res)
	}
	// It returned when the last worker answered, not at the 10s timeout.
	if res.Elapsed > 5*time.Second {
		t.Fatalf("ping took %s: it waited for the timeout", res.Elapsed)
	}
	for i, w := range []string{"a@h", "b@h", "c@h", "d@h"} {
		if res.Replies[i].Worker != w || res.Replies[i].Error != "" {
			t.Fatalf("reply %d: %+v", i, res.Replies[i])
		}
	}
}

func TestTargetsByNodeAndUnknownTarget(t *testing.T) {
	f := setupControl(t)
	f.start(f.worker("a", nil))
	f.start(f.worker("b", nil))
	f.waitRegistered(2)
	res, err := f.requester().Do(context.Background(), control.TypeStats, nil, control.ParseTargets([]string{"b,ghost", "a@h"}), 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Replies) != 2 || len(res.Unknown) != 1 || res.Unknown[0] != "ghost" {
		t.Fatalf("result %+v", res)
	}
	var st control.StatsData
	if err := json.Unmarshal(res.Replies[1].Data, &st); err != nil || st.Worker != "b@h" || st.ActiveConcurrency != 4 || st.QueueDepth["default"] != 0 {
		t.Fatalf("stats %+v %v", st, err)
	}
}

func TestRevokeWhileNoWorkerRunsIsHonouredAtStart(t *testing.T) {
	f := setupControl(t)
	ids := f.publish("count", 1, nil)
	f.store.Upsert(context.Background(), []revoke.Entry{{Namespace: f.ns, TaskID: ids[0], Version: 1, Reason: "bad input", RequestedBy: "ops"}})
	f.start(f.worker("a", nil))
	st := f.waitState(ids, result.Revoked, 5*time.Second)[0]
	if f.calls.Load() != 0 || st.Reason != "bad input" || st.RevokedBy != "ops" {
		t.Fatalf("calls %d, state %+v", f.calls.Load(), st)
	}
}

func TestMissedBroadcastHealsWithinSyncInterval(t *testing.T) {
	f := setupControl(t)
	f.start(f.worker("a", func(c *worker.Config) { c.RevokeSync = 50 * time.Millisecond }))
	// Written to the store only: no broadcast reaches the worker.
	ids := f.publish("count", 1, func(e *broker.Envelope) { e.ETA = time.Now().Add(400 * time.Millisecond) })
	f.store.Upsert(context.Background(), []revoke.Entry{{Namespace: f.ns, TaskID: ids[0], Version: 1}})
	f.waitState(ids, result.Revoked, 5*time.Second)
	if f.calls.Load() != 0 {
		t.Fatal("a revoked task ran")
	}
}

func TestTerminateStopsCheckpointingTask(t *testing.T) {
	f := setupControl(t)
	w := f.worker("a", nil)
	f.start(w)
	f.waitRegistered(1)
	ids := f.publish("loop", 1, nil)
	testutil.Eventually(t, 5*time.Second, func() bool { return w.Stats().InFlight == 1 }, "loop never started")
	e := revoke.Entry{Namespace: f.ns, TaskID: ids[0], Version: 2, Terminate: true, Reason: "runaway"}
	t0 := time.Now()
	res, err := f.requester().Do(context.Background(), control.TypeRevoke, control.RevokeArgs{Entries: []revoke.Entry{e}}, nil, 5*time.Second)
	if err != nil || len(res.Replies) != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	var rd control.RevokeData
	json.Unmarshal(res.Replies[0].Data, &rd)
	if len(rd.Terminated) != 1 || rd.Terminated[0] != ids[0] {
		t.Fatalf("revoke reply %+v", rd)
	}
	testutil.Eventually(t, time.Second, func() bool { return w.Stats().InFlight == 0 }, "task still running after terminate")
	stopped := time.Since(t0)
	t.Logf("terminate stopped the task %s after the revoke was sent", stopped)
	if stopped > 50*time.Millisecond {
		t.Errorf("terminate took %s, want under 50ms", stopped)
	}
	st := f.waitState(ids, result.Revoked, 5*time.Second)[0]
	if st.Reason != "runaway" || st.Attempt != 0 {
		t.Fatalf("state %+v (a terminated task must not be retried)", st)
	}
}

func TestPauseAndResumeAreDurable(t *testing.T) {
	f := setupControl(t)
	// Paused before the worker starts: the worker reads the pause store.
	f.bus.Pause(context.Background(), []broker.Pause{{Namespace: f.ns, Queue: "default"}})
	w := f.worker("a", nil)
	f.start(w)
	f.waitRegistered(1)
	ids := f.publish("count", 3, nil)
	res, err := f.requester().Do(context.Background(), control.TypeStats, nil, nil, 5*time.Second)
	if err != nil || len(res.Replies) != 1 {
		t.Fatal(res, err)
	}
	var st control.StatsData
	json.Unmarshal(res.Replies[0].Data, &st)
	if len(st.Paused) != 1 || st.QueueDepth["default"] != 3 || f.calls.Load() != 0 {
		t.Fatalf("paused worker: stats %+v calls %d", st, f.calls.Load())
	}
	f.bus.Resume(context.Background(), f.ns, "", []string{"default"})
	if _, err := f.requester().Do(context.Background(), control.TypeResume, control.QueuesArgs{Queues: []string{"default"}}, nil, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	f.waitState(ids, result.Succeeded, 5*time.Second)
}

func TestSignedControl(t *testing.T) {
	f := setupControl(t)
	f.sigKey = []byte("s3cret")
	f.start(f.worker("a", nil))
	f.waitRegistered(1)
	res, err := f.requester().Do(context.Background(), control.TypePing, nil, nil, 5*time.Second)
	if err != nil || len(res.Replies) != 1 || res.Replies[0].Error != "" {
		t.Fatalf("signed ping: %+v %v", res, err)
	}
	unsigned := &control.Requester{Transport: f.bus, Registry: f.eng, Namespace: f.ns}
	res, err = unsigned.Do(context.Background(), control.TypePing, nil, nil, 5*time.Second)
	if err != nil || len(res.Replies) != 1 || res.Replies[0].Error != control.ErrBadSignature.Error() {
		t.Fatalf("unsigned ping: %+v %v", res, err)
	}
	// With another key, the worker refuses, and its refusal (signed with
	// its own key) does not verify for the requester: ignored as forged.
	wrong := &control.Requester{Transport: f.bus, Registry: f.eng, Namespace: f.ns, SigningKey: []byte("nope")}
	res, _ = wrong.Do(context.Background(), control.TypePing, nil, nil, 300*time.Millisecond)
	if len(res.Replies) != 0 || len(res.Forged) != 1 || len(res.Missing) != 1 {
		t.Fatalf("mis-signed ping: %+v", res)
	}
}

func TestRemoteShutdown(t *testing.T) {
	f := setupControl(t)
	w := f.worker("a", nil)
	done := make(chan error, 1)
	go func() { done <- w.Run(context.Background()) }()
	<-w.Ready()
	f.waitRegistered(1)
	res, err := f.requester().Do(context.Background(), control.TypeShutdown, control.ShutdownArgs{Mode: "warm"}, []string{"a"}, 5*time.Second)
	if err != nil || len(res.Replies) != 1 || res.Replies[0].Error != "" {
		t.Fatalf("%+v %v", res, err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("worker did not stop after a remote shutdown")
	}
	res, _ = f.requester().Do(context.Background(), control.TypeShutdown, control.ShutdownArgs{Mode: "sideways"}, nil, 100*time.Millisecond)
	if len(res.Replies) != 0 {
		t.Fatalf("a stopped worker replied: %+v", res)
	}
}

func TestInspectShowsRunningTasks(t *testing.T) {
	f := setupControl(t)
	w := f.worker("a", nil)
	f.start(w)
	f.waitRegistered(1)
	ids := f.publish("loop", 1, nil)
	testutil.Eventually(t, 5*time.Second, func() bool { return w.Stats().InFlight == 1 }, "loop never started")
	f.store.Upsert(context.Background(), []revoke.Entry{{Namespace: f.ns, TaskID: "other", Version: 5}})
	w.ApplyRevokes([]revoke.Entry{{Namespace: f.ns, TaskID: "other", Version: 5}})
	res, err := f.requester().Do(context.Background(), control.TypeInspect, control.InspectArgs{IncludeRevoked: true}, nil, 5*time.Second)
	if err != nil || len(res.Replies) != 1 {
		t.Fatal(res, err)
	}
	var in control.InspectData
	json.Unmarshal(res.Replies[0].Data, &in)
	if len(in.Tasks) != 1 || in.Tasks[0].ID != ids[0] || in.Tasks[0].State != "running" || in.Tasks[0].Name != "loop" || len(in.Revoked) != 1 {
		t.Fatalf("inspect %+v", in)
	}
	w.ApplyRevokes([]revoke.Entry{{Namespace: f.ns, TaskID: ids[0], Version: 9, Terminate: true}})
	f.waitState(ids, result.Revoked, 5*time.Second)
}

// TestRevokeWhileWaitingForASlot: a task the dispatcher holds while every
// slot is busy is revoked; when the slot frees, it must not run.
func TestRevokeWhileWaitingForASlot(t *testing.T) {
	f := setupControl(t)
	release := make(chan struct{})
	var ran atomic.Int32
	f.reg.MustRegister("gate", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		<-release
		return nil, nil
	}, worker.TaskOptions{})
	f.reg.MustRegister("victim", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		ran.Add(1)
		return nil, nil
	}, worker.TaskOptions{})
	w := f.worker("a", func(c *worker.Config) { c.Concurrency = 1; c.Prefetch = 1 })
	f.start(w)
	f.publish("gate", 1, nil)
	testutil.Eventually(t, 5*time.Second, func() bool { return w.Stats().InFlight == 1 }, "gate never started")
	ids := f.publish("victim", 1, nil)
	testutil.Eventually(t, 5*time.Second, func() bool { return w.Stats().Outstanding == 2 }, "victim never claimed")
	w.ApplyRevokes([]revoke.Entry{{Namespace: f.ns, TaskID: ids[0], Version: 1}})
	close(release)
	f.waitState(ids, result.Revoked, 5*time.Second)
	if ran.Load() != 0 {
		t.Fatal("a task revoked while it waited for a slot ran")
	}
}

// TestSoftShutdownKeepsASuccess: a handler that finishes successfully as a
// soft shutdown cancels it keeps its result (it is not run again).
func TestSoftShutdownKeepsASuccess(t *testing.T) {
	f := setupControl(t)
	started := make(chan struct{})
	f.reg.MustRegister("stubborn-ok", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		close(started)
		<-tc.Context().Done()     // cancelled by the soft shutdown...
		return "done anyway", nil // ...and succeeds all the same
	}, worker.TaskOptions{})
	w := f.worker("a", nil)
	stop := f.start(w)
	ids := f.publish("stubborn-ok", 1, nil)
	<-started
	stop(worker.Soft)
	st := f.waitState(ids, result.Succeeded, 5*time.Second)[0]
	if string(st.Result) != `"done anyway"` {
		t.Fatalf("state %+v", st)
	}
}

// TestPauseHandsBackClaimedTasks: tasks claimed before a pause arrived
// but not started are handed back, not run: once pause answered, the
// worker starts nothing more from that queue.
func TestPauseHandsBackClaimedTasks(t *testing.T) {
	f := setupControl(t)
	started := make(chan string, 16)
	release := make(chan struct{})
	f.reg.MustRegister("hold", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		started <- tc.ID()
		<-release
		return "ok", nil
	}, worker.TaskOptions{})
	w := f.fixture.worker(func(c *worker.Config) {
		c.Namespace, c.Control, c.Concurrency, c.Prefetch = f.ns, f.bus, 1, 4
	})
	stop := f.start(w)
	f.waitRegistered(1)
	ids := f.publish("hold", 3, nil)
	first := <-started
	// The two others are claimed ahead and wait for the one slot.
	testutil.Eventually(t, 5*time.Second, func() bool { return w.Stats().Outstanding == 3 }, "the other tasks were not claimed ahead")
	res, err := f.requester().Do(context.Background(), control.TypePause, control.QueuesArgs{Queues: []string{"default"}}, nil, 5*time.Second)
	if err != nil || len(res.Replies) != 1 {
		t.Fatalf("pause: %+v, %v", res, err)
	}
	close(release)
	f.waitState([]string{first}, result.Succeeded, 5*time.Second)
	testutil.Eventually(t, 5*time.Second, func() bool { return w.Stats().Outstanding == 0 }, "the claimed-ahead tasks were not handed back")
	select {
	case id := <-started:
		t.Fatalf("task %s started after its queue was paused", id)
	default:
	}
	if n, _ := f.eng.PendingCount(context.Background(), "default"); n != int64(len(ids)-1) {
		t.Fatalf("pending = %d after the pause, want %d handed back", n, len(ids)-1)
	}
	stop(worker.Warm)
}

// TestRevokeLogIsBounded: applying 30,000 revokes logs counts at INFO,
// never the ids (a line of a megabyte before); the ids are at debug.
func TestRevokeLogIsBounded(t *testing.T) {
	f := setup(t)
	logger, hook := logrustest.NewNullLogger()
	logger.SetLevel(logrus.InfoLevel)
	w := f.worker(func(c *worker.Config) { c.Logger = logger })
	entries := make([]revoke.Entry, 30000)
	for i := range entries {
		entries[i] = revoke.Entry{Namespace: "stem", TaskID: fmt.Sprintf("task-%05d", i), Version: 1}
	}
	w.ApplyRevokes(entries)
	var infos int
	for _, e := range hook.AllEntries() {
		line, _ := e.String()
		if len(line) > 1024 || strings.Contains(line, "task-00042") {
			t.Fatalf("a %s line of %d bytes lists revoked ids: %.200s", e.Level, len(line), line)
		}
		if e.Level == logrus.InfoLevel {
			infos++
		}
	}
	if infos == 0 {
		t.Fatal("no INFO line said how many revokes were applied")
	}
}

package conformance

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/registry"
	"github.com/stemhq/stem/result"
)

var resultTests = []subtest{
	{"SetGet", testResultSetGet},
	{"NotFound", testResultNotFound},
	{"NewerOrdering", testResultOrdering},
	{"TTL", testResultTTL},
	{"SweepDeletesExpired", testResultSweep},
	{"Validation", testResultValidation},
	{"Closed", testResultClosed},
}

var registryTests = []subtest{
	{"HeartbeatList", testRegistryList},
	{"TTL", testRegistryTTL},
	{"Remove", testRegistryRemove},
	{"Validation", testRegistryValidation},
	{"Closed", testRegistryClosed},
}

func resultsOf(t *testing.T, newEngine NewEngine, opts Options) (result.Backend, Engine) {
	e := newEngine(t, opts)
	return must(t, e.Results, "result backend"), e
}

func registryOf(t *testing.T, newEngine NewEngine) registry.Registry {
	return must(t, newEngine(t, Options{}).Registry, "registry")
}

func taskState(id string, st result.State, attempt int) result.TaskState {
	now := time.Now()
	return result.TaskState{
		ID: id, Name: "test.echo", Queue: testQueue, State: st, Attempt: attempt,
		Worker: "w1@host", EnqueuedAt: now.Add(-time.Second), UpdatedAt: now,
	}
}

func setStates(t *testing.T, b result.Backend, states ...result.TaskState) {
	t.Helper()
	if err := b.Set(testContext(t), states); err != nil {
		t.Fatalf("Set(%d states): %v", len(states), err)
	}
}

func getState(t *testing.T, b result.Backend, id string) result.TaskState {
	t.Helper()
	st, err := b.Get(testContext(t), id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return st
}

// jsonEqual compares two values through their JSON encoding, which is what
// every engine stores; times compare by instant.
func jsonEqual(t *testing.T, got, want any) {
	t.Helper()
	norm := func(v any) string { // through a map: keys sorted, times as encoded
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		var m any
		_ = json.Unmarshal(b, &m)
		b, _ = json.Marshal(m)
		return string(b)
	}
	if g, w := norm(got), norm(want); g != w {
		t.Fatalf("got  %s\nwant %s", g, w)
	}
}

func testResultSetGet(t *testing.T, newEngine NewEngine) {
	b, _ := resultsOf(t, newEngine, Options{})
	done := taskState("r1", result.Succeeded, 2)
	done.Result = json.RawMessage(`{"sum":3}`)
	done.Progress = 1
	done.ProgressData = json.RawMessage(`{"step":"last"}`)
	done.StartedAt = time.Now().Add(-500 * time.Millisecond).UTC()
	done.FinishedAt = time.Now().UTC()
	failed := taskState("r2", result.Failed, 0)
	failed.Error = "boom: it broke"
	setStates(t, b, done, failed)
	got := getState(t, b, "r1")
	jsonEqual(t, got, done)
	if !got.UpdatedAt.Equal(done.UpdatedAt) || !got.StartedAt.Equal(done.StartedAt) {
		t.Fatalf("times changed: %v/%v, want %v/%v", got.UpdatedAt, got.StartedAt, done.UpdatedAt, done.StartedAt)
	}
	jsonEqual(t, getState(t, b, "r2"), failed)
	noErr(t, b.Set(testContext(t), nil), "Set(nil)")
}

func testResultNotFound(t *testing.T, newEngine NewEngine) {
	b, _ := resultsOf(t, newEngine, Options{})
	_, err := b.Get(testContext(t), "missing")
	if !errors.Is(err, result.ErrNotFound) {
		t.Fatalf("Get(missing) returned %v, want result.ErrNotFound", err)
	}
}

func testResultOrdering(t *testing.T, newEngine NewEngine) {
	b, _ := resultsOf(t, newEngine, Options{})
	id := "ord"
	steps := []struct {
		write result.TaskState
		want  result.State
		att   int
	}{
		{taskState(id, result.Started, 0), result.Started, 0},
		{taskState(id, result.Succeeded, 0), result.Succeeded, 0},
		{taskState(id, result.Started, 0), result.Succeeded, 0}, // late started: ignored
		{taskState(id, result.Queued, 0), result.Succeeded, 0},  // late queued: ignored
		{taskState(id, result.Failed, 0), result.Failed, 0},     // equal rank replaces
		{taskState(id, result.Started, 1), result.Started, 1},   // later attempt wins
		{taskState(id, result.Succeeded, 0), result.Started, 1}, // earlier attempt: ignored
		{taskState(id, result.Retried, 1), result.Retried, 1},   // higher rank
		{taskState(id, result.Started, 1), result.Retried, 1},   // lower rank: ignored
		{taskState(id, result.Succeeded, 1), result.Succeeded, 1},
	}
	for i, s := range steps {
		setStates(t, b, s.write)
		got := getState(t, b, id)
		if got.State != s.want || got.Attempt != s.att {
			t.Fatalf("step %d: after writing %s/%d got %s/%d, want %s/%d",
				i, s.write.State, s.write.Attempt, got.State, got.Attempt, s.want, s.att)
		}
	}
	// Within one Set call, a later item of lower rank is ignored too, and
	// a same-rank progress update replaces.
	p1 := taskState("batch", result.Started, 0)
	p1.Progress = 0.5
	p2 := taskState("batch", result.Started, 0)
	p2.Progress = 0.75
	setStates(t, b, taskState("batch", result.Queued, 0), p1, p2)
	if got := getState(t, b, "batch"); got.State != result.Started || got.Progress != 0.75 {
		t.Fatalf("progress update: got %s %v, want started 0.75", got.State, got.Progress)
	}
	setStates(t, b, taskState("batch", result.Succeeded, 0), taskState("batch", result.Started, 0))
	if got := getState(t, b, "batch"); got.State != result.Succeeded {
		t.Fatalf("batch with a late started: got %s, want succeeded", got.State)
	}
}

func testResultTTL(t *testing.T, newEngine NewEngine) {
	ttl := time.Second
	b, e := resultsOf(t, newEngine, Options{ResultTTL: ttl})
	if e.NoResultTTL {
		t.Skip("engine cannot honour a short result TTL")
	}
	start := time.Now() // before the write: el below never overstates the state's age
	setStates(t, b, taskState("ttl", result.Succeeded, 0))
	if _, err := b.Get(testContext(t), "ttl"); err != nil && time.Since(start) < ttl/2 {
		t.Fatalf("Get right after Set: %v", err)
	}
	waitExpired(t, b, "ttl", ttl)
	if el := time.Since(start); el < ttl-50*time.Millisecond {
		t.Fatalf("state expired after %v, before its %v TTL", el, ttl)
	}
}

// waitExpired polls until Get of id reports result.ErrNotFound, failing
// the test when the state, set with ttl, is still there 10s on.
func waitExpired(t *testing.T, b result.Backend, id string, ttl time.Duration) {
	t.Helper()
	waitFor(t, 10*time.Second, func() bool {
		_, err := b.Get(testContext(t), id)
		if err != nil && !errors.Is(err, result.ErrNotFound) {
			t.Fatalf("Get(%s): %v", id, err)
		}
		return err != nil
	}, "state %s still there 10s after Set with a %v TTL", id, ttl)
}

// testResultSweep: expired results are deleted from the store, not only
// hidden, by the periodic sweep that runs with Set.
func testResultSweep(t *testing.T, newEngine NewEngine) {
	b, e := resultsOf(t, newEngine, Options{ResultTTL: time.Millisecond})
	if e.StoredResults == nil || e.SweepDue == nil {
		t.Skip("engine has no StoredResults/SweepDue hooks (its store expires results itself, or it cannot be reached)")
	}
	if e.NoResultTTL {
		t.Skip("engine cannot honour a short result TTL")
	}
	setStates(t, b, taskState("old", result.Succeeded, 0))
	waitExpired(t, b, "old", time.Millisecond)
	e.SweepDue()
	setStates(t, b, taskState("new", result.Queued, 0))
	wantCount(t, 0, "stored rows of the expired result")(e.StoredResults(testContext(t), "old"))
}

func testResultValidation(t *testing.T, newEngine NewEngine) {
	b, _ := resultsOf(t, newEngine, Options{})
	if err := b.Set(testContext(t), []result.TaskState{{State: result.Queued}}); err == nil {
		t.Fatal("Set accepted a state without an id")
	}
}

func testResultClosed(t *testing.T, newEngine NewEngine) {
	b, _ := resultsOf(t, newEngine, Options{})
	noErr(t, b.Close(), "Close")
	ctx := testContext(t)
	wantErrors(t, "after Close", broker.ErrClosed, map[string]func() error{
		"Set": func() error { return b.Set(ctx, []result.TaskState{taskState("x", result.Queued, 0)}) },
		"Get": func() error { _, err := b.Get(ctx, "x"); return err },
	})
}

func workerInfo(ns, id string) registry.WorkerInfo {
	now := time.Now()
	return registry.WorkerInfo{
		ID: id, Node: id, Host: "host", PID: 100, Namespace: ns,
		Queues: []string{"default", "mail"}, Concurrency: 8, InFlight: 2,
		StartedAt: now.Add(-time.Minute), LastSeen: now, State: "running", Version: "test",
	}
}

func heartbeat(t *testing.T, r registry.Registry, info registry.WorkerInfo, ttl time.Duration) {
	t.Helper()
	if err := r.Heartbeat(testContext(t), info, ttl); err != nil {
		t.Fatalf("Heartbeat(%s/%s): %v", info.Namespace, info.ID, err)
	}
}

func list(t *testing.T, r registry.Registry, ns string) []registry.WorkerInfo {
	t.Helper()
	ws, err := r.List(testContext(t), ns)
	if err != nil {
		t.Fatalf("List(%s): %v", ns, err)
	}
	return ws
}

func workerIDs(ws []registry.WorkerInfo) []string {
	return idsOf(ws, func(w registry.WorkerInfo) string { return w.ID })
}

func testRegistryList(t *testing.T, newEngine NewEngine) {
	r := registryOf(t, newEngine)
	infos := map[string]registry.WorkerInfo{}
	for _, id := range []string{"c@h", "a@h", "b@h"} {
		infos[id] = workerInfo("ns1", id)
		heartbeat(t, r, infos[id], time.Minute)
	}
	heartbeat(t, r, workerInfo("ns2", "z@h"), time.Minute)
	ws := list(t, r, "ns1")
	wantIDs(t, "List(ns1)", workerIDs(ws), []string{"a@h", "b@h", "c@h"})
	jsonEqual(t, ws[0], infos["a@h"])
	wantIDs(t, "List(ns2)", workerIDs(list(t, r, "ns2")), []string{"z@h"})
	wantIDs(t, "List(none)", workerIDs(list(t, r, "none")), nil)
	// A heartbeat upserts.
	upd := workerInfo("ns1", "b@h")
	upd.InFlight = 7
	upd.State = "draining"
	heartbeat(t, r, upd, time.Minute)
	ws = list(t, r, "ns1")
	if len(ws) != 3 || ws[1].InFlight != 7 || ws[1].State != "draining" {
		t.Fatalf("after update: %+v", ws)
	}
	if !slices.Equal(ws[1].Queues, upd.Queues) {
		t.Fatalf("queues %v, want %v", ws[1].Queues, upd.Queues)
	}
}

func testRegistryTTL(t *testing.T, newEngine NewEngine) {
	r := registryOf(t, newEngine)
	ttl := time.Second
	start := time.Now() // before the heartbeat: el below never overstates the record's age
	heartbeat(t, r, workerInfo("ns", "short@h"), ttl)
	heartbeat(t, r, workerInfo("ns", "long@h"), time.Minute)
	waitFor(t, 10*time.Second-time.Since(start), func() bool {
		ids := workerIDs(list(t, r, "ns"))
		if !slices.Equal(ids, []string{"long@h"}) && !slices.Equal(ids, []string{"long@h", "short@h"}) {
			t.Fatalf("List = %v", ids)
		}
		return len(ids) == 1
	}, "worker still listed 10s after a heartbeat with a %v TTL", ttl)
	if el := time.Since(start); el < ttl-50*time.Millisecond {
		t.Fatalf("worker expired after %v, before its %v TTL", el, ttl)
	}
	// A fresh heartbeat brings it back.
	heartbeat(t, r, workerInfo("ns", "short@h"), time.Minute)
	wantIDs(t, "after a new heartbeat", workerIDs(list(t, r, "ns")), []string{"long@h", "short@h"})
}

func testRegistryRemove(t *testing.T, newEngine NewEngine) {
	r := registryOf(t, newEngine)
	heartbeat(t, r, workerInfo("ns", "a@h"), time.Minute)
	heartbeat(t, r, workerInfo("ns", "b@h"), time.Minute)
	heartbeat(t, r, workerInfo("other", "a@h"), time.Minute)
	noErr(t, r.Remove(testContext(t), "ns", "a@h"), "Remove")
	noErr(t, r.Remove(testContext(t), "ns", "missing@h"), "Remove of an unknown worker")
	wantIDs(t, "List(ns)", workerIDs(list(t, r, "ns")), []string{"b@h"})
	wantIDs(t, "List(other)", workerIDs(list(t, r, "other")), []string{"a@h"})
}

func testRegistryValidation(t *testing.T, newEngine NewEngine) {
	r := registryOf(t, newEngine)
	ctx := testContext(t)
	wantErrors(t, "(invalid)", nil, map[string]func() error{
		"Heartbeat(empty worker id)": func() error { return r.Heartbeat(ctx, workerInfo("ns", ""), time.Minute) },
		"Heartbeat(zero TTL)":        func() error { return r.Heartbeat(ctx, workerInfo("ns", "a@h"), 0) },
	})
}

func testRegistryClosed(t *testing.T, newEngine NewEngine) {
	r := registryOf(t, newEngine)
	noErr(t, r.Close(), "Close")
	ctx := testContext(t)
	wantErrors(t, "after Close", broker.ErrClosed, map[string]func() error{
		"Heartbeat": func() error { return r.Heartbeat(ctx, workerInfo("ns", "a@h"), time.Minute) },
		"List":      func() error { _, err := r.List(ctx, "ns"); return err },
		"Remove":    func() error { return r.Remove(ctx, "ns", "a@h") },
	})
}

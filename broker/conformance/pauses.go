package conformance

import (
	"fmt"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
)

// pauseTests check the pause store: paused queues per namespace, pauses
// scoped to one worker, and refused records.
var pauseTests = []subtest{
	{"PausedQueuesPerNamespace", testPausedQueuesPerNamespace},
	{"PausesPerWorkerScope", testPausesPerWorkerScope},
	{"PauseRefusesBadRecords", testPauseRefusesBadRecords},
}

// pausesOf returns the engine's pause store and a control namespace of its
// own, or skips the test.
func pausesOf(t *testing.T, newEngine NewEngine) (broker.PauseStore, string) {
	return must(t, newEngine(t, Options{}).Pauses, "pause store"), uniqueName("ps")
}

// pausedQueues renders pauses as worker/queue pairs.
func pausedQueues(ps []broker.Pause) string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Worker+"/"+p.Queue)
	}
	return fmt.Sprint(out)
}

// paused returns the pauses of namespace n.
func paused(t *testing.T, s broker.PauseStore, n string) []broker.Pause {
	t.Helper()
	ps, err := s.Pauses(testContext(t), n)
	if err != nil {
		t.Fatalf("Pauses(%s): %v", n, err)
	}
	return ps
}

// wantPaused checks the pauses of namespace n, as pausedQueues renders
// them; when names the moment.
func wantPaused(t *testing.T, s broker.PauseStore, n, want, when string) {
	t.Helper()
	if got := pausedQueues(paused(t, s, n)); got != want {
		t.Fatalf("Pauses %s = %v, want %v", when, got, want)
	}
}

// doPause pauses ps, failing the test on an error.
func doPause(t *testing.T, s broker.PauseStore, ps ...broker.Pause) {
	t.Helper()
	if err := s.Pause(testContext(t), ps); err != nil {
		t.Fatalf("Pause(%+v): %v", ps, err)
	}
}

// resume resumes queues of namespace n for worker, failing the test on an
// error.
func resume(t *testing.T, s broker.PauseStore, n, worker string, queues ...string) {
	t.Helper()
	if err := s.Resume(testContext(t), n, worker, queues); err != nil {
		t.Fatalf("Resume(%s, %q, %v): %v", n, worker, queues, err)
	}
}

func testPausedQueuesPerNamespace(t *testing.T, newEngine NewEngine) {
	s, n := pausesOf(t, newEngine)
	doPause(t, s, broker.Pause{Namespace: n, Queue: "b"}, broker.Pause{Namespace: n, Queue: "a"})
	doPause(t, s, broker.Pause{Namespace: n + "x", Queue: "z"})
	wantPaused(t, s, n, "[/a /b]", "after pausing")
	resume(t, s, n, "", "a")
	wantPaused(t, s, n, "[/b]", "after resume")
	resume(t, s, n, "", "b")
	resume(t, s, n+"x", "", "z")
	wantPaused(t, s, n, "[]", "after resuming all")
}

// A pause scoped to one worker is stored under that scope: resuming the
// namespace-wide pause of the queue leaves it, and resuming it leaves the
// others.
func testPausesPerWorkerScope(t *testing.T, newEngine NewEngine) {
	s, n := pausesOf(t, newEngine)
	at := time.Date(2025, 11, 23, 10, 30, 15, 123456000, time.UTC)
	alpha := broker.Pause{Namespace: n, Queue: "q", Worker: "alpha@h", PausedAt: at, RequestedBy: "ops", Sig: "abc123"}
	doPause(t, s, alpha, broker.Pause{Namespace: n, Queue: "q", Worker: "gamma"}, broker.Pause{Namespace: n, Queue: "q", PausedAt: at})
	got := paused(t, s, n)
	if pausedQueues(got) != "[/q alpha@h/q gamma/q]" {
		t.Fatalf("Pauses = %v", pausedQueues(got))
	}
	if a := got[1]; !a.PausedAt.Equal(at) || a.RequestedBy != "ops" || a.Sig != "abc123" || a.Namespace != n {
		t.Fatalf("pause read back as %+v, want %+v", a, alpha)
	}
	if !got[1].AppliesTo("alpha@h", "alpha") || got[1].AppliesTo("beta@h", "beta") {
		t.Fatal("AppliesTo: a pause of alpha@h must apply to alpha@h only")
	}
	resume(t, s, n, "", "q")
	wantPaused(t, s, n, "[alpha@h/q gamma/q]", "after the namespace-wide resume")
	resume(t, s, n, "alpha@h", "q")
	wantPaused(t, s, n, "[gamma/q]", "after resuming alpha@h")
	// Pausing again replaces the record (one per scope and queue).
	doPause(t, s, broker.Pause{Namespace: n, Queue: "q", Worker: "gamma", RequestedBy: "second"})
	if got := paused(t, s, n); len(got) != 1 || got[0].RequestedBy != "second" {
		t.Fatalf("after pausing twice: %+v", got)
	}
	resume(t, s, n, "gamma", "q")
}

func testPauseRefusesBadRecords(t *testing.T, newEngine NewEngine) {
	s, n := pausesOf(t, newEngine)
	if err := s.Pause(testContext(t), []broker.Pause{{Namespace: n, Queue: "ok"}, {Namespace: n, Queue: ""}}); err == nil {
		t.Fatal("a pause without a queue was stored")
	}
	wantPaused(t, s, n, "[]", "after a refused call")
}

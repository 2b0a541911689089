package worker

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/memory"
	"github.com/stemhq/stem/result"
)

// unavailableResults is a result backend that is down: every Set fails
// with ErrUnavailable (which the completer retries without end) and is
// reported on calls.
type unavailableResults struct {
	result.Backend
	calls chan struct{}
}

func (u *unavailableResults) Set(context.Context, []result.TaskState) error {
	select {
	case u.calls <- struct{}{}:
	default:
	}
	return stem.ErrUnavailable
}

// TestHardShutdownCutsCompleterBackoffShort: while the completer backs off
// from a result backend that is down (here for half an hour at least), a
// hard shutdown makes Run return promptly: the back-off does not outlive
// it.
func TestHardShutdownCutsCompleterBackoffShort(t *testing.T) {
	eng := memory.New(memory.Options{})
	defer eng.Close()
	results := &unavailableResults{Backend: eng, calls: make(chan struct{}, 1)}
	reg := NewRegistry()
	reg.MustRegister("t", func(TaskContext, json.RawMessage) (any, error) { return "ok", nil }, TaskOptions{})
	w, err := New(Config{Broker: eng, Results: results, Handlers: reg, Node: "a", Hostname: "h",
		Lease: time.Second, ClaimWait: 50 * time.Millisecond, HardWait: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w.comp.base, w.comp.max = time.Hour, time.Hour
	ctx := context.Background()
	if err := eng.PublishBatch(ctx, []broker.Envelope{{ID: "t1", Name: "t", Queue: "default", MaxRetries: -1}}); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(ctx) }()
	select {
	case <-results.calls: // the first write failed: the completer backs off now
	case <-time.After(20 * time.Second):
		t.Fatal("the completer never wrote a state")
	}
	w.Shutdown(Hard)
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after a hard shutdown: the completer's back-off outlived it")
	}
	// The state was never written, so the delivery was not acked: it stays
	// with the broker (redelivered once its lease expires).
	if c := w.Counters(); c.Succeeded != 1 {
		t.Fatalf("counters %+v, want the task run once", c)
	}
}

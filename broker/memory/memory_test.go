package memory_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/conformance"
	"github.com/stemhq/stem/broker/memory"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/result"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestConformance runs the contract suite. The memory engine stores
// envelopes as values (no corrupt payload to inject) and its sweep of
// expired results is not reachable from outside the package, so those two
// tests skip.
func TestConformance(t *testing.T) {
	conformance.Exercise(t, conformance.WithOptions(func(t *testing.T, opts conformance.Options) conformance.Engine {
		e := memory.New(memory.Options{ResultTTL: opts.ResultTTL, DeadLetterCap: opts.DeadLetterCap})
		t.Cleanup(func() { _ = e.Close() })
		return conformance.Engine{Broker: e, Results: e, Registry: e, Control: e, Pauses: e, Revokes: revoke.NewMemory(), CloseEndsSubscriptions: true}
	}))
}

// fakeClock is a settable clock for Options.Now.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestFakeClock(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	e := memory.New(memory.Options{Now: clock.Now, ResultTTL: time.Hour})
	defer e.Close()
	ctx := context.Background()
	p := broker.ClaimParams{Queues: []string{"q"}, Max: 10, Lease: time.Minute}

	env := broker.Envelope{ID: "a", Name: "n", Queue: "q", ETA: clock.Now().Add(time.Hour)}
	if err := e.Publish(ctx, env); err != nil {
		t.Fatal(err)
	}
	if ds, _ := e.Claim(ctx, p); len(ds) != 0 {
		t.Fatalf("claimed before the ETA: %v", ds)
	}
	clock.Advance(time.Hour)
	ds, err := e.Claim(ctx, p)
	if err != nil || len(ds) != 1 {
		t.Fatalf("Claim at the ETA = %v, %v", ds, err)
	}
	if !ds[0].LeaseUntil.Equal(clock.Now().Add(time.Minute)) {
		t.Fatalf("LeaseUntil %v, want fake now + 1m", ds[0].LeaseUntil)
	}
	clock.Advance(time.Minute)
	again, err := e.Claim(ctx, p)
	if err != nil || len(again) != 1 || again[0].Token == ds[0].Token {
		t.Fatalf("Claim after lease expiry = %v, %v", again, err)
	}

	if err := e.Set(ctx, []result.TaskState{{ID: "a", State: result.Succeeded}}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Hour)
	if _, err := e.Get(ctx, "a"); err == nil {
		t.Fatal("result outlived its TTL on the fake clock")
	}
}

func BenchmarkClaimAck(b *testing.B) {
	e := memory.New(memory.Options{})
	defer e.Close()
	ctx := context.Background()
	const batch = 256
	envs := make([]broker.Envelope, batch)
	for i := range envs {
		envs[i] = broker.Envelope{ID: "t", Name: "n", Queue: "q"}
	}
	p := broker.ClaimParams{Queues: []string{"q"}, Max: batch, Lease: time.Minute}
	b.ResetTimer()
	for b.Loop() {
		if err := e.PublishBatch(ctx, envs); err != nil {
			b.Fatal(err)
		}
		ds, err := e.Claim(ctx, p)
		if err != nil || len(ds) != batch {
			b.Fatal(len(ds), err)
		}
		if err := e.Ack(ctx, ds); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "tasks/s")
}

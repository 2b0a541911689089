package worker

import (
	"context"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/memory"
)

// TestAutoscaleUpUnderBacklogAndDownAfterIdle drives the autoscaler with a
// fake clock: it grows one step per tick while a backlog waits and every
// slot is busy, never past Max, and shrinks back to Min after the idle
// period, one step per cooldown.
func TestAutoscaleUpUnderBacklogAndDownAfterIdle(t *testing.T) {
	eng := memory.New(memory.Options{})
	defer eng.Close()
	w, err := New(Config{Broker: eng, Results: eng, Node: "a", Hostname: "h", Concurrency: 4,
		Autoscale: AutoscaleConfig{Enabled: true, Min: 1, Max: 4, IdlePeriod: 10 * time.Second, Tick: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	envs := make([]broker.Envelope, 10)
	for i := range envs {
		envs[i] = broker.Envelope{ID: string(rune('a' + i)), Name: "x", Queue: "default", MaxRetries: -1}
	}
	if err := eng.PublishBatch(ctx, envs); err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1_000_000, 0)
	if _, limit := w.slots.stats(); limit != 1 {
		t.Fatalf("starts at %d, want Min 1", limit)
	}
	// Saturate: every slot busy, backlog waiting.
	want := []int{2, 3, 4, 4, 4}
	for i, wnt := range want {
		for held, limit := w.slots.stats(); held < limit; held, limit = w.slots.stats() {
			w.slots.acquire()
		}
		if got := w.scaler.step(ctx, t0.Add(time.Duration(i)*time.Second)); got != wnt {
			t.Fatalf("tick %d: concurrency %d, want %d", i, got, wnt)
		}
	}
	// Free slots but a backlog: no change (not saturated, not idle).
	for held, _ := w.slots.stats(); held > 0; held, _ = w.slots.stats() {
		w.slots.release()
	}
	if got := w.scaler.step(ctx, t0.Add(6*time.Second)); got != 4 {
		t.Fatalf("with a backlog and free slots: %d, want 4", got)
	}
	// Drain the queue: idle from now on.
	ds, _ := eng.Claim(ctx, broker.ClaimParams{Queues: []string{"default"}, Max: 10, Lease: time.Minute})
	eng.Ack(ctx, ds)
	idle := t0.Add(10 * time.Second)
	steps := []struct {
		after time.Duration
		want  int
	}{{0, 4}, {9 * time.Second, 4}, {10 * time.Second, 3}, {15 * time.Second, 3}, {20 * time.Second, 2}, {30 * time.Second, 1}, {60 * time.Second, 1}}
	for _, s := range steps {
		if got := w.scaler.step(ctx, idle.Add(s.after)); got != s.want {
			t.Fatalf("idle %s: concurrency %d, want %d", s.after, got, s.want)
		}
	}
}

func TestAutoscaleBoundsAndValidation(t *testing.T) {
	eng := memory.New(memory.Options{})
	defer eng.Close()
	bad := []AutoscaleConfig{
		{Enabled: true, Min: 5, Max: 2},
		{Enabled: true, Min: 1, Max: 2, ScaleUpStep: -1},
		{Enabled: true, Min: 1, Max: 2, Tick: -time.Second},
		{Enabled: true, Min: -1, Max: 2},
	}
	for _, c := range bad {
		if _, err := New(Config{Broker: eng, Results: eng, Autoscale: c}); err == nil {
			t.Errorf("accepted %+v", c)
		}
	}
	w, err := New(Config{Broker: eng, Results: eng, Concurrency: 8, Autoscale: AutoscaleConfig{Enabled: true, Min: 2, Max: 8}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.scaler.setBounds(3, 1); err == nil {
		t.Fatal("min > max accepted at run time")
	}
	if err := w.scaler.setBounds(4, 6); err != nil {
		t.Fatal(err)
	}
	if _, limit := w.slots.stats(); limit != 4 {
		t.Fatalf("concurrency %d after raising Min to 4", limit)
	}
	if lo, hi := w.bounds(); lo != 4 || hi != 6 {
		t.Fatalf("bounds %d..%d", lo, hi)
	}
}

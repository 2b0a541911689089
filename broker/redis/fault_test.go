package redis

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/conformance"
	"github.com/stemhq/stem/internal/testutil"
)

// startOwnRedis starts a private redis-server with every write fsynced to
// its append-only file (testutil.StartRedis: skipped without the binary,
// failing under CI).
func startOwnRedis(t *testing.T) *testutil.RedisServer {
	t.Helper()
	return startOwnRedisArgs(t)
}

// startOwnRedisArgs is startOwnRedis with more redis-server arguments
// ("--appendonly", "no"), which override the defaults.
func startOwnRedisArgs(t *testing.T, extra ...string) *testutil.RedisServer {
	t.Helper()
	return testutil.StartRedis(t, append([]string{"--appendonly", "yes", "--appendfsync", "always"}, extra...)...)
}

// TestRestartLosesNothing publishes tasks to a private redis-server, claims
// some, acks a few, restarts the server (SIGTERM, then start again on the
// same port and directory) and checks that the engine keeps working
// through the same Engine value, that calls fail with
// stem.ErrUnavailable while the server is down, that a waiting claim is
// woken again after the restart, and that every task is delivered and
// acked exactly once: leased tasks come back when their lease expires, and
// acked ones never do.
func TestRestartLosesNothing(t *testing.T) {
	conformance.RequireEnv(t, testURLEnv) // an integration test like the others
	t.Parallel()
	srv := startOwnRedis(t)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	e, err := Open(ctx, "redis://"+srv.Addr()+"/0", Options{Namespace: "fault"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	const total = 200
	var envs []broker.Envelope
	for i := range total {
		env := broker.Envelope{ID: fmt.Sprintf("t%03d", i), Name: "n", Queue: "q", MaxRetries: -1}
		if i%10 == 0 {
			env.ETA = time.Now().Add(time.Second) // some delayed across the restart
		}
		envs = append(envs, env)
	}
	if err := e.PublishBatch(ctx, envs); err != nil {
		t.Fatal(err)
	}
	lease := time.Second
	claimed, err := e.Claim(ctx, broker.ClaimParams{Queues: []string{"q"}, Max: 50, Lease: lease})
	if err != nil || len(claimed) != 50 {
		t.Fatalf("Claim = %d, %v", len(claimed), err)
	}
	acks := map[string]int{}
	if err := e.Ack(ctx, claimed[:20]); err != nil {
		t.Fatal(err)
	}
	for _, d := range claimed[:20] {
		acks[d.Envelope.ID]++
	}
	// claimed[20:] stay leased: their worker "dies" with the server.

	// Open the wake-up subscription before the restart.
	if _, err := e.Claim(ctx, broker.ClaimParams{Queues: []string{"other"}, Max: 1, Lease: lease, Wait: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	_, err = e.Claim(ctx, broker.ClaimParams{Queues: []string{"q"}, Max: 10, Lease: lease})
	if !errors.Is(err, stem.ErrUnavailable) {
		t.Fatalf("Claim while the server is down returned %v, want stem.ErrUnavailable", err)
	}
	if err := e.Ack(ctx, claimed[20:21]); !errors.Is(err, stem.ErrUnavailable) {
		t.Fatalf("Ack while the server is down returned %v, want stem.ErrUnavailable", err)
	}
	if err := e.Publish(ctx, broker.Envelope{ID: "late", Name: "n", Queue: "q"}); !errors.Is(err, stem.ErrUnavailable) {
		t.Fatalf("Publish while the server is down returned %v, want stem.ErrUnavailable", err)
	}
	srv.Start()

	// A waiting claim on a fresh queue is woken by a publish, through the
	// subscription go-redis re-established.
	type waitResult struct {
		err error
		at  time.Time
	}
	waitDone := make(chan waitResult, 1)
	go func() {
		ds, err := e.Claim(ctx, broker.ClaimParams{Queues: []string{"other"}, Max: 1, Lease: time.Minute, Wait: 30 * time.Second})
		if err == nil && len(ds) != 1 {
			err = fmt.Errorf("waiting claim returned %d deliveries", len(ds))
		}
		at := time.Now()
		if err == nil {
			err = e.Ack(ctx, ds)
		}
		waitDone <- waitResult{err, at}
	}()
	// Publishing until it succeeds also shows the engine's own pool
	// reconnected.
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := e.Publish(ctx, broker.Envelope{ID: "wake", Name: "n", Queue: "other"})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("publish after restart still failing: %v", err)
		}
		pollPause(t)
	}
	published := time.Now()

	// Drain: everything not acked before the restart comes back, the
	// leased ones once their lease expires, the delayed ones at their ETA.
	for len(acks) < total {
		if time.Now().After(deadline) {
			t.Fatalf("after the restart only %d of %d tasks were delivered", len(acks), total)
		}
		ds, err := e.Claim(ctx, broker.ClaimParams{Queues: []string{"q"}, Max: 64, Lease: time.Minute, Wait: 5 * time.Second})
		if err != nil {
			if errors.Is(err, stem.ErrUnavailable) {
				continue // the pool may still hold a dead connection
			}
			t.Fatal(err)
		}
		if err := e.Ack(ctx, ds); err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			acks[d.Envelope.ID]++
		}
	}
	for id, n := range acks {
		if n != 1 {
			t.Errorf("task %s was acked %d times", id, n)
		}
	}
	w := <-waitDone
	if w.err != nil {
		t.Fatalf("waiting claim across the restart: %v", w.err)
	}
	if lag := w.at.Sub(published); lag > 5*time.Second {
		t.Fatalf("waiting claim returned %v after the publish; its wake-up was lost", lag)
	}
	if n, err := e.PendingCount(ctx, "q"); err != nil || n != 0 {
		t.Fatalf("PendingCount after draining = %d, %v", n, err)
	}
}

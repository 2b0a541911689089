package redis

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/conformance"
	"github.com/stemhq/stem/internal/testutil"
)

// TestLeasedTasksSurviveDataLoss: a server that loses its data while a
// worker holds deliveries (a crash without persistence) must not lose
// them. The holder's next renewal restores them, leased to it; its later
// retry, hand-back and ack behave as if nothing had happened; and another
// claimer never gets a second copy while the holder's lease runs.
func TestLeasedTasksSurviveDataLoss(t *testing.T) {
	srv, e, ctx := lossEngine(t, "loss")
	var envs []broker.Envelope
	for _, id := range []string{"retry", "requeue", "ack", "extra"} {
		envs = append(envs, broker.Envelope{ID: id, Name: "n", Queue: "q", MaxRetries: -1})
	}
	if err := e.PublishBatch(ctx, envs); err != nil {
		t.Fatal(err)
	}
	held, err := e.Claim(ctx, broker.ClaimParams{Queues: []string{"q"}, Max: 4, Lease: time.Minute})
	if err != nil || len(held) != 4 {
		t.Fatalf("Claim = %d, %v", len(held), err)
	}

	crashEmpty(srv)

	// The first renewal after the loss restores every held delivery.
	var lerr *broker.LeaseLostError
	deadline := time.Now().Add(20 * time.Second)
	for {
		err = e.ExtendLease(ctx, held, time.Minute)
		if !errors.Is(err, stem.ErrUnavailable) || time.Now().After(deadline) {
			break
		}
		pollPause(t)
	}
	if !errors.As(err, &lerr) {
		t.Fatalf("ExtendLease after the server lost its data = %v, want a *LeaseLostError naming restored tasks", err)
	}
	if len(lerr.IDs) != 0 {
		t.Fatalf("ExtendLease after data loss reported leases lost %v; the holder must keep them", lerr.IDs)
	}
	restored := slices.Clone(lerr.Restored)
	slices.Sort(restored)
	if want := []string{"ack", "extra", "requeue", "retry"}; !slices.Equal(restored, want) {
		t.Fatalf("restored %v, want %v", restored, want)
	}
	if ids, ok := broker.LeasesLost(err); !ok || len(ids) != 0 {
		t.Fatalf("LeasesLost(%v) = %v, %v; want none lost", err, ids, ok)
	}

	// A second renewal is an ordinary one.
	if err := e.ExtendLease(ctx, held, time.Minute); err != nil {
		t.Fatalf("second ExtendLease after the restore: %v", err)
	}
	// Nobody else can claim them while the holder's lease runs.
	if ds, err := e.Claim(ctx, broker.ClaimParams{Queues: []string{"q"}, Max: 10, Lease: time.Minute}); err != nil || len(ds) != 0 {
		t.Fatalf("another claim after the restore = %d, %v; want none", len(ds), err)
	}

	byID := map[string]broker.Delivery{}
	for _, d := range held {
		byID[d.Envelope.ID] = d
	}
	next := byID["retry"].Envelope
	next.Attempt++
	if err := e.Nack(ctx, []broker.Nack{
		{Delivery: byID["retry"], Action: broker.Retry, Envelope: next},
		{Delivery: byID["requeue"], Action: broker.Requeue},
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.Ack(ctx, []broker.Delivery{byID["ack"], byID["extra"]}); err != nil {
		t.Fatal(err)
	}
	ds, err := e.Claim(ctx, broker.ClaimParams{Queues: []string{"q"}, Max: 10, Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range ds {
		got = append(got, d.Envelope.ID)
	}
	slices.Sort(got)
	if want := []string{"requeue", "retry"}; !slices.Equal(got, want) {
		t.Fatalf("after retry, requeue and acks the queue holds %v, want %v", got, want)
	}
}

// TestNackOfReclaimedLeaseStillSkipped: a delivery whose lease expired
// and was taken by another claim before any data loss stays lost: only
// tokens of an older epoch are restored.
func TestNackOfReclaimedLeaseStillSkipped(t *testing.T) {
	_, e, ctx := lossEngine(t, "loss2")
	if err := e.Publish(ctx, broker.Envelope{ID: "x", Name: "n", Queue: "q", MaxRetries: -1}); err != nil {
		t.Fatal(err)
	}
	first, err := e.Claim(ctx, broker.ClaimParams{Queues: []string{"q"}, Max: 1, Lease: 50 * time.Millisecond})
	if err != nil || len(first) != 1 {
		t.Fatalf("Claim = %d, %v", len(first), err)
	}
	var second []broker.Delivery
	for len(second) == 0 {
		second, err = e.Claim(ctx, broker.ClaimParams{Queues: []string{"q"}, Max: 1, Lease: time.Minute, Wait: time.Second})
		if err != nil {
			t.Fatal(err)
		}
	}
	err = e.ExtendLease(ctx, first, time.Minute)
	if ids, ok := broker.LeasesLost(err); !ok || len(ids) != 1 {
		t.Fatalf("ExtendLease of a reclaimed lease = %v; want it reported lost", err)
	}
	if err := e.Nack(ctx, []broker.Nack{{Delivery: first[0], Action: broker.Requeue}}); err != nil {
		t.Fatal(err)
	}
	if ds, err := e.Claim(ctx, broker.ClaimParams{Queues: []string{"q"}, Max: 10, Lease: time.Minute}); err != nil || len(ds) != 0 {
		t.Fatalf("the lost holder's requeue published a duplicate: %d, %v", len(ds), err)
	}
}

// TestRestoredLeaseCanStillBeLost: a delivery restored after a data loss
// belongs to the new epoch. Once its (restored) lease expires and another
// worker claims the task, the old holder's renewal must report the lease
// lost and its hand-back must not publish a second copy: otherwise a
// third worker runs the task while the second still does.
func TestRestoredLeaseCanStillBeLost(t *testing.T) {
	srv, e, ctx := lossEngine(t, "loss3")
	held := holdOne(t, ctx, e)
	var err error

	crashEmpty(srv)

	// The holder restores it, with a short lease it then fails to renew
	// (partitioned, say).
	deadline := time.Now().Add(20 * time.Second)
	for {
		err = e.ExtendLease(ctx, held, 50*time.Millisecond)
		if !errors.Is(err, stem.ErrUnavailable) || time.Now().After(deadline) {
			break
		}
		pollPause(t)
	}
	var lerr *broker.LeaseLostError
	if !errors.As(err, &lerr) || len(lerr.Restored) != 1 {
		t.Fatalf("ExtendLease after the data loss = %v, want the task restored", err)
	}
	// Another worker claims it once the restored lease expired.
	var second []broker.Delivery
	for len(second) == 0 {
		second, err = e.Claim(ctx, broker.ClaimParams{Queues: []string{"q"}, Max: 1, Lease: time.Minute, Wait: time.Second})
		if err != nil {
			t.Fatal(err)
		}
	}
	if ids, ok := broker.LeasesLost(e.ExtendLease(ctx, held, time.Minute)); !ok || len(ids) != 1 {
		t.Errorf("the old holder's renewal after another worker claimed the task = %v, %v; want its lease reported lost", ids, ok)
	}
	if err := e.Nack(ctx, []broker.Nack{{Delivery: held[0], Action: broker.Requeue}}); err != nil {
		t.Fatal(err)
	}
	if ds, err := e.Claim(ctx, broker.ClaimParams{Queues: []string{"q"}, Max: 10, Lease: time.Minute}); err != nil || len(ds) != 0 {
		t.Fatalf("while a second worker holds the task, a third claimed %d copies (%v): the old holder's renewal or hand-back created a duplicate", len(ds), err)
	}
}

// TestNackAfterDataLossAppliesOnce: a hand-back decided after a data loss
// is applied once, even when the worker sends it again (its first reply
// was lost on the network and the worker retries).
func TestNackAfterDataLossAppliesOnce(t *testing.T) {
	srv, e, ctx := lossEngine(t, "loss4")
	held := holdOne(t, ctx, e)
	var err error

	crashEmpty(srv)

	nack := []broker.Nack{{Delivery: held[0], Action: broker.Requeue}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		err = e.Nack(ctx, nack)
		if !errors.Is(err, stem.ErrUnavailable) || time.Now().After(deadline) {
			break
		}
		pollPause(t)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Nack(ctx, nack); err != nil { // the retry
		t.Fatal(err)
	}
	ds, err := e.Claim(ctx, broker.ClaimParams{Queues: []string{"q"}, Max: 10, Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1 {
		t.Fatalf("after one hand-back sent twice the queue holds %d copies of the task, want 1", len(ds))
	}
}

// lossEngine starts a private redis-server and opens an engine of
// namespace ns on it, for the tests that make the server lose its data.
func lossEngine(t *testing.T, ns string) (*testutil.RedisServer, *Engine, context.Context) {
	t.Helper()
	conformance.RequireEnv(t, testURLEnv)
	t.Parallel()
	srv := startOwnRedis(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	e, err := Open(ctx, "redis://"+srv.Addr()+"/0", Options{Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return srv, e, ctx
}

// holdOne publishes task "x" to queue "q" and claims it under a
// one-minute lease.
func holdOne(t *testing.T, ctx context.Context, e *Engine) []broker.Delivery {
	t.Helper()
	if err := e.Publish(ctx, broker.Envelope{ID: "x", Name: "n", Queue: "q", MaxRetries: -1}); err != nil {
		t.Fatal(err)
	}
	held, err := e.Claim(ctx, broker.ClaimParams{Queues: []string{"q"}, Max: 1, Lease: time.Minute})
	if err != nil || len(held) != 1 {
		t.Fatalf("Claim = %d, %v", len(held), err)
	}
	return held
}

// crashEmpty kills the server with SIGKILL and starts it again without
// its data, as a server without persistence comes back from a crash.
func crashEmpty(srv *testutil.RedisServer) {
	srv.Kill()
	srv.WipeData()
	srv.Start()
}

package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
)

// testQueue is the queue most tests use; every test has its own engine.
const testQueue = "default"

var brokerTests = []subtest{
	{"PublishClaimOne", testPublishClaimOne},
	{"PublishBatchFIFO", testPublishBatchFIFO},
	{"ClaimMax", testClaimMax},
	{"ClaimQueuePriority", testClaimQueuePriority},
	{"LeasedNotReclaimed", testLeasedNotReclaimed},
	{"LeaseExpiryRedelivers", testLeaseExpiryRedelivers},
	{"ExtendLease", testExtendLease},
	{"ExtendLeaseLost", testExtendLeaseLost},
	{"ExtendLeaseNeverShortens", testExtendLeaseNeverShortens},
	{"AckRemoves", testAckRemoves},
	{"NackRetryDelay", testNackRetryDelay},
	{"NackRetryNoDelay", testNackRetryNoDelay},
	{"NackRequeue", testNackRequeue},
	{"NackDeadLetter", testNackDeadLetter},
	{"DeadLetterCap", testDeadLetterCap},
	{"CorruptPayloadDeadLettered", testCorruptPayload},
	{"NackLostLeaseNoDuplicate", testNackLostLease},
	{"DelayedPublish", testDelayedPublish},
	{"PendingCount", testPendingCount},
	{"ClaimWaitWakesOnPublish", testClaimWaitWakes},
	{"ClaimWaitEmpty", testClaimWaitEmpty},
	{"ClaimWaitContextCancel", testClaimWaitContext},
	{"ConcurrentClaimers", testConcurrentClaimers},
	{"PeerWakesWaitingClaim", testPeerWakesWaitingClaim},
	{"Validation", testValidation},
	{"Closed", testClosed},
	{"CloseWakesWaiter", testCloseWakesWaiter},
}

// brokerOf returns the engine's broker or skips the test.
func brokerOf(t *testing.T, newEngine NewEngine) broker.Broker {
	return must(t, newEngine(t, Options{}).Broker, "broker")
}

// envelope builds a valid envelope for tests.
func envelope(id, queue string) broker.Envelope {
	return broker.Envelope{
		ID:         id,
		Name:       "test.echo",
		Queue:      queue,
		Args:       []byte(`{"id":"` + id + `","n":1}`),
		MaxRetries: -1,
		CreatedAt:  time.Now(),
		Headers:    map[string]string{"trace": "t-" + id},
	}
}

// envelopes builds n envelopes named prefix-000, prefix-001, ...
func envelopes(prefix, queue string, n int) []broker.Envelope {
	out := make([]broker.Envelope, n)
	for i := range out {
		out[i] = envelope(fmt.Sprintf("%s-%03d", prefix, i), queue)
	}
	return out
}

// sameEnvelope fails the test when got differs from want in any field that
// must survive the trip through the broker.
func sameEnvelope(t *testing.T, got, want broker.Envelope) {
	t.Helper()
	switch {
	case got.ID != want.ID, got.Name != want.Name, got.Queue != want.Queue,
		got.Attempt != want.Attempt, got.MaxRetries != want.MaxRetries,
		got.TimeLimit != want.TimeLimit:
		t.Fatalf("envelope mismatch:\n got %+v\nwant %+v", got, want)
	case !bytes.Equal(got.Args, want.Args):
		t.Fatalf("envelope %s: args %s, want %s", want.ID, got.Args, want.Args)
	case !got.ETA.Equal(want.ETA), !got.CreatedAt.Equal(want.CreatedAt):
		t.Fatalf("envelope %s: times eta=%v created=%v, want eta=%v created=%v",
			want.ID, got.ETA, got.CreatedAt, want.ETA, want.CreatedAt)
	case !maps.Equal(got.Headers, want.Headers):
		t.Fatalf("envelope %s: headers %v, want %v", want.ID, got.Headers, want.Headers)
	}
}

func publish(t *testing.T, b broker.Broker, envs ...broker.Envelope) {
	t.Helper()
	if err := b.PublishBatch(testContext(t), envs); err != nil {
		t.Fatalf("PublishBatch(%d envelopes): %v", len(envs), err)
	}
}

func claim(t *testing.T, b broker.Broker, p broker.ClaimParams) []broker.Delivery {
	t.Helper()
	ds, err := b.Claim(testContext(t), p)
	if err != nil {
		t.Fatalf("Claim(%+v): %v", p, err)
	}
	if len(ds) > p.Max {
		t.Fatalf("Claim(max %d) returned %d deliveries", p.Max, len(ds))
	}
	return ds
}

// claimN claims and checks that it got n deliveries.
func claimN(t *testing.T, b broker.Broker, p broker.ClaimParams, n int) []broker.Delivery {
	t.Helper()
	ds := claim(t, b, p)
	if len(ds) != n {
		t.Fatalf("claimed %d, want %d", len(ds), n)
	}
	return ds
}

// claimWithin claims repeatedly, each time waiting (Claim's own Wait) for
// what is left of within, until it gets at least one delivery or within
// passes. It returns what it got, possibly nothing.
func claimWithin(t *testing.T, b broker.Broker, p broker.ClaimParams, within time.Duration) []broker.Delivery {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		p.Wait = left
		if ds := claim(t, b, p); len(ds) > 0 {
			return ds
		}
	}
}

func ack(t *testing.T, b broker.Broker, ds ...broker.Delivery) {
	t.Helper()
	if err := b.Ack(testContext(t), ds); err != nil {
		t.Fatalf("Ack(%v): %v", deliveryIDs(ds), err)
	}
}

func nack(t *testing.T, b broker.Broker, ns ...broker.Nack) {
	t.Helper()
	if err := b.Nack(testContext(t), ns); err != nil {
		t.Fatalf("Nack(%d items): %v", len(ns), err)
	}
}

// wantPending checks the PendingCount of queue, when names the moment.
func wantPending(t *testing.T, b broker.Broker, queue string, want int64, when string) {
	t.Helper()
	n, err := b.PendingCount(testContext(t), queue)
	if err != nil || n != want {
		t.Fatalf("PendingCount(%s) %s = %d, %v; want %d", queue, when, n, err, want)
	}
}

func deliveryIDs(ds []broker.Delivery) []string {
	return idsOf(ds, func(d broker.Delivery) string { return d.Envelope.ID })
}

func envelopeIDs(envs []broker.Envelope) []string {
	return idsOf(envs, func(e broker.Envelope) string { return e.ID })
}

func wantIDs(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: got ids %v, want %v", what, got, want)
	}
}

// params returns ClaimParams for testQueue.
func params(max int, lease time.Duration) broker.ClaimParams {
	return broker.ClaimParams{Queues: []string{testQueue}, Max: max, Lease: lease}
}

func testPublishClaimOne(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	want := envelope("one", testQueue)
	want.TimeLimit = 3 * time.Second
	noErr(t, b.Publish(testContext(t), want), "Publish")
	before := time.Now()
	ds := claim(t, b, params(10, time.Minute))
	if len(ds) != 1 {
		t.Fatalf("claimed %d deliveries, want 1", len(ds))
	}
	d := ds[0]
	sameEnvelope(t, d.Envelope, want)
	if d.Token == "" {
		t.Fatal("delivery has an empty token")
	}
	if d.LeaseUntil.Before(before.Add(time.Minute-time.Second)) || d.LeaseUntil.After(time.Now().Add(time.Minute+time.Second)) {
		t.Fatalf("LeaseUntil %v is not about a minute after %v", d.LeaseUntil, before)
	}
	wantIDs(t, "second claim returned", deliveryIDs(claim(t, b, params(10, time.Minute))), nil)
	ack(t, b, d)
}

func testPublishBatchFIFO(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	envs := envelopes("fifo", testQueue, 10)
	publish(t, b, envs...)
	first := claim(t, b, params(4, time.Minute))
	wantIDs(t, "first claim", deliveryIDs(first), envelopeIDs(envs[:4]))
	rest := claim(t, b, params(100, time.Minute))
	wantIDs(t, "second claim", deliveryIDs(rest), envelopeIDs(envs[4:]))
	for i, d := range append(first, rest...) {
		sameEnvelope(t, d.Envelope, envs[i])
	}
	// Single publishes keep their order too.
	for _, e := range envelopes("single", testQueue, 3) {
		if err := b.Publish(testContext(t), e); err != nil {
			t.Fatalf("Publish(%s): %v", e.ID, err)
		}
	}
	got := claim(t, b, params(10, time.Minute))
	wantIDs(t, "single publishes", deliveryIDs(got), []string{"single-000", "single-001", "single-002"})
}

func testClaimMax(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	publish(t, b, envelopes("max", testQueue, 25)...)
	seen := map[string]bool{}
	for _, max := range []int{1, 7, 7, 100} {
		ds := claim(t, b, params(max, time.Minute))
		want := min(max, 25-len(seen))
		if len(ds) != want {
			t.Fatalf("Claim(max %d) returned %d deliveries, want %d", max, len(ds), want)
		}
		for _, d := range ds {
			if seen[d.Envelope.ID] {
				t.Fatalf("task %s claimed twice", d.Envelope.ID)
			}
			seen[d.Envelope.ID] = true
		}
	}
	if len(seen) != 25 {
		t.Fatalf("claimed %d distinct tasks, want 25", len(seen))
	}
}

func testClaimQueuePriority(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	publish(t, b, envelope("low-0", "low"), envelope("low-1", "low"))
	publish(t, b, envelope("high-0", "high"), envelope("high-1", "high"), envelope("high-2", "high"))
	p := broker.ClaimParams{Queues: []string{"high", "empty", "low"}, Max: 4, Lease: time.Minute}
	got := claim(t, b, p)
	wantIDs(t, "priority claim", deliveryIDs(got), []string{"high-0", "high-1", "high-2", "low-0"})
	got = claim(t, b, p)
	wantIDs(t, "remainder", deliveryIDs(got), []string{"low-1"})
	if got[0].Envelope.Queue != "low" {
		t.Fatalf("delivery queue %q, want low", got[0].Envelope.Queue)
	}
}

func testLeasedNotReclaimed(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	publish(t, b, envelopes("leased", testQueue, 3)...)
	first := claim(t, b, params(2, time.Minute))
	second := claim(t, b, params(10, time.Minute))
	wantIDs(t, "second claim", deliveryIDs(second), []string{"leased-002"})
	wantIDs(t, "claim while all leased", deliveryIDs(claim(t, b, params(10, time.Minute))), nil)
	ack(t, b, append(first, second...)...)
}

func testLeaseExpiryRedelivers(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	want := envelope("expire", testQueue)
	publish(t, b, want)
	lease := time.Second // long enough that a loaded machine cannot expire it between two calls
	first := claimN(t, b, params(1, lease), 1)
	wantIDs(t, "claim during the lease returned", deliveryIDs(claim(t, b, params(1, lease))), nil)
	again := claimWithin(t, b, params(1, time.Minute), 10*time.Second)
	if len(again) != 1 {
		t.Fatal("task was not redelivered after its lease expired")
	}
	if !time.Now().After(first[0].LeaseUntil.Add(-10 * time.Millisecond)) {
		t.Fatalf("redelivered before the lease deadline %v", first[0].LeaseUntil)
	}
	sameEnvelope(t, again[0].Envelope, want) // same attempt: a crash is not a retry
	if again[0].Token == first[0].Token {
		t.Fatal("a redelivery reused the lost delivery's token")
	}
	// Acking the lost delivery is not an error and does not remove the new one.
	ack(t, b, first[0])
	noErr(t, b.ExtendLease(testContext(t), again, time.Minute), "ExtendLease of the live redelivery after acking the lost one")
	ack(t, b, again[0])
}

func testExtendLease(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	publish(t, b, envelopes("extend", testQueue, 2)...)
	lease := time.Second
	ds := claimN(t, b, params(2, lease), 2)
	noErr(t, b.ExtendLease(testContext(t), ds, 30*time.Second), "ExtendLease")
	// Wait (with Claim's own Wait) well past the old deadline: the extended
	// leases must hold, and no copy may have been published.
	wantIDs(t, "claim after extension", deliveryIDs(claimWithin(t, b, params(10, time.Minute), time.Until(ds[0].LeaseUntil)+2*lease)), nil)
	if !time.Now().After(ds[0].LeaseUntil) {
		t.Fatalf("claimWithin returned before the old deadline %v", ds[0].LeaseUntil)
	}
	wantPending(t, b, testQueue, 0, "after extension")
	ack(t, b, ds...)
}

// testExtendLeaseNeverShortens: a handler asking for 1s under a long
// lease must not let another claim take the task before the long lease
// runs out (ExtendLease is max(current, now+d)).
func testExtendLeaseNeverShortens(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	publish(t, b, envelope("long", testQueue))
	ds := claimN(t, b, params(1, time.Minute), 1)
	short := 200 * time.Millisecond
	if err := b.ExtendLease(testContext(t), ds, short); err != nil {
		t.Fatalf("ExtendLease(%v) under a 1m lease: %v", short, err)
	}
	// Wait (with Claim's own Wait) well past the short deadline: the
	// one-minute lease must still hold.
	start := time.Now()
	got := claimWithin(t, b, params(10, time.Minute), 5*short+time.Second)
	if len(got) != 0 {
		t.Fatalf("another claim took the task %v after ExtendLease(%v) shortened a 1m lease", deliveryIDs(got), short)
	}
	if time.Since(start) < short {
		t.Fatalf("claimWithin returned before the short deadline")
	}
	wantPending(t, b, testQueue, 0, "after a shortening extension")
	ack(t, b, ds...)
}

func testExtendLeaseLost(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	publish(t, b, envelope("kept", testQueue))
	kept := claim(t, b, params(1, time.Minute))
	publish(t, b, envelope("lost", testQueue))
	lost := claim(t, b, params(1, 100*time.Millisecond))
	publish(t, b, envelope("acked", testQueue))
	acked := claim(t, b, params(1, time.Minute))
	if len(kept) != 1 || len(lost) != 1 || len(acked) != 1 {
		t.Fatalf("claimed %d/%d/%d, want 1 each", len(kept), len(lost), len(acked))
	}
	ack(t, b, acked...)
	again := claimWithin(t, b, params(1, time.Minute), 10*time.Second)
	wantIDs(t, "redelivery", deliveryIDs(again), []string{"lost"})

	err := b.ExtendLease(testContext(t), []broker.Delivery{kept[0], lost[0], acked[0]}, time.Minute)
	var lle *broker.LeaseLostError
	if !errors.As(err, &lle) {
		t.Fatalf("ExtendLease of lost leases returned %v, want a *broker.LeaseLostError", err)
	}
	ids := slices.Clone(lle.IDs)
	slices.Sort(ids)
	wantIDs(t, "LeaseLostError.IDs", ids, []string{"acked", "lost"})
	// The live ones were still extended.
	noErr(t, b.ExtendLease(testContext(t), append(kept, again...), time.Minute), "ExtendLease of live leases")
	noErr(t, b.ExtendLease(testContext(t), nil, time.Minute), "ExtendLease of nothing")
	ack(t, b, append(kept, again...)...)
}

func testAckRemoves(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	publish(t, b, envelopes("ack", testQueue, 3)...)
	lease := 150 * time.Millisecond
	ds := claimN(t, b, params(3, lease), 3)
	ack(t, b, ds...)
	ack(t, b, ds...) // twice is harmless
	ack(t, b)        // nothing is harmless
	wantIDs(t, "acked tasks came back", deliveryIDs(claimWithin(t, b, params(10, time.Minute), 4*lease)), nil)
	wantPending(t, b, testQueue, 0, "after ack")
}

func testNackRetryDelay(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	orig := envelope("retry", testQueue)
	publish(t, b, orig)
	ds := claimN(t, b, params(1, time.Minute), 1)
	next := ds[0].Envelope
	next.Attempt++
	next.Headers = map[string]string{"trace": "t-retry", "lastError": "boom"}
	delay := time.Second
	start := time.Now()
	nack(t, b, broker.Nack{Delivery: ds[0], Action: broker.Retry, Envelope: next, Delay: delay})
	wantIDs(t, "retry was claimable before its delay", deliveryIDs(claim(t, b, params(1, time.Minute))), nil)
	wantPending(t, b, testQueue, 0, "during the retry delay")
	got := claimWithin(t, b, params(1, time.Minute), 10*time.Second)
	if len(got) != 1 {
		t.Fatal("retry was never claimable")
	}
	if el := time.Since(start); el < delay-10*time.Millisecond {
		t.Fatalf("retry claimed %v after the nack, before its %v delay", el, delay)
	}
	sameEnvelope(t, got[0].Envelope, next)
	ack(t, b, got...)
	// The old delivery is gone: acking or nacking it again does nothing.
	nack(t, b, broker.Nack{Delivery: ds[0], Action: broker.Retry, Envelope: next})
	wantIDs(t, "a second nack of the same delivery created", deliveryIDs(claim(t, b, params(1, time.Minute))), nil)
}

func testNackRetryNoDelay(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	publish(t, b, envelope("again", testQueue))
	ds := claim(t, b, params(1, time.Minute))
	next := ds[0].Envelope
	next.Attempt = 3
	nack(t, b, broker.Nack{Delivery: ds[0], Action: broker.Retry, Envelope: next})
	got := claimWithin(t, b, params(1, time.Minute), 5*time.Second)
	if len(got) != 1 {
		t.Fatal("retry without delay was not claimable")
	}
	sameEnvelope(t, got[0].Envelope, next)
	ack(t, b, got...)
}

func testNackRequeue(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	envs := envelopes("requeue", testQueue, 4)
	publish(t, b, envs...)
	ds := claim(t, b, params(2, time.Minute))
	wantIDs(t, "claim", deliveryIDs(ds), []string{"requeue-000", "requeue-001"})
	nack(t, b,
		broker.Nack{Delivery: ds[0], Action: broker.Requeue},
		broker.Nack{Delivery: ds[1], Action: broker.Requeue})
	wantPending(t, b, testQueue, 4, "after requeue")
	got := claim(t, b, params(10, time.Minute))
	wantIDs(t, "after requeue", deliveryIDs(got), envelopeIDs(envs))
	for i, d := range got {
		sameEnvelope(t, d.Envelope, envs[i]) // same attempt
	}
	ack(t, b, got...)
}

func testNackDeadLetter(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	envs := envelopes("dead", testQueue, 2)
	publish(t, b, envs...)
	ds := claim(t, b, params(2, time.Minute))
	before := time.Now()
	nack(t, b, broker.Nack{Delivery: ds[0], Action: broker.DeadLetter, Reason: "first reason"})
	nack(t, b, broker.Nack{Delivery: ds[1], Action: broker.DeadLetter, Reason: "second reason"})
	ctx := testContext(t)
	dls, err := b.DeadLetters(ctx, testQueue, 10)
	if err != nil {
		t.Fatalf("DeadLetters: %v", err)
	}
	if len(dls) != 2 {
		t.Fatalf("DeadLetters returned %d entries, want 2", len(dls))
	}
	sameEnvelope(t, dls[0].Envelope, envs[1]) // newest first
	sameEnvelope(t, dls[1].Envelope, envs[0])
	if dls[0].Reason != "second reason" || dls[1].Reason != "first reason" {
		t.Fatalf("reasons %q, %q", dls[0].Reason, dls[1].Reason)
	}
	for _, dl := range dls {
		if dl.DeadAt.Before(before.Add(-time.Second)) || dl.DeadAt.After(time.Now().Add(time.Second)) {
			t.Fatalf("DeadAt %v is not about now", dl.DeadAt)
		}
	}
	one, err := b.DeadLetters(ctx, testQueue, 1)
	if err != nil || len(one) != 1 || one[0].Envelope.ID != "dead-001" {
		t.Fatalf("DeadLetters(limit 1) = %v, %v; want dead-001 only", one, err)
	}
	other, err := b.DeadLetters(ctx, "other", 10)
	if err != nil || len(other) != 0 {
		t.Fatalf("DeadLetters(other) = %v, %v; want none", other, err)
	}
	wantIDs(t, "dead letters were claimable", deliveryIDs(claim(t, b, params(10, time.Minute))), nil)
	wantPending(t, b, testQueue, 0, "after dead-lettering")
}

// testDeadLetterCap: the dead letters of a queue are trimmed to the cap,
// the oldest going first.
func testDeadLetterCap(t *testing.T, newEngine NewEngine) {
	b := newEngine(t, Options{DeadLetterCap: 3}).Broker
	for i := range 5 {
		publish(t, b, envelope(fmt.Sprintf("dl-%d", i), testQueue))
		ds := claim(t, b, params(1, time.Minute))
		if len(ds) != 1 {
			t.Fatalf("Claim = %v, want dl-%d", deliveryIDs(ds), i)
		}
		nack(t, b, broker.Nack{Delivery: ds[0], Action: broker.DeadLetter, Reason: "r"})
	}
	dls, err := b.DeadLetters(testContext(t), testQueue, 10)
	if err != nil {
		t.Fatalf("DeadLetters: %v", err)
	}
	wantIDs(t, "dead letters under a cap of 3", idsOf(dls, func(dl broker.DeadLetterEntry) string { return dl.Envelope.ID }), []string{"dl-4", "dl-3", "dl-2"})
}

// testCorruptPayload: a stored task whose payload is not an envelope is
// dead-lettered, with a reason naming it undecodable, by the claim that
// meets it, instead of blocking the queue.
func testCorruptPayload(t *testing.T, newEngine NewEngine) {
	e := newEngine(t, Options{})
	if e.PublishCorrupt == nil {
		t.Skip("engine has no PublishCorrupt hook (it cannot store an undecodable payload)")
	}
	noErr(t, e.PublishCorrupt(testContext(t), testQueue), "PublishCorrupt")
	ok := envelope("ok", testQueue)
	publish(t, e.Broker, ok)
	ds := claim(t, e.Broker, params(10, time.Minute))
	wantIDs(t, "claimed past a corrupt payload", deliveryIDs(ds), []string{"ok"})
	sameEnvelope(t, ds[0].Envelope, ok)
	dls, err := e.Broker.DeadLetters(testContext(t), testQueue, 10)
	if err != nil || len(dls) != 1 || !strings.Contains(dls[0].Reason, "undecodable") {
		t.Fatalf("DeadLetters = %+v, %v; want one, undecodable", dls, err)
	}
	wantIDs(t, "claimed again", deliveryIDs(claim(t, e.Broker, params(10, time.Minute))), nil)
	wantPending(t, e.Broker, testQueue, 0, "(the corrupt task dead, the valid one leased)")
}

func testNackLostLease(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	publish(t, b, envelope("lost", testQueue))
	lost := claim(t, b, params(1, 100*time.Millisecond))
	live := claimWithin(t, b, params(1, time.Minute), 10*time.Second)
	if len(lost) != 1 || len(live) != 1 {
		t.Fatalf("claimed %d then %d, want 1 and 1", len(lost), len(live))
	}
	next := lost[0].Envelope
	next.Attempt++
	nack(t, b,
		broker.Nack{Delivery: lost[0], Action: broker.Retry, Envelope: next},
		broker.Nack{Delivery: lost[0], Action: broker.Requeue},
		broker.Nack{Delivery: lost[0], Action: broker.DeadLetter, Reason: "lost"})
	wantIDs(t, "nack of a lost lease created", deliveryIDs(claimWithin(t, b, params(10, time.Minute), 300*time.Millisecond)), nil)
	if dls, err := b.DeadLetters(testContext(t), testQueue, 10); err != nil || len(dls) != 0 {
		t.Fatalf("nack of a lost lease dead-lettered %v (err %v)", dls, err)
	}
	// The live delivery is untouched.
	noErr(t, b.ExtendLease(testContext(t), live, time.Minute), "ExtendLease of the live delivery")
	ack(t, b, live...)
}

func testDelayedPublish(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	delay := 1500 * time.Millisecond
	later := envelope("later", testQueue)
	later.ETA = time.Now().Add(delay)
	past := envelope("past", testQueue)
	past.ETA = time.Now().Add(-time.Hour)
	publish(t, b, later, past)
	got := claim(t, b, params(10, time.Minute))
	wantIDs(t, "immediate claim", deliveryIDs(got), []string{"past"})
	wantPending(t, b, testQueue, 0, "with only a delayed task")
	got = claimWithin(t, b, params(10, time.Minute), 10*time.Second)
	if len(got) != 1 {
		t.Fatal("delayed task never became claimable")
	}
	if time.Now().Before(later.ETA.Add(-10 * time.Millisecond)) {
		t.Fatalf("delayed task claimed before its ETA %v", later.ETA)
	}
	sameEnvelope(t, got[0].Envelope, later)
}

func testPendingCount(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	wantPending(t, b, testQueue, 0, "of an empty queue")
	publish(t, b, envelopes("pc", testQueue, 3)...)
	delayed := envelope("pc-delayed", testQueue)
	delayed.ETA = time.Now().Add(time.Hour)
	publish(t, b, delayed, envelope("pc-other", "other"))
	wantPending(t, b, testQueue, 3, "after publishing")
	claim(t, b, params(1, time.Minute))
	wantPending(t, b, testQueue, 2, "after one claim")
	wantPending(t, b, "other", 1, "after publishing")
}

func testClaimWaitWakes(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	ctx := testContext(t)
	wait := 10 * time.Second
	done := claimAsync(ctx, b, broker.ClaimParams{Queues: []string{"other", testQueue}, Max: 5, Lease: time.Minute, Wait: wait})
	// The timer only shapes the scenario (publish while the claim waits);
	// the assertions hold if the publish lands before the claim starts.
	published := make(chan time.Time, 1)
	pubErr := make(chan error, 1)
	timer := time.AfterFunc(200*time.Millisecond, func() {
		published <- time.Now()
		pubErr <- b.Publish(ctx, envelope("wake", testQueue))
	})
	defer timer.Stop()
	var c claimed
	select {
	case c = <-done:
	case <-ctx.Done():
		t.Fatal("waiting claim never returned")
	}
	noErr(t, c.err, "waiting Claim")
	noErr(t, <-pubErr, "Publish")
	wantIDs(t, "woken claim", deliveryIDs(c.ds), []string{"wake"})
	if lag := c.at.Sub(<-published); lag > wait/4 {
		t.Fatalf("waiting Claim returned %v after the publish; want well under its %v Wait", lag, wait)
	}
}

// claimed is what a claim in another goroutine returned, and when.
type claimed struct {
	ds  []broker.Delivery
	err error
	at  time.Time
}

// claimAsync claims in a goroutine; the channel gets what it returned.
func claimAsync(ctx context.Context, b broker.Broker, p broker.ClaimParams) <-chan claimed {
	done := make(chan claimed, 1)
	go func() {
		ds, err := b.Claim(ctx, p)
		done <- claimed{ds, err, time.Now()}
	}()
	return done
}

func testClaimWaitEmpty(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	wait := 200 * time.Millisecond
	start := time.Now()
	ds := claim(t, b, broker.ClaimParams{Queues: []string{testQueue}, Max: 5, Lease: time.Minute, Wait: wait})
	el := time.Since(start)
	wantIDs(t, "claim on an empty queue", deliveryIDs(ds), nil)
	if el < wait-20*time.Millisecond || el > wait+3*time.Second {
		t.Fatalf("Claim with Wait %v returned after %v", wait, el)
	}
}

func testClaimWaitContext(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	ctx, cancel := context.WithTimeout(testContext(t), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	ds, err := b.Claim(ctx, broker.ClaimParams{Queues: []string{testQueue}, Max: 5, Lease: time.Minute, Wait: 30 * time.Second})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Claim with an expiring context returned %v, %v; want context.DeadlineExceeded", deliveryIDs(ds), err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("Claim noticed the context after %v", el)
	}
	cctx, ccancel := context.WithCancel(testContext(t))
	ccancel()
	if _, err := b.Claim(cctx, broker.ClaimParams{Queues: []string{testQueue}, Max: 5, Lease: time.Minute, Wait: time.Second}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Claim with a cancelled context returned %v; want context.Canceled", err)
	}
}

func testConcurrentClaimers(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	const total = 1000
	publish(t, b, envelopes("conc", testQueue, total)...)
	ctx := testContext(t)
	var mu sync.Mutex
	seen := map[string]int{}
	concurrently(t, 4, func(w int) error {
		for {
			ds, err := b.Claim(ctx, broker.ClaimParams{Queues: []string{testQueue}, Max: 7 + w, Lease: time.Minute})
			if err != nil || len(ds) == 0 {
				return err
			}
			mu.Lock()
			for _, d := range ds {
				seen[d.Envelope.ID]++
			}
			mu.Unlock()
			if err := b.Ack(ctx, ds); err != nil {
				return err
			}
		}
	})
	if len(seen) != total {
		t.Fatalf("claimed %d distinct tasks, want %d", len(seen), total)
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("task %s was claimed %d times", id, n)
		}
	}
}

func testValidation(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	ctx := testContext(t)
	bad := []broker.Envelope{
		{Name: "x", Queue: testQueue},
		{ID: "no-name", Queue: testQueue},
		{ID: "no-queue", Name: "x"},
		{ID: "brace", Name: "x", Queue: "a{b}"},
		{ID: "args", Name: "x", Queue: testQueue, Args: []byte("{not json")},
	}
	for _, e := range bad {
		if err := b.Publish(ctx, e); err == nil {
			t.Fatalf("Publish(%+v) accepted an invalid envelope", e)
		}
	}
	// A batch with one bad envelope publishes nothing.
	batch := append(envelopes("val", testQueue, 3), bad[0])
	if err := b.PublishBatch(ctx, batch); err == nil {
		t.Fatal("PublishBatch accepted a batch with an invalid envelope")
	}
	wantPending(t, b, testQueue, 0, "after a rejected batch")
	noErr(t, b.PublishBatch(ctx, nil), "PublishBatch(nil)")
	for _, p := range []broker.ClaimParams{
		{Queues: []string{testQueue}, Max: 0, Lease: time.Minute},
		{Queues: []string{testQueue}, Max: 1, Lease: 0},
		{Queues: nil, Max: 1, Lease: time.Minute},
		{Queues: []string{""}, Max: 1, Lease: time.Minute},
	} {
		if _, err := b.Claim(ctx, p); err == nil {
			t.Fatalf("Claim(%+v) accepted invalid params", p)
		}
	}
	publish(t, b, envelope("v", testQueue))
	ds := claim(t, b, params(1, time.Minute))
	wantErrors(t, "(invalid)", nil, map[string]func() error{
		"ExtendLease(zero duration)":  func() error { return b.ExtendLease(ctx, ds, 0) },
		"Nack(unknown action)":        func() error { return b.Nack(ctx, []broker.Nack{{Delivery: ds[0], Action: 0}}) },
		"Nack(Retry, empty envelope)": func() error { return b.Nack(ctx, []broker.Nack{{Delivery: ds[0], Action: broker.Retry}}) },
	})
	// The rejected nacks left the lease alone.
	noErr(t, b.ExtendLease(ctx, ds, time.Minute), "ExtendLease after rejected nacks")
	ack(t, b, ds...)
}

func testClosed(t *testing.T, newEngine NewEngine) {
	e := newEngine(t, Options{})
	ctx := testContext(t)
	for _, c := range []interface{ Close() error }{e.Broker, e.Results, e.Registry} {
		if c == nil {
			continue
		}
		noErr(t, c.Close(), "Close")
		noErr(t, c.Close(), "second Close")
	}
	b := e.Broker
	if b == nil {
		return
	}
	d := broker.Delivery{Envelope: envelope("x", testQueue), Token: "t"}
	wantErrors(t, "after Close", broker.ErrClosed, map[string]func() error{
		"Publish":      func() error { return b.Publish(ctx, envelope("x", testQueue)) },
		"PublishBatch": func() error { return b.PublishBatch(ctx, envelopes("x", testQueue, 2)) },
		"Claim":        func() error { _, err := b.Claim(ctx, params(1, time.Minute)); return err },
		"Claim(Wait)": func() error {
			_, err := b.Claim(ctx, broker.ClaimParams{Queues: []string{testQueue}, Max: 1, Lease: time.Minute, Wait: time.Second})
			return err
		},
		"Ack":          func() error { return b.Ack(ctx, []broker.Delivery{d}) },
		"Nack":         func() error { return b.Nack(ctx, []broker.Nack{{Delivery: d, Action: broker.Requeue}}) },
		"ExtendLease":  func() error { return b.ExtendLease(ctx, []broker.Delivery{d}, time.Minute) },
		"PendingCount": func() error { _, err := b.PendingCount(ctx, testQueue); return err },
		"DeadLetters":  func() error { _, err := b.DeadLetters(ctx, testQueue, 10); return err },
	})
}

func testCloseWakesWaiter(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	ctx := testContext(t)
	done := make(chan error, 1)
	go func() {
		_, err := b.Claim(ctx, broker.ClaimParams{Queues: []string{testQueue}, Max: 1, Lease: time.Minute, Wait: 30 * time.Second})
		done <- err
	}()
	// As in ClaimWaitWakesOnPublish, the timer shapes the scenario only.
	timer := time.AfterFunc(100*time.Millisecond, func() { _ = b.Close() })
	defer timer.Stop()
	select {
	case err := <-done:
		if !errors.Is(err, broker.ErrClosed) {
			t.Fatalf("waiting Claim returned %v on Close, want broker.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not wake a waiting Claim")
	}
}

// testPeerWakesWaitingClaim: two engines on one store and namespace (two
// worker processes) share queues and leases, and a publish through one
// wakes a claim waiting in the other promptly.
func testPeerWakesWaitingClaim(t *testing.T, newEngine NewEngine) {
	a := newEngine(t, Options{})
	if a.Peer == nil {
		t.Skip("engine has no Peer hook (its state lives in its process)")
	}
	b := a.Peer(t)
	ctx := testContext(t)
	done := claimAsync(ctx, b.Broker, broker.ClaimParams{Queues: []string{testQueue}, Max: 10, Lease: time.Minute, Wait: 20 * time.Second})
	if b.WakeReady != nil {
		waitFor(t, 10*time.Second, func() bool { return b.WakeReady(testQueue) }, "the waiting claim never subscribed to wake-ups")
	} else {
		// Shapes the scenario (publish while b waits); the assertions
		// hold if the publish lands first.
		pause(t, 100*time.Millisecond)
	}
	publish(t, a.Broker, envelope("x", testQueue))
	published := time.Now() // the wake-up, not the publish's write, is timed
	c := <-done
	noErr(t, c.err, "claim in the peer")
	wantIDs(t, "claimed in the peer", deliveryIDs(c.ds), []string{"x"})
	lag := c.at.Sub(published)
	t.Logf("wake-up across engines: %v", lag)
	if lag > 2*time.Second {
		t.Fatalf("wake-up across engines took %v", lag)
	}
	// a acks b's delivery: the lease is shared state.
	ack(t, a.Broker, c.ds...)
	if lost, ok := broker.LeasesLost(b.Broker.ExtendLease(ctx, c.ds, time.Minute)); !ok || len(lost) != 1 {
		t.Fatalf("ExtendLease in the peer after an ack = lost %v (%v); want x lost", lost, ok)
	}
	wantPending(t, b.Broker, testQueue, 0, "in the peer after the ack")
}

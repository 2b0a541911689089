package conformance

import (
	"fmt"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/internal/testutil"
)

// runControl checks the control transport: a broadcast reaches every
// worker of its namespace and no other, a send reaches its worker only,
// replies reach their listener, and a closed subscription ends.
func runControl(t *testing.T, newEngine NewEngine) {
	runAll(t, newEngine, []subtest{
		{"BroadcastFansOutToEveryWorker", testBroadcastFansOut},
		{"SendReachesOnlyItsWorker", testSendReachesOnlyItsWorker},
		{"RepliesReachTheListener", testRepliesReachTheListener},
		{"ClosedSubscriptionEndsItsChannel", testClosedSubscriptionEnds},
		{"SubscriptionEndsWithEngine", testSubscriptionEndsWithEngine},
	})
}

// controlOf returns the engine's control transport and a control namespace
// of its own, or skips the test.
func controlOf(t *testing.T, newEngine NewEngine) (broker.ControlTransport, string) {
	t.Helper()
	e := newEngine(t, Options{})
	if e.Control == nil {
		t.Skip("engine has no control transport")
	}
	return e.Control, uniqueName("ct")
}

// subscribe subscribes worker id of namespace ns, closed at cleanup.
func subscribe(t *testing.T, c broker.ControlTransport, ns, id string) broker.Subscription {
	t.Helper()
	s, err := c.SubscribeWorker(testContext(t), ns, id)
	if err != nil {
		t.Fatalf("SubscribeWorker(%s, %s): %v", ns, id, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// recv returns the next message of s, failing after 5 s.
func recv(t *testing.T, s broker.Subscription) string {
	t.Helper()
	select {
	case b := <-s.C():
		return string(b)
	case <-time.After(5 * time.Second):
		t.Fatal("no message within 5s")
	}
	return ""
}

// silent checks that s receives nothing: the messages that should reach
// other subscriptions were already received, so a stray copy would be
// queued by now; the short wait only gives it a chance to show.
func silent(t *testing.T, s broker.Subscription) {
	t.Helper()
	select {
	case b := <-s.C():
		t.Fatalf("unexpected message %q", b)
	case <-time.After(50 * time.Millisecond):
	}
}

func testBroadcastFansOut(t *testing.T, newEngine NewEngine) {
	c, n := controlOf(t, newEngine)
	ctx := testContext(t)
	var subs []broker.Subscription
	for i := range 3 {
		subs = append(subs, subscribe(t, c, n, fmt.Sprintf("w%d@h", i)))
	}
	other := subscribe(t, c, n+"x", "w0@h")
	got, err := c.Broadcast(ctx, n, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if got != 3 && got != -1 {
		t.Fatalf("Broadcast reached %d receivers, want 3", got)
	}
	for _, s := range subs {
		if m := recv(t, s); m != "hello" {
			t.Fatalf("got %q", m)
		}
	}
	silent(t, other)
}

func testSendReachesOnlyItsWorker(t *testing.T, newEngine NewEngine) {
	c, n := controlOf(t, newEngine)
	ctx := testContext(t)
	a := subscribe(t, c, n, "a@h")
	b := subscribe(t, c, n, "b@h")
	got, err := c.Send(ctx, n, "b@h", []byte("to-b"))
	if err != nil || (got != 1 && got != -1) {
		t.Fatalf("Send: %d %v", got, err)
	}
	if m := recv(t, b); m != "to-b" {
		t.Fatalf("got %q", m)
	}
	silent(t, a)
	if got, _ := c.Send(ctx, n, "ghost@h", []byte("x")); got != 0 && got != -1 {
		t.Fatalf("Send to nobody reached %d", got)
	}
}

func testRepliesReachTheListener(t *testing.T, newEngine NewEngine) {
	c, n := controlOf(t, newEngine)
	ctx := testContext(t)
	l, err := c.ListenReplies(ctx, n, "req1")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Reply(ctx, n, "req1", []byte("pong")); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, l); m != "pong" {
		t.Fatalf("got %q", m)
	}
	_ = l.Close()
	_ = l.Close() // twice is safe
	// A server may notice the closed subscription a moment later (Redis
	// drops a subscriber when it reads the connection's EOF): from then on
	// a reply with no listener is reported.
	testutil.Eventually(t, 5*time.Second, func() bool {
		return c.Reply(ctx, n, "req1", []byte("late")) != nil
	}, "a reply with no listener keeps reporting success")
}

func testClosedSubscriptionEnds(t *testing.T, newEngine NewEngine) {
	c, n := controlOf(t, newEngine)
	s := subscribe(t, c, n, "a@h")
	_ = s.Close()
	select {
	case _, ok := <-s.C():
		if ok {
			t.Fatal("message after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed after Close")
	}
}

// testSubscriptionEndsWithEngine: closing the engine (its Broker's Close,
// which closes every role of the engine) ends its subscriptions' channels,
// closing them afterwards is safe, and the transport refuses to send.
func testSubscriptionEndsWithEngine(t *testing.T, newEngine NewEngine) {
	e := newEngine(t, Options{})
	if e.Control == nil {
		t.Skip("engine has no control transport")
	}
	if !e.CloseEndsSubscriptions {
		t.Skip("the engine's Close does not end its subscriptions (CloseEndsSubscriptions is false); they end with their own Close")
	}
	if e.Broker == nil {
		t.Skip("engine has no Broker whose Close closes the engine")
	}
	n := uniqueName("ct")
	s := subscribe(t, e.Control, n, "w@h")
	_ = e.Broker.Close()
	select {
	case _, ok := <-s.C():
		if ok {
			t.Fatal("message after the engine closed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the subscription's channel stayed open after the engine closed")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close after the engine closed: %v", err)
	}
	if _, err := e.Control.Broadcast(testContext(t), n, []byte("x")); err == nil {
		t.Fatal("Broadcast on a closed engine succeeded")
	}
}

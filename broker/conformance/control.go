package conformance

import (
	"fmt"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/internal/testutil"
)

// controlTests check the control transport: a broadcast reaches every
// worker of its namespace and no other, a send reaches its worker only,
// replies reach their listener, and a closed subscription ends.
var controlTests = []subtest{
	{"BroadcastFansOutToEveryWorker", testBroadcastFansOut},
	{"SendReachesOnlyItsWorker", testSendReachesOnlyItsWorker},
	{"RepliesReachTheListener", testRepliesReachTheListener},
	{"ClosedSubscriptionEndsItsChannel", testClosedSubscriptionEnds},
	{"SubscriptionEndsWithEngine", testSubscriptionEndsWithEngine},
}

// controlOf returns the engine's control transport and a control namespace
// of its own, or skips the test.
func controlOf(t *testing.T, newEngine NewEngine) (broker.ControlTransport, string) {
	return must(t, newEngine(t, Options{}).Control, "control transport"), uniqueName("ct")
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

// recv checks that the next message of s, within 5 s, is want.
func recv(t *testing.T, s broker.Subscription, want string) {
	t.Helper()
	select {
	case b := <-s.C():
		if string(b) != want {
			t.Fatalf("got %q, want %q", b, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no message within 5s")
	}
}

// ends checks that the channel of s closes within 5 s with no message; after
// names what closed it.
func ends(t *testing.T, s broker.Subscription, after string) {
	t.Helper()
	select {
	case _, ok := <-s.C():
		if ok {
			t.Fatalf("message after %s", after)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the subscription's channel stayed open after %s", after)
	}
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
		recv(t, s, "hello")
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
	recv(t, b, "to-b")
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
	noErr(t, c.Reply(ctx, n, "req1", []byte("pong")), "Reply")
	recv(t, l, "pong")
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
	ends(t, s, "Close")
}

// testSubscriptionEndsWithEngine: closing the engine (its Broker's Close,
// which closes every role of the engine) ends its subscriptions' channels,
// closing them afterwards is safe, and the transport refuses to send.
func testSubscriptionEndsWithEngine(t *testing.T, newEngine NewEngine) {
	e := newEngine(t, Options{})
	must(t, e.Control, "control transport")
	if !e.CloseEndsSubscriptions {
		t.Skip("the engine's Close does not end its subscriptions (CloseEndsSubscriptions is false); they end with their own Close")
	}
	if e.Broker == nil {
		t.Skip("engine has no Broker whose Close closes the engine")
	}
	n := uniqueName("ct")
	s := subscribe(t, e.Control, n, "w@h")
	_ = e.Broker.Close()
	ends(t, s, "the engine closed")
	noErr(t, s.Close(), "Close after the engine closed")
	if _, err := e.Control.Broadcast(testContext(t), n, []byte("x")); err == nil {
		t.Fatal("Broadcast on a closed engine succeeded")
	}
}

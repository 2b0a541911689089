// Package controltest is the contract suite of control transports and
// pause stores: every engine that carries control messages runs it.
package controltest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/internal/testutil"
)

// Engine is what the suite tests.
type Engine interface {
	broker.ControlTransport
	broker.PauseStore
}

// Run runs the suite. newEngine returns a transport; each test uses its
// own namespace, so engines may be shared.
func Run(t *testing.T, newEngine func(t *testing.T) Engine) {
	ns := func(t *testing.T) string { return fmt.Sprintf("ct%d", time.Now().UnixNano()) }
	recv := func(t *testing.T, s broker.Subscription) string {
		t.Helper()
		select {
		case b := <-s.C():
			return string(b)
		case <-time.After(5 * time.Second):
			t.Fatal("no message within 5s")
		}
		return ""
	}
	silent := func(t *testing.T, s broker.Subscription) {
		t.Helper()
		select {
		case b := <-s.C():
			t.Fatalf("unexpected message %q", b)
		case <-time.After(50 * time.Millisecond):
		}
	}
	ctx := context.Background()

	t.Run("BroadcastFansOutToEveryWorker", func(t *testing.T) {
		t.Parallel()
		e, n := newEngine(t), ns(t)
		var subs []broker.Subscription
		for i := 0; i < 3; i++ {
			s, err := e.SubscribeWorker(ctx, n, fmt.Sprintf("w%d@h", i))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			subs = append(subs, s)
		}
		other, err := e.SubscribeWorker(ctx, n+"x", "w0@h")
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		got, err := e.Broadcast(ctx, n, []byte("hello"))
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
	})

	t.Run("SendReachesOnlyItsWorker", func(t *testing.T) {
		t.Parallel()
		e, n := newEngine(t), ns(t)
		a, _ := e.SubscribeWorker(ctx, n, "a@h")
		b, _ := e.SubscribeWorker(ctx, n, "b@h")
		defer a.Close()
		defer b.Close()
		got, err := e.Send(ctx, n, "b@h", []byte("to-b"))
		if err != nil || (got != 1 && got != -1) {
			t.Fatalf("Send: %d %v", got, err)
		}
		if m := recv(t, b); m != "to-b" {
			t.Fatalf("got %q", m)
		}
		silent(t, a)
		if got, _ := e.Send(ctx, n, "ghost@h", []byte("x")); got != 0 && got != -1 {
			t.Fatalf("Send to nobody reached %d", got)
		}
	})

	t.Run("RepliesReachTheListener", func(t *testing.T) {
		t.Parallel()
		e, n := newEngine(t), ns(t)
		l, err := e.ListenReplies(ctx, n, "req1")
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Reply(ctx, n, "req1", []byte("pong")); err != nil {
			t.Fatal(err)
		}
		if m := recv(t, l); m != "pong" {
			t.Fatalf("got %q", m)
		}
		l.Close()
		l.Close() // twice is safe
		// A server may notice the closed subscription a moment later
		// (Redis drops a subscriber when it reads the connection's EOF):
		// from then on a reply with no listener is reported.
		testutil.Eventually(t, 5*time.Second, func() bool {
			return e.Reply(ctx, n, "req1", []byte("late")) != nil
		}, "a reply with no listener keeps reporting success")
	})

	t.Run("ClosedSubscriptionEndsItsChannel", func(t *testing.T) {
		t.Parallel()
		e, n := newEngine(t), ns(t)
		s, _ := e.SubscribeWorker(ctx, n, "a@h")
		s.Close()
		select {
		case _, ok := <-s.C():
			if ok {
				t.Fatal("message after Close")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("channel not closed after Close")
		}
	})

	queues := func(ps []broker.Pause) string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Worker+"/"+p.Queue)
		}
		return fmt.Sprint(out)
	}
	pauses := func(t *testing.T, e Engine, n string) []broker.Pause {
		t.Helper()
		ps, err := e.Pauses(ctx, n)
		if err != nil {
			t.Fatalf("Pauses(%s): %v", n, err)
		}
		return ps
	}

	t.Run("PausedQueuesPerNamespace", func(t *testing.T) {
		t.Parallel()
		e, n := newEngine(t), ns(t)
		if err := e.Pause(ctx, []broker.Pause{{Namespace: n, Queue: "b"}, {Namespace: n, Queue: "a"}}); err != nil {
			t.Fatal(err)
		}
		if err := e.Pause(ctx, []broker.Pause{{Namespace: n + "x", Queue: "z"}}); err != nil {
			t.Fatal(err)
		}
		if got := queues(pauses(t, e, n)); got != "[/a /b]" {
			t.Fatalf("Pauses = %v", got)
		}
		if err := e.Resume(ctx, n, "", []string{"a"}); err != nil {
			t.Fatal(err)
		}
		if got := queues(pauses(t, e, n)); got != "[/b]" {
			t.Fatalf("after resume: %v", got)
		}
		e.Resume(ctx, n, "", []string{"b"})
		e.Resume(ctx, n+"x", "", []string{"z"})
		if got := pauses(t, e, n); len(got) != 0 {
			t.Fatalf("after resuming all: %v", queues(got))
		}
	})

	// A pause scoped to one worker is stored under that scope: resuming
	// the namespace-wide pause of the queue leaves it, and resuming it
	// leaves the others.
	t.Run("PausesPerWorkerScope", func(t *testing.T) {
		t.Parallel()
		e, n := newEngine(t), ns(t)
		at := time.Date(2025, 11, 23, 10, 30, 15, 123456000, time.UTC)
		alpha := broker.Pause{Namespace: n, Queue: "q", Worker: "alpha@h", PausedAt: at, RequestedBy: "ops", Sig: "abc123"}
		if err := e.Pause(ctx, []broker.Pause{alpha, {Namespace: n, Queue: "q", Worker: "gamma"}, {Namespace: n, Queue: "q", PausedAt: at}}); err != nil {
			t.Fatal(err)
		}
		got := pauses(t, e, n)
		if queues(got) != "[/q alpha@h/q gamma/q]" {
			t.Fatalf("Pauses = %v", queues(got))
		}
		if a := got[1]; !a.PausedAt.Equal(at) || a.RequestedBy != "ops" || a.Sig != "abc123" || a.Namespace != n {
			t.Fatalf("pause read back as %+v, want %+v", a, alpha)
		}
		if !got[1].AppliesTo("alpha@h", "alpha") || got[1].AppliesTo("beta@h", "beta") {
			t.Fatal("AppliesTo: a pause of alpha@h must apply to alpha@h only")
		}
		e.Resume(ctx, n, "", []string{"q"})
		if got := queues(pauses(t, e, n)); got != "[alpha@h/q gamma/q]" {
			t.Fatalf("after the namespace-wide resume: %v", got)
		}
		e.Resume(ctx, n, "alpha@h", []string{"q"})
		if got := queues(pauses(t, e, n)); got != "[gamma/q]" {
			t.Fatalf("after resuming alpha@h: %v", got)
		}
		// Pausing again replaces the record (one per scope and queue).
		again := broker.Pause{Namespace: n, Queue: "q", Worker: "gamma", RequestedBy: "second"}
		e.Pause(ctx, []broker.Pause{again})
		if got := pauses(t, e, n); len(got) != 1 || got[0].RequestedBy != "second" {
			t.Fatalf("after pausing twice: %+v", got)
		}
		e.Resume(ctx, n, "gamma", []string{"q"})
	})

	t.Run("PauseRefusesBadRecords", func(t *testing.T) {
		t.Parallel()
		e, n := newEngine(t), ns(t)
		if err := e.Pause(ctx, []broker.Pause{{Namespace: n, Queue: "ok"}, {Namespace: n, Queue: ""}}); err == nil {
			t.Fatal("a pause without a queue was stored")
		}
		if got := pauses(t, e, n); len(got) != 0 {
			t.Fatalf("a refused call stored %v", queues(got))
		}
	})
}

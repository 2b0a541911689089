// Package controltest is the contract suite of control transports and
// pause stores: every engine that carries control messages runs it.
package controltest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stemhq/stem/control"
)

// Engine is what the suite tests.
type Engine interface {
	control.Transport
	control.PauseStore
}

// Run runs the suite. newEngine returns a transport; each test uses its
// own namespace, so engines may be shared.
func Run(t *testing.T, newEngine func(t *testing.T) Engine) {
	ns := func(t *testing.T) string { return fmt.Sprintf("ct%d", time.Now().UnixNano()) }
	recv := func(t *testing.T, s control.Subscription) string {
		t.Helper()
		select {
		case b := <-s.C():
			return string(b)
		case <-time.After(5 * time.Second):
			t.Fatal("no message within 5s")
		}
		return ""
	}
	silent := func(t *testing.T, s control.Subscription) {
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
		var subs []control.Subscription
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
		if err := e.Reply(ctx, n, "req1", []byte("late")); err == nil {
			t.Fatal("a reply with no listener reported success")
		}
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

	t.Run("PausedQueuesPerNamespace", func(t *testing.T) {
		t.Parallel()
		e, n := newEngine(t), ns(t)
		if err := e.SetPaused(ctx, n, []string{"b", "a"}, true); err != nil {
			t.Fatal(err)
		}
		if err := e.SetPaused(ctx, n+"x", []string{"z"}, true); err != nil {
			t.Fatal(err)
		}
		got, err := e.Paused(ctx, n)
		if err != nil || fmt.Sprint(got) != "[a b]" {
			t.Fatalf("Paused = %v %v", got, err)
		}
		e.SetPaused(ctx, n, []string{"a"}, false)
		got, _ = e.Paused(ctx, n)
		if fmt.Sprint(got) != "[b]" {
			t.Fatalf("after resume: %v", got)
		}
		e.SetPaused(ctx, n, []string{"b"}, false)
		e.SetPaused(ctx, n+"x", []string{"z"}, false)
	})
}

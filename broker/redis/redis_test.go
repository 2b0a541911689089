package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/conformance"
)

// runID is shared by every namespace of this test run, so one sweep at the
// end deletes all their keys (a SCAN per test would walk the whole shared
// keyspace each time).
var runID = func() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}()

var namespaceSeq atomic.Int64

func TestMain(m *testing.M) {
	code := m.Run()
	if raw := os.Getenv(testURLEnv); raw != "" {
		if err := sweepRun(raw); err != nil {
			fmt.Fprintf(os.Stderr, "cleanup of test keys: %v\n", err)
			code = 1
		}
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// sweepRun deletes every key of this run's namespaces.
func sweepRun(raw string) error {
	ro, err := goredis.ParseURL(raw)
	if err != nil {
		return err
	}
	c := goredis.NewClient(ro)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	iter := c.Scan(ctx, 0, "*stemtest-"+runID+"-*", 10000).Iterator()
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := c.Unlink(ctx, batch...).Err()
		batch = batch[:0]
		return err
	}
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 1000 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	return flush()
}

// testURLEnv selects the Redis server of the integration tests.
const testURLEnv = "STEM_TEST_REDIS_URL"

// testClient connects to the server named by STEM_TEST_REDIS_URL, or skips
// (fails under CI) when it is unset. The client is closed at cleanup.
func testClient(tb testing.TB) *goredis.Client {
	tb.Helper()
	raw := conformance.RequireEnv(tb, testURLEnv)
	ro, err := goredis.ParseURL(raw)
	if err != nil {
		tb.Fatalf("%s: %v", testURLEnv, err)
	}
	c := goredis.NewClient(ro)
	tb.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		tb.Fatalf("%s=%s is set but the server does not answer: %v", testURLEnv, stem.RedactURL(raw), err)
	}
	return c
}

// randomNamespace returns a namespace no other test or test run uses.
func randomNamespace() string {
	return fmt.Sprintf("stemtest-%s-%d", runID, namespaceSeq.Add(1))
}

// newTestEngine returns an Engine on the test server under a fresh
// namespace, closed at cleanup. TestMain deletes the run's keys at the end.
func newTestEngine(tb testing.TB, client *goredis.Client, opts Options) *Engine {
	tb.Helper()
	if opts.Namespace == "" {
		opts.Namespace = randomNamespace()
	}
	e, err := New(client, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = e.Close() })
	return e
}

// TestConformance runs the contract suite, every engine under a namespace
// of its own. Redis expires result keys itself, so there is no sweep to
// test.
func TestConformance(t *testing.T) {
	client := testClient(t)
	var engine func(t *testing.T, c *goredis.Client, o Options) conformance.Engine
	engine = func(t *testing.T, c *goredis.Client, o Options) conformance.Engine {
		e := newTestEngine(t, c, o)
		return conformance.Engine{
			Broker: e, Results: e, Registry: e, Control: e, Pauses: e, Revokes: e.Revokes(),
			CloseEndsSubscriptions: true,
			PublishCorrupt: func(ctx context.Context, queue string) error {
				return c.RPush(ctx, e.keys.ready(queue), "not json").Err()
			},
			// A peer has a client (connections) of its own, as another
			// process would.
			Peer: func(t *testing.T) conformance.Engine {
				return engine(t, testClient(t), Options{Namespace: e.Namespace()})
			},
			// A waiting claim wakes on a message of its queue's wake
			// channel once subscribed (before, it polls).
			WakeReady: func(queue string) bool { return e.wake.subscribedTo(e.keys.wake(queue)) },
		}
	}
	conformance.Exercise(t, conformance.WithOptions(func(t *testing.T, opts conformance.Options) conformance.Engine {
		return engine(t, client, Options{ResultTTL: opts.ResultTTL, DeadLetterCap: opts.DeadLetterCap})
	}))
}

func TestOpen(t *testing.T) {
	raw := conformance.RequireEnv(t, testURLEnv)
	ctx := t.Context()
	ns := randomNamespace()
	e, err := Open(ctx, raw, Options{Namespace: ns})
	if err != nil {
		t.Fatalf("Open(%s): %v", stem.RedactURL(raw), err)
	}
	if err := e.Publish(ctx, broker.Envelope{ID: "a", Name: "n", Queue: "q"}); err != nil {
		t.Fatal(err)
	}
	if n, err := e.PendingCount(ctx, "q"); err != nil || n != 1 {
		t.Fatalf("PendingCount = %d, %v", n, err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	// Port 1 on loopback refuses connections.
	_, err := Open(ctx, "redis://user:s3cret@127.0.0.1:1/0", Options{})
	if !errors.Is(err, stem.ErrUnavailable) {
		t.Fatalf("Open of a closed port returned %v, want stem.ErrUnavailable", err)
	}
	if strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("error does not name the redacted URL: %v", err)
	}
	for _, bad := range []string{"http://127.0.0.1:6379", "redis://u:s3cret@127.0.0.1:6379/notadb", "redis://u:s3cret%zz@host/0"} {
		_, err := Open(ctx, bad, Options{})
		if err == nil || errors.Is(err, stem.ErrUnavailable) {
			t.Fatalf("Open(%q) = %v, want a URL error", bad, err)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Fatalf("error shows the password: %v", err)
		}
	}
	for _, ns := range []string{"a b", "a{b", "a:b", "a*"} {
		if _, err := Open(ctx, "redis://127.0.0.1:1", Options{Namespace: ns}); err == nil || errors.Is(err, stem.ErrUnavailable) {
			t.Fatalf("Open with namespace %q = %v, want an option error", ns, err)
		}
	}
}

// TestUnavailable checks that calls against a dead server fail with
// stem.ErrUnavailable rather than hanging or dropping anything.
func TestUnavailable(t *testing.T) {
	t.Parallel()
	client := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: time.Second})
	defer client.Close()
	e, err := New(client, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := t.Context()
	d := broker.Delivery{Envelope: broker.Envelope{ID: "a", Name: "n", Queue: "q"}, Token: "x|{}"}
	calls := map[string]func() error{
		"Publish": func() error { return e.Publish(ctx, d.Envelope) },
		"Claim": func() error {
			_, err := e.Claim(ctx, broker.ClaimParams{Queues: []string{"q"}, Max: 1, Lease: time.Minute})
			return err
		},
		"Claim(Wait)": func() error {
			_, err := e.Claim(ctx, broker.ClaimParams{Queues: []string{"q"}, Max: 1, Lease: time.Minute, Wait: 300 * time.Millisecond})
			return err
		},
		"Ack":         func() error { return e.Ack(ctx, []broker.Delivery{d}) },
		"Nack":        func() error { return e.Nack(ctx, []broker.Nack{{Delivery: d, Action: broker.Requeue}}) },
		"ExtendLease": func() error { return e.ExtendLease(ctx, []broker.Delivery{d}, time.Minute) },
		"Get": func() error {
			_, err := e.Get(ctx, "a")
			return err
		},
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, stem.ErrUnavailable) {
			t.Errorf("%s against a dead server returned %v, want stem.ErrUnavailable", name, err)
		}
	}
}

// pollPause paces a poll loop that has its own deadline.
func pollPause(t *testing.T) {
	timer := time.NewTimer(10 * time.Millisecond)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-t.Context().Done():
	}
}

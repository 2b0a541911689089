// Package conformance is the one contract suite every stem engine runs,
// through one entry point, Exercise. An engine provides some of these
// roles, and each role has its area of the suite, one file each: broker.go
// (broker.Broker), results.go (result.Backend and registry.Registry),
// durability.go (broker.DurabilityReporter), control.go
// (broker.ControlTransport), pauses.go (broker.PauseStore) and revoke.go
// (revoke.Store); each file's test list says what its area checks.
//
// A nil role skips its area, and a missing hook skips the tests that need
// it, each with a t.Skip naming why. An engine runs the suite once from its
// own _test.go:
//
//	func TestConformance(t *testing.T) {
//		conformance.Exercise(t, conformance.WithOptions(func(t *testing.T, opts conformance.Options) conformance.Engine {
//			e := memory.New(memory.Options{ResultTTL: opts.ResultTTL, DeadLetterCap: opts.DeadLetterCap})
//			t.Cleanup(func() { _ = e.Close() })
//			return conformance.Engine{Broker: e, Results: e, Registry: e, Control: e, Pauses: e}
//		}))
//	}
//
// A revoke store that is not (yet) part of an engine runs its area alone
// with RevokeStore.
//
// Every test asks for a fresh engine (for a networked engine, a fresh
// namespace), so tests run in parallel. Tests never sleep to synchronise:
// they wait on Claim's own Wait, on channels, or poll with a deadline.
// Goroutine leaks are checked by the implementation's TestMain (goleak),
// because parallel tests share one process.
package conformance

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/internal/testutil"
	"github.com/stemhq/stem/registry"
	"github.com/stemhq/stem/result"
)

// Engine holds the roles an implementation under test provides, and the
// hooks some tests need to reach behind the interfaces. A nil role skips
// its area of the suite; a nil hook skips the tests that need it.
type Engine struct {
	Broker   broker.Broker
	Results  result.Backend
	Registry registry.Registry
	Control  broker.ControlTransport
	Pauses   broker.PauseStore
	Revokes  revoke.Store

	// Configure builds another fresh engine of the same kind, honouring
	// opts (a short result TTL, a dead-letter cap). WithOptions sets it.
	// Nil skips the tests that need options.
	Configure NewEngine
	// NoResultTTL is set by engines that cannot honour Options.ResultTTL at
	// the suite's short time scale; it skips the result TTL tests.
	NoResultTTL bool
	// PublishCorrupt stores, on queue, a ready task whose payload is not an
	// envelope (as a bug, a foreign writer or a torn write would leave
	// it). Nil skips the test of undecodable payloads (an engine that
	// stores envelopes as values cannot hold one).
	PublishCorrupt func(ctx context.Context, queue string) error
	// StoredResults counts the stored rows of task id in the result
	// backend, expired or not; SweepDue makes the next Set sweep expired
	// rows now. Together they test that expired results are deleted, not
	// only hidden; nil skips that test (an engine whose store expires keys
	// itself has nothing to sweep).
	StoredResults func(ctx context.Context, id string) (int, error)
	SweepDue      func()
	// CloseEndsSubscriptions is set by engines whose Close ends their
	// control subscriptions (broker.Subscription does not promise it: an
	// engine may leave them to their own Close); it runs the test that
	// they do.
	CloseEndsSubscriptions bool
	// Peer opens another engine on the same store and namespace as this
	// one, as a second worker process would, closed at cleanup. Nil skips
	// the test of engines sharing a store (an engine whose state lives in
	// its process has no peer).
	Peer func(t *testing.T) Engine
	// WakeReady reports whether a claim waiting on queue in this engine
	// is subscribed to the wake-ups a publish through a peer sends, so the
	// test can publish after it is and so test the wake-up rather than a
	// poll. Nil: the engine has no such state to observe, and the test
	// pauses briefly before publishing (its assertions hold either way).
	WakeReady func(queue string) bool
}

// Options are what a test asks of a new engine.
type Options struct {
	// ResultTTL, when > 0, is the TTL the result backend must give the
	// states it stores. Zero means the engine's default.
	ResultTTL time.Duration
	// DeadLetterCap, when > 0, is the most dead letters a queue keeps.
	// Zero means the engine's default.
	DeadLetterCap int
}

// NewEngine builds a fresh, empty engine for one test, honouring opts. It
// must register its own cleanup (t.Cleanup) that closes the engine and
// removes any data it left behind; Close must be safe to call more than
// once.
type NewEngine func(t *testing.T, opts Options) Engine

// WithOptions turns an engine builder that honours Options into the
// argument of Exercise: engines built with the default options carry
// build as their Configure hook.
func WithOptions(build NewEngine) func(t *testing.T) Engine {
	return func(t *testing.T) Engine {
		e := build(t, Options{})
		if e.Configure == nil {
			e.Configure = build
		}
		return e
	}
}

// Exercise runs the whole contract suite against engines built by
// newEngine, which returns a fresh, empty engine for one test (see
// NewEngine for its cleanup). Areas whose role the engine lacks are
// skipped, each naming the missing role.
func Exercise(t *testing.T, newEngine func(t *testing.T) Engine) {
	// One engine is built up front to learn which roles and hooks the
	// kind provides, so an area without its role skips at once.
	probe := newEngine(t)
	build := func(t *testing.T, opts Options) Engine {
		if opts == (Options{}) {
			return newEngine(t)
		}
		if probe.Configure == nil {
			t.Skipf("the engine has no Configure hook to build one with %+v", opts)
		}
		return probe.Configure(t, opts)
	}
	area := func(name, field, role string, present bool, run func(t *testing.T)) {
		t.Run(name, func(t *testing.T) {
			if !present {
				t.Skipf("the engine provides no %s (Engine.%s is nil)", role, field)
			}
			run(t)
		})
	}
	tests := func(ts []subtest) func(t *testing.T) {
		return func(t *testing.T) { runEach(t, func(*testing.T) NewEngine { return build }, ts) }
	}
	area("Broker", "Broker", "broker.Broker", probe.Broker != nil, tests(brokerTests))
	area("Results", "Results", "result.Backend", probe.Results != nil, tests(resultTests))
	area("Registry", "Registry", "registry.Registry", probe.Registry != nil, tests(registryTests))
	area("Durability", "Broker", "broker.Broker", probe.Broker != nil, func(t *testing.T) { runDurability(t, build) })
	area("Control", "Control", "broker.ControlTransport", probe.Control != nil, tests(controlTests))
	area("Pauses", "Pauses", "broker.PauseStore", probe.Pauses != nil, tests(pauseTests))
	area("Revokes", "Revokes", "revoke.Store", probe.Revokes != nil, func(t *testing.T) {
		RevokeStore(t, func(t *testing.T) revoke.Store { return build(t, Options{}).Revokes })
	})
}

// RequireEnv returns the value of the environment variable name, which
// selects an integration test's external service (STEM_TEST_REDIS_URL,
// STEM_TEST_POSTGRES_URL). When it is unset the test is skipped, except
// when the environment variable CI is set: then a missing service is a
// failure, so a CI run can never pass by skipping the integration tests.
// It is testutil.EnvOrSkip, exported for engines outside this module.
func RequireEnv(tb testing.TB, name string) string {
	tb.Helper()
	return testutil.EnvOrSkip(tb, name)
}

// testContext returns a context bounded well above any single test's needs,
// so a hung engine fails the test instead of the whole run.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// named is one named test of the suite, run on a fixture of type T.
type named[T any] struct {
	name string
	fn   func(t *testing.T, x T)
}

// subtest is one named test of an engine's area; it builds its own engines.
type subtest = named[NewEngine]

// runEach runs tests in parallel subtests, each on its own fixture from fresh.
func runEach[T any](t *testing.T, fresh func(t *testing.T) T, tests []named[T]) {
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, fresh(t))
		})
	}
}

// must returns role v, or skips the test when the engine lacks it (v is nil).
func must[T comparable](t *testing.T, v T, role string) T {
	t.Helper()
	var none T
	if v == none {
		t.Skipf("engine has no %s", role)
	}
	return v
}

// concurrently runs fn(0) to fn(n-1) in goroutines and fails the test
// with every error they return.
func concurrently(t *testing.T, n int, fn func(w int) error) {
	t.Helper()
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for w := range n {
		wg.Go(func() { errs <- fn(w) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// noErr fails the test when err is not nil; what names the call.
func noErr(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// wantCount returns a check that a call returning a count and an error
// succeeded with count want.
func wantCount(t *testing.T, want int, what string) func(int, error) {
	return func(n int, err error) {
		t.Helper()
		if err != nil || n != want {
			t.Fatalf("%s = %d, %v; want %d", what, n, err, want)
		}
	}
}

// wantErrors checks that every call fails, with target (errors.Is) or, when
// target is nil, with any error.
func wantErrors(t *testing.T, when string, target error, calls map[string]func() error) {
	t.Helper()
	for name, call := range calls {
		if err := call(); err == nil || (target != nil && !errors.Is(err, target)) {
			t.Errorf("%s %s returned %v, want %v", name, when, err, cmp.Or(target, errors.New("an error")))
		}
	}
}

// idsOf maps xs to the ids id gives them, for checks and messages.
func idsOf[T any](xs []T, id func(T) string) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = id(x)
	}
	return out
}

// waitFor polls cond every 20 ms until it holds, failing the test with msg
// when within passes first.
func waitFor(t *testing.T, within time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	for deadline := time.Now().Add(within); !cond(); pause(t, 20*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf(msg, args...)
		}
	}
}

// pause waits d on a timer, between polls of a condition with a deadline.
// It is never used to order events, only to pace polling.
func pause(t *testing.T, d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-t.Context().Done():
	}
}

var nameSeq atomic.Int64

// uniqueName returns a name no other test uses, in this process or in
// another run against the same server.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s%d-%d", prefix, time.Now().UnixNano(), nameSeq.Add(1))
}

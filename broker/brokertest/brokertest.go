// Package brokertest is the contract suite every stem engine runs: the
// broker.Broker semantics (publish, claim with leases, ack, nack, lease
// extension, delayed delivery, dead letters, waiting claims, close), the
// result.Backend semantics (round trip, not found, Newer ordering, TTL) and
// the registry.Registry semantics (heartbeat, sorted list, TTL, remove)
// and broker.DurabilityReporter (the broker says whether it survives a
// crash).
//
// An implementation runs it from its own _test.go:
//
//	func TestContract(t *testing.T) {
//		brokertest.Run(t, func(t *testing.T, opts brokertest.Options) brokertest.Engine {
//			e := memory.New(memory.Options{ResultTTL: opts.ResultTTL})
//			t.Cleanup(func() { _ = e.Close() })
//			return brokertest.Engine{Broker: e, Results: e, Registry: e}
//		})
//	}
//
// Every test asks for a fresh engine (for a networked engine, a fresh
// namespace), so tests run in parallel. Tests never sleep to synchronise:
// they wait on Claim's own Wait, on channels, or poll with a deadline.
// Goroutine leaks are checked by the implementation's TestMain (goleak),
// because parallel tests share one process.
package brokertest

import (
	"context"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/internal/testutil"
	"github.com/stemhq/stem/registry"
	"github.com/stemhq/stem/result"
)

// Engine holds the roles an implementation under test provides. A nil role
// skips its part of the suite.
type Engine struct {
	// Broker is the task transport under test.
	Broker broker.Broker
	// Results is the result backend under test.
	Results result.Backend
	// Registry is the worker registry under test.
	Registry registry.Registry
	// NoResultTTL is set by engines that cannot honour Options.ResultTTL at
	// the suite's short time scale; it skips the result TTL test.
	NoResultTTL bool
}

// Options are what the suite asks of a new engine.
type Options struct {
	// ResultTTL, when > 0, is the TTL the result backend must give the
	// states it stores. Zero means the engine's default.
	ResultTTL time.Duration
}

// NewEngine builds a fresh, empty engine for one test. It must register
// its own cleanup (t.Cleanup) that closes the engine and removes any data
// it left behind; Close must be safe to call more than once.
type NewEngine func(t *testing.T, opts Options) Engine

// Run runs the whole contract suite against engines built by newEngine.
func Run(t *testing.T, newEngine NewEngine) {
	t.Run("Broker", func(t *testing.T) { runBroker(t, newEngine) })
	t.Run("Results", func(t *testing.T) { runResults(t, newEngine) })
	t.Run("Registry", func(t *testing.T) { runRegistry(t, newEngine) })
	t.Run("Durability", func(t *testing.T) { runDurability(t, newEngine) })
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

// subtest is one named test of the suite.
type subtest struct {
	name string
	fn   func(t *testing.T, newEngine NewEngine)
}

// runAll runs tests in parallel subtests.
func runAll(t *testing.T, newEngine NewEngine, tests []subtest) {
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newEngine)
		})
	}
}

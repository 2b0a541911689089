package benchkit

import (
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/memory"
)

// TestMain fails the run when a benchmark leaves a goroutine behind (the
// light-load scenario starts a worker).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newMemory(tb testing.TB) *memory.Engine {
	e := memory.New(memory.Options{ResultTTL: time.Minute})
	tb.Cleanup(func() { _ = e.Close() })
	return e
}

// TestBenchmarksRun runs each benchmark on the memory engine (for about a
// second, as testing.Benchmark does), so the benchmarks no engine test runs
// by default still work and stop everything they start.
func TestBenchmarksRun(t *testing.T) {
	if testing.Short() {
		t.Skip("the light-load scenario takes 2s")
	}
	runs := map[string]func(b *testing.B){
		"ClaimAck":   func(b *testing.B) { BenchClaimAck(b, func(b *testing.B) broker.Broker { return newMemory(b) }) },
		"SetResults": func(b *testing.B) { BenchSetResults(b, newMemory(b)) },
		"LightLoad": func(b *testing.B) {
			e := newMemory(b)
			BenchWorkerLightLoad(b, e, e)
		},
	}
	for name, run := range runs {
		r := testing.Benchmark(run)
		if r.N == 0 {
			t.Fatalf("%s: the benchmark failed", name)
		}
		t.Logf("%s: %v %v", name, r, r.Extra)
	}
}

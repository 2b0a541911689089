package workerbench

import (
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/memory"
	"github.com/stemhq/stem/internal/bench/benchkit"
)

// TestMain fails the run when a benchmark leaves a goroutine behind (the
// scenarios start workers).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newMemory(tb testing.TB) *memory.Engine {
	e := memory.New(memory.Options{ResultTTL: time.Minute})
	tb.Cleanup(func() { _ = e.Close() })
	return e
}

// TestBenchmarksRun runs each benchmark, benchkit's and this package's, on
// the memory engine (for about a second, as testing.Benchmark does), so
// the benchmarks no test runs by default still work and stop everything
// they start.
func TestBenchmarksRun(t *testing.T) {
	if testing.Short() {
		t.Skip("the light-load scenario takes 2s")
	}
	runs := map[string]func(b *testing.B){
		"ClaimAck": func(b *testing.B) {
			benchkit.BenchClaimAck(b, func(b *testing.B) broker.Broker { return newMemory(b) })
		},
		"SetResults": func(b *testing.B) { benchkit.BenchSetResults(b, newMemory(b)) },
		"Drain": func(b *testing.B) {
			e := newMemory(b)
			Drain(b, []Engine{e, e}, 2000, func() (int, error) {
				n, err := e.PendingCount(b.Context(), "default")
				return int(n), err
			})
		},
		"LightLoad": func(b *testing.B) {
			e := newMemory(b)
			LightLoad(b, e, e)
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

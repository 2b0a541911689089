package sqlite

import (
	"context"
	"fmt"
	"testing"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/internal/bench/benchkit"
)

// Benchmarks run on a file in b.TempDir(), with the default synchronous
// mode (FULL) unless the sub-benchmark says otherwise. Each reports tasks/s.
// Keep them short on a shared machine, e.g.:
//
//	go test -run '^$' -bench . -benchtime 2s ./broker/sqlite/
//
// The benchmarks that run a worker on the engine (burn-down, light load,
// two workers on one file) are in internal/bench's tests.

// syncModes are the synchronous settings benchmarked.
var syncModes = []string{SynchronousFull, SynchronousNormal}

func BenchmarkPublishBatch(b *testing.B) {
	for _, sync := range syncModes {
		for _, size := range []int{1, 100, 500} {
			b.Run(fmt.Sprintf("sync=%s/batch=%d", sync, size), func(b *testing.B) {
				e := newTestEngine(b, Options{Synchronous: sync})
				ctx := context.Background()
				envs := benchkit.BenchEnvelopes("bench", size)
				for b.Loop() {
					if err := e.PublishBatch(ctx, envs); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "tasks/s")
			})
		}
	}
}

func BenchmarkClaimAck(b *testing.B) {
	benchkit.BenchClaimAck(b, func(b *testing.B) broker.Broker { return newTestEngine(b, Options{}) })
}

func BenchmarkSetResults(b *testing.B) {
	benchkit.BenchSetResults(b, newTestEngine(b, Options{}))
}

package postgres

import (
	"context"
	"fmt"
	"testing"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/internal/bench/benchkit"
)

// Benchmarks run against STEM_TEST_POSTGRES_URL (skipped without it) under
// a fresh schema each, dropped afterwards. Each reports tasks/s. Keep them
// short on a shared machine, e.g.:
//
//	go test -run '^$' -bench . -benchtime 2s ./broker/postgres/
//
// The benchmarks that run a worker on the engine (burn-down, light load)
// are in internal/bench's tests.

func BenchmarkPublishBatch(b *testing.B) {
	for _, size := range []int{1, 100, 500} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			e := newTestEngine(b, Options{})
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

func BenchmarkClaimAck(b *testing.B) {
	benchkit.BenchClaimAck(b, func(b *testing.B) broker.Broker { return newTestEngine(b, Options{}) })
}

func BenchmarkSetResults(b *testing.B) {
	benchkit.BenchSetResults(b, newTestEngine(b, Options{}))
}

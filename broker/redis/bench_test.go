package redis

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/internal/bench/benchkit"
)

// Benchmarks run against STEM_TEST_REDIS_URL (skipped without it) under a
// fresh namespace each, deleted afterwards. Each reports tasks/s. Keep them
// short on a shared machine, e.g.:
//
//	go test -run '^$' -bench . -benchtime 2s ./broker/redis/

func BenchmarkPublishBatch(b *testing.B) {
	for _, size := range []int{100, 500} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			e := newTestEngine(b, testClient(b), Options{})
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
	// Several producers at once, as a busy API tier would publish.
	b.Run("batch=500/producers=4", func(b *testing.B) {
		e := newTestEngine(b, testClient(b), Options{})
		ctx := context.Background()
		envs := benchkit.BenchEnvelopes("bench", 500)
		var n atomic.Int64
		b.SetParallelism(2) // 2 x GOMAXPROCS goroutines
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := e.PublishBatch(ctx, envs); err != nil {
					b.Error(err)
					return
				}
				n.Add(500)
			}
		})
		b.ReportMetric(float64(n.Load())/b.Elapsed().Seconds(), "tasks/s")
	})
}

func BenchmarkClaimAck(b *testing.B) {
	benchkit.BenchClaimAck(b, func(b *testing.B) broker.Broker { return newTestEngine(b, testClient(b), Options{}) })
}

func BenchmarkSetResults(b *testing.B) {
	benchkit.BenchSetResults(b, newTestEngine(b, testClient(b), Options{ResultTTL: time.Minute}))
}

func BenchmarkPublishOne(b *testing.B) {
	e := newTestEngine(b, testClient(b), Options{})
	ctx := context.Background()
	env := benchkit.BenchEnvelopes("bench", 1)[0]
	var n atomic.Int64
	b.SetParallelism(4) // 4 x GOMAXPROCS producers
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := e.Publish(ctx, env); err != nil {
				b.Error(err)
				return
			}
			n.Add(1)
		}
	})
	b.ReportMetric(float64(n.Load())/b.Elapsed().Seconds(), "tasks/s")
}

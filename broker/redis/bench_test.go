package redis

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/result"
)

// Benchmarks run against STEM_TEST_REDIS_URL (skipped without it) under a
// fresh namespace each, deleted afterwards. Each reports tasks/s. Keep them
// short on a shared machine, e.g.:
//
//	go test -run '^$' -bench . -benchtime 2s ./broker/redis/

// benchEnvelopes returns n realistic envelopes for queue.
func benchEnvelopes(queue string, n int) []broker.Envelope {
	now := time.Now()
	args := json.RawMessage(`{"user":12345,"template":"welcome","locale":"en"}`)
	out := make([]broker.Envelope, n)
	for i := range out {
		out[i] = broker.Envelope{
			ID: fmt.Sprintf("0191c6e2-7a3b-7c1d-9e4f-%012d", i), Name: "mail.send", Queue: queue,
			Args: args, MaxRetries: -1, CreatedAt: now,
		}
	}
	return out
}

func BenchmarkPublishBatch(b *testing.B) {
	for _, size := range []int{100, 500} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			e := newTestEngine(b, testClient(b), Options{})
			ctx := context.Background()
			envs := benchEnvelopes("bench", size)
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
		envs := benchEnvelopes("bench", 500)
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
	for _, size := range []int{100, 500} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			e := newTestEngine(b, testClient(b), Options{})
			ctx := context.Background()
			envs := benchEnvelopes("bench", size)
			p := broker.ClaimParams{Queues: []string{"bench"}, Max: size, Lease: time.Minute}
			const refill = 20 // batches published (untimed) at a time
			left := 0
			tasks := 0
			for b.Loop() {
				if left == 0 {
					b.StopTimer()
					for range refill {
						if err := e.PublishBatch(ctx, envs); err != nil {
							b.Fatal(err)
						}
					}
					left = refill
					b.StartTimer()
				}
				ds, err := e.Claim(ctx, p)
				if err != nil || len(ds) != size {
					b.Fatalf("Claim = %d deliveries, %v", len(ds), err)
				}
				if err := e.Ack(ctx, ds); err != nil {
					b.Fatal(err)
				}
				left--
				tasks += len(ds)
			}
			b.ReportMetric(float64(tasks)/b.Elapsed().Seconds(), "tasks/s")
		})
	}
}

func BenchmarkSetResults(b *testing.B) {
	const size = 500
	e := newTestEngine(b, testClient(b), Options{ResultTTL: time.Minute})
	ctx := context.Background()
	states := make([]result.TaskState, size)
	now := time.Now()
	for i := range states {
		states[i] = result.TaskState{
			ID: fmt.Sprintf("0191c6e2-7a3b-7c1d-9e4f-%012d", i), Name: "mail.send", Queue: "bench",
			State: result.Succeeded, Result: json.RawMessage(`{"ok":true}`), Worker: "alpha@host",
			StartedAt: now, FinishedAt: now, UpdatedAt: now,
		}
	}
	for b.Loop() {
		if err := e.Set(ctx, states); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "states/s")
}

func BenchmarkPublishOne(b *testing.B) {
	e := newTestEngine(b, testClient(b), Options{})
	ctx := context.Background()
	env := benchEnvelopes("bench", 1)[0]
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

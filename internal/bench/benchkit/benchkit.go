// Package benchkit holds the benchmarks every engine runs from its own
// _test.go, so their figures compare: the same envelopes, batch sizes and
// measures everywhere. It is not part of the contract suite
// (broker/conformance), and it does not import the worker runtime: the
// scenarios that run a worker are in internal/bench/workerbench.
package benchkit

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/result"
)

// BenchEnvelopes returns n realistic envelopes (a small JSON object of
// arguments, uuid-like ids) for queue.
func BenchEnvelopes(queue string, n int) []broker.Envelope {
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

// BenchClaimAck times claiming and acking batches of 100 and 500 (the
// publishes that refill the queue are not timed) and reports tasks/s.
// newBroker returns a fresh, empty broker for each sub-benchmark.
func BenchClaimAck(b *testing.B, newBroker func(b *testing.B) broker.Broker) {
	for _, size := range []int{100, 500} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			e := newBroker(b)
			ctx := context.Background()
			envs := BenchEnvelopes("bench", size)
			p := broker.ClaimParams{Queues: []string{"bench"}, Max: size, Lease: time.Minute}
			const refill = 20 // batches published (untimed) at a time
			left, tasks := 0, 0
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

// BenchSetResults times writing batches of 500 final states and reports
// states/s.
func BenchSetResults(b *testing.B, r result.Backend) {
	const size = 500
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
		if err := r.Set(ctx, states); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "states/s")
}

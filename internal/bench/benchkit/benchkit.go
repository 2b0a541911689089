// Package benchkit holds the benchmarks every engine runs from its own
// _test.go, so their figures compare: the same envelopes, batch sizes and
// measures everywhere. It is not part of the contract suite
// (broker/conformance), which must not import the worker runtime; the
// light-load scenario here runs a real worker.
package benchkit

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/result"
	"github.com/stemhq/stem/worker"
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

// BenchWorkerLightLoad runs the light-load latency scenario: pub publishes 400
// tasks at 200/s, a worker on e runs them (e must also be a
// result.Backend), and reports enqueue-to-start p50 and p99.
func BenchWorkerLightLoad(b *testing.B, e, pub broker.Broker) {
	const n, rate = 400, 200
	ctx := context.Background()
	for b.Loop() {
		var mu sync.Mutex
		lat := make([]time.Duration, 0, n)
		all := make(chan struct{})
		reg := worker.NewRegistry()
		reg.MustRegister("noop", func(_ worker.TaskContext, args json.RawMessage) (any, error) {
			var a struct{ T int64 }
			_ = json.Unmarshal(args, &a)
			mu.Lock()
			defer mu.Unlock()
			lat = append(lat, time.Duration(time.Now().UnixNano()-a.T))
			if len(lat) == n {
				close(all)
			}
			return nil, nil
		}, worker.TaskOptions{})
		w, err := worker.New(worker.Config{
			Broker: e, Results: e.(result.Backend), Handlers: reg, Node: "bench",
			Concurrency: 32, Prefetch: 1024, MaxBatch: 512, Lease: 30 * time.Second,
			ClaimWait: time.Second,
		})
		if err != nil {
			b.Fatal(err)
		}
		stopped := make(chan error, 1)
		go func() { stopped <- w.Run(ctx) }()
		<-w.Ready()
		tick := time.NewTicker(time.Second / rate)
		for i := range n {
			<-tick.C
			env := broker.Envelope{ID: fmt.Sprintf("l-%d", i), Name: "noop", Queue: "default", MaxRetries: -1, CreatedAt: time.Now(),
				Args: json.RawMessage(`{"T":` + strconv.FormatInt(time.Now().UnixNano(), 10) + `}`)}
			if err := pub.Publish(ctx, env); err != nil {
				b.Fatal(err)
			}
		}
		tick.Stop()
		<-all
		w.Shutdown(worker.Warm)
		if err := <-stopped; err != nil {
			b.Fatal(err)
		}
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	}
}

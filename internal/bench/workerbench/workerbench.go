// Package workerbench holds the benchmark scenarios that run a real worker
// (worker.New) on an engine: the burn-down and light-load latency. The
// engines' benchmarks of them are in internal/bench's tests, so that no
// package under broker/ imports the worker runtime, not even in tests.
package workerbench

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/internal/bench/benchkit"
	"github.com/stemhq/stem/registry"
	"github.com/stemhq/stem/result"
	"github.com/stemhq/stem/worker"
)

// LightLoad runs the light-load latency scenario: pub publishes 400
// tasks at 200/s, a worker on e runs them (e must also be a
// result.Backend), and reports enqueue-to-start p50 and p99.
func LightLoad(b *testing.B, e, pub broker.Broker) {
	const n, rate = 400, 200
	ctx := context.Background()
	for b.Loop() {
		var mu sync.Mutex
		lat := make([]time.Duration, 0, n)
		all := make(chan struct{})
		w := newWorker(b, worker.Config{Broker: e, Results: e.(result.Backend), ClaimWait: time.Second},
			func(_ worker.TaskContext, args json.RawMessage) (any, error) {
				var a struct{ T int64 }
				_ = json.Unmarshal(args, &a)
				mu.Lock()
				defer mu.Unlock()
				lat = append(lat, time.Duration(time.Now().UnixNano()-a.T))
				if len(lat) == n {
					close(all)
				}
				return nil, nil
			})
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

// newWorker builds a worker of cfg's engine and claim wait, with the
// benchmarks' settings, running h as the task "noop".
func newWorker(b *testing.B, cfg worker.Config, h worker.HandlerFunc) *worker.Worker {
	cfg.Handlers = worker.NewRegistry()
	cfg.Handlers.MustRegister("noop", h, worker.TaskOptions{})
	cfg.Node, cfg.Concurrency, cfg.Prefetch, cfg.MaxBatch, cfg.Lease = "bench", 32, 1024, 512, 30*time.Second
	w, err := worker.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return w
}

// Engine is an engine a worker of Drain runs on: its broker,
// result backend and worker registry.
type Engine interface {
	broker.Broker
	result.Backend
	registry.Registry
}

// Drain is the burn-down: each iteration pre-loads n no-op
// tasks through engines[0] (untimed), then times one real worker per
// engine (worker.New: claims, "started" and final states, acks) draining
// them, until the last ack landed. Several engines of one store are
// several worker processes. left, when not nil, counts the tasks the store
// still holds after an iteration (untimed); it must be 0. It reports
// tasks/s.
func Drain(b *testing.B, engines []Engine, n int, left func() (int, error)) {
	ctx := context.Background()
	var total time.Duration
	for b.Loop() {
		b.StopTimer()
		for i := 0; i < n; i += 500 {
			envs := benchkit.BenchEnvelopes("default", min(500, n-i))
			for j := range envs {
				envs[j].ID = fmt.Sprintf("t-%d", i+j)
				envs[j].Name = "noop"
			}
			if err := engines[0].PublishBatch(ctx, envs); err != nil {
				b.Fatal(err)
			}
		}
		var done atomic.Int64
		all := make(chan struct{})
		var ws []*worker.Worker
		for _, e := range engines {
			ws = append(ws, newWorker(b, worker.Config{Broker: e, Results: e, Registry: e, ClaimWait: 100 * time.Millisecond},
				func(worker.TaskContext, json.RawMessage) (any, error) {
					if done.Add(1) == int64(n) {
						close(all)
					}
					return nil, nil
				}))
		}
		b.StartTimer()
		start := time.Now()
		stopped := make(chan error, len(ws))
		for _, w := range ws {
			go func() { stopped <- w.Run(ctx) }()
		}
		<-all
		// Count until the last ack landed.
		for _, w := range ws {
			w.Shutdown(worker.Warm)
		}
		for range ws {
			if err := <-stopped; err != nil {
				b.Fatal(err)
			}
		}
		total += time.Since(start)
		b.StopTimer()
		if left != nil {
			if rows, err := left(); err != nil || rows != 0 {
				b.Fatalf("%d tasks left after the burn-down (%v)", rows, err)
			}
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(b.N*n)/total.Seconds(), "tasks/s")
}

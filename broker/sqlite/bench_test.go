package sqlite

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/internal/bench/benchkit"
	"github.com/stemhq/stem/worker"
)

// Benchmarks run on a file in b.TempDir(), with the default synchronous
// mode (FULL) unless the sub-benchmark says otherwise. Each reports tasks/s.
// Keep them short on a shared machine, e.g.:
//
//	go test -run '^$' -bench . -benchtime 2s ./broker/sqlite/

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

// BenchmarkWorkerBurnDown pre-loads no-op tasks and times one real worker
// (worker.New on this engine: claims, "started" and final states, acks)
// draining them, as `make bench` does for Redis. Run it once per mode:
//
//	go test -run '^$' -bench WorkerBurnDown -benchtime 1x ./broker/sqlite/
func BenchmarkWorkerBurnDown(b *testing.B) {
	for _, sync := range syncModes {
		b.Run("sync="+sync, func(b *testing.B) {
			benchBurnDown(b, newTestEngine(b, Options{Synchronous: sync}), 50000)
		})
	}
}

// benchBurnDown runs the burn-down of n tasks on e once per iteration.
func benchBurnDown(b *testing.B, e *Engine, n int) {
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
			if err := e.PublishBatch(ctx, envs); err != nil {
				b.Fatal(err)
			}
		}
		var done atomic.Int64
		all := make(chan struct{})
		reg := worker.NewRegistry()
		reg.MustRegister("noop", func(worker.TaskContext, json.RawMessage) (any, error) {
			if done.Add(1) == int64(n) {
				close(all)
			}
			return nil, nil
		}, worker.TaskOptions{})
		w, err := worker.New(worker.Config{
			Broker: e, Results: e, Registry: e, Handlers: reg, Node: "bench",
			Concurrency: 32, Prefetch: 1024, MaxBatch: 512, Lease: 30 * time.Second,
			ClaimWait: 100 * time.Millisecond,
		})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		stopped := make(chan error, 1)
		go func() { stopped <- w.Run(ctx) }()
		<-all
		// Count until the last ack landed.
		w.Shutdown(worker.Warm)
		if err := <-stopped; err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		b.StopTimer()
		if rows := rowCount(b, e.rdb, "stem_tasks"); rows != 0 {
			b.Fatalf("%d tasks left after the burn-down", rows)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(b.N*n)/total.Seconds(), "tasks/s")
}

// BenchmarkWorkerLightLoad publishes tasks one at a time at 200/s through
// a second Engine on the file (as `stem enqueue` in another process would,
// so the wake-up goes through the data_version watcher) while one worker
// runs, and reports the enqueue-to-start latency.
//
//	go test -run '^$' -bench WorkerLightLoad -benchtime 1x ./broker/sqlite/
func BenchmarkWorkerLightLoad(b *testing.B) {
	path := filepath.Join(b.TempDir(), "stem.db")
	benchkit.BenchWorkerLightLoad(b, openTestEngine(b, path, Options{}), openTestEngine(b, path, Options{}))
}

// BenchmarkTwoWorkersOneFile drains pre-loaded no-op tasks with two
// workers on two Engines of one file, as two worker processes on one host
// would (each Engine has its own write connection, so they contend for
// SQLite's file lock just as processes do).
//
//	go test -run '^$' -bench TwoWorkersOneFile -benchtime 1x ./broker/sqlite/
func BenchmarkTwoWorkersOneFile(b *testing.B) {
	const n = 50000
	for b.Loop() {
		b.StopTimer()
		path := filepath.Join(b.TempDir(), "stem.db")
		engines := []*Engine{openTestEngine(b, path, Options{}), openTestEngine(b, path, Options{})}
		ctx := context.Background()
		for i := 0; i < n; i += 500 {
			envs := benchkit.BenchEnvelopes("default", 500)
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
			reg := worker.NewRegistry()
			reg.MustRegister("noop", func(worker.TaskContext, json.RawMessage) (any, error) {
				if done.Add(1) == n {
					close(all)
				}
				return nil, nil
			}, worker.TaskOptions{})
			w, err := worker.New(worker.Config{Broker: e, Results: e, Registry: e, Handlers: reg, Node: "bench",
				Concurrency: 32, Prefetch: 1024, MaxBatch: 512, Lease: 30 * time.Second, ClaimWait: 100 * time.Millisecond})
			if err != nil {
				b.Fatal(err)
			}
			ws = append(ws, w)
		}
		b.StartTimer()
		start := time.Now()
		stopped := make(chan error, len(ws))
		for _, w := range ws {
			go func() { stopped <- w.Run(ctx) }()
		}
		<-all
		for _, w := range ws {
			w.Shutdown(worker.Warm)
		}
		for range ws {
			if err := <-stopped; err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(n)/time.Since(start).Seconds(), "tasks/s")
	}
}

package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/internal/bench/benchkit"
	"github.com/stemhq/stem/worker"
)

// Benchmarks run against STEM_TEST_POSTGRES_URL (skipped without it) under
// a fresh schema each, dropped afterwards. Each reports tasks/s. Keep them
// short on a shared machine, e.g.:
//
//	go test -run '^$' -bench . -benchtime 2s ./broker/postgres/

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

// BenchmarkWorkerBurnDown pre-loads no-op tasks and times one real worker
// (worker.New on this engine: claims, "started" and final states, acks)
// draining them, as `make bench` does for Redis. Run it once per mode:
//
//	go test -run '^$' -bench WorkerBurnDown -benchtime 1x ./broker/postgres/
func BenchmarkWorkerBurnDown(b *testing.B) {
	benchBurnDown(b, newTestEngine(b, Options{}), 50000)
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
		var rows int
		if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{e.Schema()}.Sanitize()+`.tasks`).Scan(&rows); err != nil || rows != 0 {
			b.Fatalf("%d tasks left after the burn-down (%v)", rows, err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(b.N*n)/total.Seconds(), "tasks/s")
}

// BenchmarkWorkerLightLoad publishes tasks one at a time at 200/s through
// a second Engine on the namespace (as `stem enqueue` in another process
// would; the wake-up is a NOTIFY) while one worker runs, and reports the
// enqueue-to-start latency.
//
//	go test -run '^$' -bench WorkerLightLoad -benchtime 1x ./broker/postgres/
func BenchmarkWorkerLightLoad(b *testing.B) {
	e := newTestEngine(b, Options{})
	benchkit.BenchWorkerLightLoad(b, e, openTestEngine(b, testURL(b), Options{Namespace: e.Namespace()}))
}

// Command bench measures stem against a real broker: enqueue throughput in
// batches, burn-down (pre-load N no-op tasks, then one worker drains them),
// and steady state (producers and one worker at once) with enqueue-to-start
// latency. It prints a Markdown report; `make bench` runs it against the
// local Redis, and docs/benchmarks.md keeps the figures.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	goredis "github.com/redis/go-redis/v9"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	stempostgres "github.com/stemhq/stem/broker/postgres"
	stemredis "github.com/stemhq/stem/broker/redis"
	stemsqlite "github.com/stemhq/stem/broker/sqlite"
	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/registry"
	"github.com/stemhq/stem/result"
	"github.com/stemhq/stem/worker"
)

type options struct {
	redisURL    string
	n           int
	batch       int
	producers   int
	concurrency int
	prefetch    int
	lightRate   int
	lightN      int
	cpuprofile  string
	sqliteDir   string
	postgresURL string
	sqlN        int
}

// isoRegistry is the registry of the bench and of its isolation children.
func isoRegistry() *worker.Registry {
	r := worker.NewRegistry()
	r.MustRegister("noop.iso", func(worker.TaskContext, json.RawMessage) (any, error) { return nil, nil }, worker.TaskOptions{Isolated: true})
	r.MustRegister("spin.iso", func(worker.TaskContext, json.RawMessage) (any, error) {
		x := 0
		for { // a non-cooperative task: no checkpoint, ever
			x++
		}
	}, worker.TaskOptions{Isolated: true})
	r.MustRegister("coop.iso", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		for {
			if err := tc.Heartbeat(); err != nil {
				return nil, err
			}
		}
	}, worker.TaskOptions{Isolated: true})
	r.MustRegister("coop.inline", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		for {
			if err := tc.Heartbeat(); err != nil {
				return nil, err
			}
			runtime.Gosched()
		}
	}, worker.TaskOptions{})
	return r
}

func main() {
	worker.ServeChildIfRequested(isoRegistry())
	var o options
	flag.StringVar(&o.redisURL, "redis", "", "Redis URL to measure (empty: skip)")
	flag.StringVar(&o.sqliteDir, "sqlite-dir", "", "directory for SQLite files to measure (empty: skip)")
	flag.StringVar(&o.postgresURL, "postgres", "", "Postgres URL to measure (empty: skip)")
	flag.IntVar(&o.sqlN, "sql-n", 50000, "tasks in the SQLite and Postgres burn-downs")
	flag.IntVar(&o.n, "n", 200000, "tasks in the burn-down")
	flag.IntVar(&o.batch, "batch", 500, "publish batch size")
	flag.IntVar(&o.producers, "producers", 4, "producer goroutines")
	flag.IntVar(&o.concurrency, "concurrency", 32, "worker concurrency")
	flag.IntVar(&o.prefetch, "prefetch", 1024, "worker prefetch")
	flag.IntVar(&o.lightRate, "light-rate", 500, "tasks/s in the light-load latency run")
	flag.IntVar(&o.lightN, "light-n", 2000, "tasks in the light-load latency run")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of the burn-down here")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// benchEngine is what every engine under test provides.
type benchEngine interface {
	broker.Broker
	result.Backend
	registry.Registry
	broker.ControlTransport
}

// target is one engine to measure: how to open a fresh namespace of it and
// how to remove that namespace afterwards.
type target struct {
	name    string
	n       int // burn-down size
	open    func(ctx context.Context, ns string) (benchEngine, error)
	cleanup func(e benchEngine, ns string)
}

func redisTarget(url string, n int) target {
	return target{name: "Redis " + stem.RedactURL(url), n: n,
		open: func(ctx context.Context, ns string) (benchEngine, error) {
			return stemredis.Open(ctx, url, stemredis.Options{Namespace: ns, ResultTTL: 10 * time.Minute})
		},
		cleanup: func(e benchEngine, ns string) { redisCleanup(e, url, ns) },
	}
}

func sqliteTarget(dir string, n int) target {
	return target{name: "SQLite (file in " + dir + ", synchronous=full)", n: n,
		open: func(ctx context.Context, ns string) (benchEngine, error) {
			return stemsqlite.Open(ctx, filepath.Join(dir, ns+".db"), stemsqlite.Options{Namespace: ns, ResultTTL: 10 * time.Minute})
		},
		cleanup: func(e benchEngine, ns string) {
			_ = e.Close()
			for _, suffix := range []string{"", "-wal", "-shm"} {
				_ = os.Remove(filepath.Join(dir, ns+".db"+suffix))
			}
		},
	}
}

func postgresTarget(url string, n int) target {
	return target{name: "Postgres " + stem.RedactURL(url), n: n,
		open: func(ctx context.Context, ns string) (benchEngine, error) {
			return stempostgres.Open(ctx, url, stempostgres.Options{Namespace: ns, ResultTTL: 10 * time.Minute})
		},
		cleanup: func(e benchEngine, ns string) {
			schema := e.(*stempostgres.Engine).Schema()
			_ = e.Close()
			conn, err := pgx.Connect(context.Background(), url)
			if err != nil {
				return
			}
			defer conn.Close(context.Background())
			_, _ = conn.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
		},
	}
}

func run(o options) error {
	ctx := context.Background()
	host, _ := os.Hostname()
	fmt.Printf("# stem benchmark\n\nmachine: %s, %d CPUs, %s %s/%s\n\n", host, runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	var targets []target
	if o.redisURL != "" {
		targets = append(targets, redisTarget(o.redisURL, o.n))
	}
	if o.sqliteDir != "" {
		targets = append(targets, sqliteTarget(o.sqliteDir, o.sqlN))
	}
	if o.postgresURL != "" {
		targets = append(targets, postgresTarget(o.postgresURL, o.sqlN))
	}
	base := fmt.Sprintf("bench%d", time.Now().UnixNano())
	for i, t := range targets {
		if err := runTarget(ctx, o, t, fmt.Sprintf("%s%d", base, i)); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
	}
	if len(targets) > 0 {
		t := targets[0]
		fmt.Printf("## Isolation (%s)\n\n", t.name)
		if err := isolation(ctx, o, t, base+"i"); err != nil {
			return err
		}
	}
	return nil
}

// runTarget measures one engine: enqueue, burn-down, steady state, light
// load latency, control round trips.
func runTarget(ctx context.Context, o options, t target, ns string) error {
	fmt.Printf("## %s\n\n", t.name)
	// with opens a fresh namespace, runs f, and removes the namespace.
	with := func(suffix string, f func(e benchEngine) error) error {
		e, err := t.open(ctx, ns+suffix)
		if err != nil {
			return err
		}
		defer t.cleanup(e, ns+suffix)
		return f(e)
	}
	o.n = t.n
	if err := with("b", func(e benchEngine) error {
		enqRate, err := enqueue(ctx, e, o.n, o.batch, o.producers, "noop")
		if err != nil {
			return err
		}
		burn, err := burnDown(ctx, e, o)
		if err != nil {
			return err
		}
		fmt.Printf("| measure | result |\n|---|---|\n")
		fmt.Printf("| enqueue, %d tasks in batches of %d from %d goroutines | **%.0f tasks/s** |\n", o.n, o.batch, o.producers, enqRate)
		fmt.Printf("| burn-down, one worker (concurrency %d, prefetch %d), %d no-op tasks | **%.0f tasks/s** (%.2fs) |\n", o.concurrency, o.prefetch, o.n, float64(o.n)/burn.Seconds(), burn.Seconds())
		return nil
	}); err != nil {
		return err
	}
	if err := with("s", func(e benchEngine) error {
		rate, lat, err := steady(ctx, e, o, 0, o.n/2)
		if err != nil {
			return err
		}
		fmt.Printf("| steady state, %d producers flooding batches of %d while one worker runs | %.0f tasks/s processed (enqueue-to-start p50 %s: the backlog) |\n", o.producers, o.batch, rate, lat.p(50))
		return nil
	}); err != nil {
		return err
	}
	if err := with("l", func(e benchEngine) error {
		_, lat, err := steady(ctx, e, o, o.lightRate, o.lightN)
		if err != nil {
			return err
		}
		fmt.Printf("| light load, %d tasks/s published one at a time: enqueue-to-start | **p50 %s**, p99 %s |\n", o.lightRate, lat.p(50), lat.p(99))
		return nil
	}); err != nil {
		return err
	}
	for _, n := range []int{1, 10} {
		lat, err := controlRoundTrip(ctx, t, ns+fmt.Sprintf("c%d", n), n, 200)
		if err != nil {
			return err
		}
		fmt.Printf("| control round trip (broadcast ping until all answered), %d worker(s) | p50 %s, p99 %s |\n", n, lat.p(50), lat.p(99))
	}
	fmt.Println()
	return nil
}

// isolation measures isolated-task throughput (one child per slot) and
// terminate latency: from publishing a terminate revoke to the slot being
// free again, for a non-cooperative isolated task (killed after the grace
// period), a cooperative isolated one, and a cooperative inline one.
func isolation(ctx context.Context, o options, t target, ns string) error {
	e, err := t.open(ctx, ns)
	if err != nil {
		return err
	}
	defer t.cleanup(e, ns)
	const grace = 100 * time.Millisecond
	w, err := worker.New(worker.Config{Broker: e, Results: e, Registry: e, Control: e, Handlers: isoRegistry(), Node: "iso",
		Namespace: ns, Concurrency: 2, Prefetch: 64, MaxBatch: 64, ClaimWait: 100 * time.Millisecond,
		Isolation: worker.IsolationConfig{TerminateGrace: grace}})
	if err != nil {
		return err
	}
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(ctx) }()
	defer func() { w.Shutdown(worker.Warm); <-stopped }()
	<-w.Ready()
	const n = 5000
	start := time.Now()
	if _, err := enqueue(ctx, e, n, 500, 1, "noop.iso"); err != nil {
		return err
	}
	for w.Counters().Processed < n {
		time.Sleep(time.Millisecond) // polling a counter in a benchmark, not a test
	}
	fmt.Printf("%d no-op isolated tasks, 2 child processes: **%.0f tasks/s**\n\n", n, float64(n)/time.Since(start).Seconds())

	req := &control.Requester{Transport: e, Namespace: ns}
	defer req.Close()
	fmt.Printf("Terminate latency (revoke sent → slot free), 20 rounds, grace %s:\n\n| task | p50 | p99 |\n|---|---|---|\n", grace)
	for _, name := range []string{"spin.iso", "coop.iso", "coop.inline"} {
		var lat latencies
		for i := 0; i < 20; i++ {
			id := fmt.Sprintf("%s-%d", name, i)
			if err := e.Publish(ctx, broker.Envelope{ID: id, Name: name, Queue: "default", MaxRetries: -1, CreatedAt: time.Now()}); err != nil {
				return err
			}
			for w.Stats().InFlight == 0 {
				time.Sleep(100 * time.Microsecond)
			}
			t0 := time.Now()
			if _, err := req.Do(ctx, control.TypeRevoke, control.RevokeArgs{Entries: []revoke.Entry{{Namespace: ns, TaskID: id, Version: 1, Terminate: true}}}, nil, 5*time.Second); err != nil {
				return err
			}
			for w.Stats().InFlight != 0 {
				time.Sleep(100 * time.Microsecond)
			}
			lat = append(lat, time.Since(t0))
		}
		fmt.Printf("| %s | %s | %s |\n", name, lat.p(50), lat.p(99))
	}
	fmt.Println()
	return nil
}

// controlRoundTrip starts n workers (in this process, each with its own
// Redis connections) and times `rounds` broadcast pings.
func controlRoundTrip(ctx context.Context, t target, ns string, n, rounds int) (latencies, error) {
	var engines []benchEngine
	defer func() {
		for i, e := range engines {
			if i == 0 {
				defer t.cleanup(e, ns) // last: the others share its namespace
				continue
			}
			_ = e.Close()
		}
	}()
	var workers []*worker.Worker
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		e, err := t.open(ctx, ns)
		if err != nil {
			return nil, err
		}
		engines = append(engines, e)
		w, err := worker.New(worker.Config{Broker: e, Results: e, Registry: e, Control: e, Node: fmt.Sprintf("w%d", i),
			Namespace: ns, Concurrency: 1, Heartbeat: time.Second})
		if err != nil {
			return nil, err
		}
		workers = append(workers, w)
		wg.Add(1)
		go func() { defer wg.Done(); _ = w.Run(ctx) }()
		<-w.Ready()
	}
	defer func() {
		for _, w := range workers {
			w.Shutdown(worker.Warm)
		}
		wg.Wait()
	}()
	req := &control.Requester{Transport: engines[0], Namespace: ns}
	defer req.Close()
	lat := make(latencies, 0, rounds)
	for i := 0; i < rounds; i++ {
		res, err := req.Do(ctx, control.TypePing, nil, nil, 5*time.Second)
		if err != nil {
			return nil, err
		}
		if len(res.Replies) != n {
			return nil, fmt.Errorf("ping: %d of %d workers replied", len(res.Replies), n)
		}
		lat = append(lat, res.Elapsed)
	}
	return lat, nil
}

// cleanup deletes every key of the engine's namespace (the benchmark must
// leave the shared Redis as it found it) and closes the engine.
func redisCleanup(e benchEngine, url, ns string) {
	defer e.Close()
	opts, err := goredis.ParseURL(url)
	if err != nil {
		return
	}
	c := goredis.NewClient(opts)
	defer c.Close()
	ctx := context.Background()
	for _, pattern := range []string{ns + ":*", "{" + ns + ":*"} {
		var keys []string
		for iter := c.Scan(ctx, 0, pattern, 1000).Iterator(); iter.Next(ctx); {
			keys = append(keys, iter.Val())
		}
		for batch := range slices.Chunk(keys, 1000) {
			c.Unlink(ctx, batch...)
		}
	}
}

// enqueue publishes n no-op tasks called name and returns the rate.
func enqueue(ctx context.Context, b broker.Broker, n, batch, producers int, name string) (float64, error) {
	now, start := time.Now(), time.Now()
	err := produce(ctx, b, n, batch, producers, func(i int) broker.Envelope {
		return broker.Envelope{ID: name + "-" + strconv.Itoa(i), Name: name, Queue: "default", MaxRetries: -1, CreatedAt: now}
	})
	return float64(n) / time.Since(start).Seconds(), err
}

// produce publishes the envelopes mk(0) to mk(n-1) in batches, from
// producers goroutines at once, and returns the first error.
func produce(ctx context.Context, b broker.Broker, n, batch, producers int, mk func(i int) broker.Envelope) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	for range producers {
		wg.Go(func() {
			for {
				from := int(next.Add(int64(batch))) - batch
				if from >= n {
					return
				}
				envs := make([]broker.Envelope, min(batch, n-from))
				for i := range envs {
					envs[i] = mk(from + i)
				}
				if err := b.PublishBatch(ctx, envs); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func newWorker(e benchEngine, o options, h worker.HandlerFunc) (*worker.Worker, error) {
	reg := worker.NewRegistry()
	reg.MustRegister("noop", h, worker.TaskOptions{})
	return worker.New(worker.Config{
		Broker: e, Results: e, Registry: e, Handlers: reg, Node: "bench",
		Concurrency: o.concurrency, Prefetch: o.prefetch, MaxBatch: 512, Lease: 30 * time.Second,
		ClaimWait: 100 * time.Millisecond,
	})
}

func burnDown(ctx context.Context, e benchEngine, o options) (time.Duration, error) {
	var done atomic.Int64
	all := make(chan struct{})
	w, err := newWorker(e, o, func(worker.TaskContext, json.RawMessage) (any, error) {
		if done.Add(1) == int64(o.n) {
			close(all)
		}
		return nil, nil
	})
	if err != nil {
		return 0, err
	}
	if o.cpuprofile != "" {
		f, err := os.Create(o.cpuprofile)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return 0, err
		}
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(ctx) }()
	<-all
	// Count until the last ack landed: nothing pending, nothing leased.
	w.Shutdown(worker.Warm)
	if err := <-stopped; err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

type latencies []time.Duration

func (l latencies) p(q int) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(l))
	i := max(min((len(s)*q+99)/100, len(s)-1)-1, 0)
	return s[i].Round(10 * time.Microsecond)
}

// steady runs producers and a worker together. rate 0 = as fast as
// possible in batches; otherwise one publish at a time at that rate.
func steady(ctx context.Context, e benchEngine, o options, rate, n int) (float64, latencies, error) {
	var mu sync.Mutex
	lat := make(latencies, 0, n)
	var done atomic.Int64
	all := make(chan struct{})
	w, err := newWorker(e, o, func(_ worker.TaskContext, args json.RawMessage) (any, error) {
		var ts int64
		if len(args) >= 8 {
			var a struct{ T int64 }
			_ = json.Unmarshal(args, &a)
			ts = a.T
		}
		d := time.Duration(time.Now().UnixNano() - ts)
		mu.Lock()
		lat = append(lat, d)
		mu.Unlock()
		if done.Add(1) == int64(n) {
			close(all)
		}
		return nil, nil
	})
	if err != nil {
		return 0, nil, err
	}
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(ctx) }()
	<-w.Ready()
	start := time.Now()
	mk := func(i int) broker.Envelope {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], uint64(i))
		return broker.Envelope{ID: fmt.Sprintf("s-%d-%x", i, b), Name: "noop", Queue: "default", MaxRetries: -1,
			CreatedAt: time.Now(), Args: json.RawMessage(`{"T":` + strconv.FormatInt(time.Now().UnixNano(), 10) + `}`)}
	}
	if rate == 0 {
		if err := produce(ctx, e, n, o.batch, o.producers, mk); err != nil {
			fmt.Fprintln(os.Stderr, "publish:", err)
		}
	} else {
		tick := time.NewTicker(time.Second / time.Duration(rate))
		for i := 0; i < n; i++ {
			<-tick.C
			if err := e.Publish(ctx, mk(i)); err != nil {
				tick.Stop()
				return 0, nil, err
			}
		}
		tick.Stop()
	}
	<-all
	elapsed := time.Since(start)
	w.Shutdown(worker.Warm)
	if err := <-stopped; err != nil {
		return 0, nil, err
	}
	return float64(n) / elapsed.Seconds(), lat, nil
}

package guarantees_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	stempostgres "github.com/stemhq/stem/broker/postgres"
	stemredis "github.com/stemhq/stem/broker/redis"
	stemsqlite "github.com/stemhq/stem/broker/sqlite"
	"github.com/stemhq/stem/internal/testutil"
	"github.com/stemhq/stem/result"
	"github.com/stemhq/stem/tasks"
	"github.com/stemhq/stem/worker"
)

// The three kinds of task under test each keep a record, per task id, of
// every copy that started, and each copy checks at its start whether an
// earlier copy is still alive. The first copy of a task blocks until it
// is stopped; later copies succeed at once.
//
//   - inline: an in-process counter of running copies;
//   - exec: a shell that records its pid and a grandchild's (sleep) in a
//     directory and, at start, looks for a live process among those
//     recorded;
//   - isolated: the same in Go, in the isolation child process.

// inlineCopies counts running copies of inline tasks, by task id.
type inlineCopies struct {
	mu       sync.Mutex
	running  map[string]int
	started  map[string]int
	overlaps []string
}

func (c *inlineCopies) handler(tc worker.TaskContext, _ json.RawMessage) (any, error) {
	c.mu.Lock()
	id := tc.ID()
	if c.running[id] > 0 {
		c.overlaps = append(c.overlaps, id)
	}
	c.running[id]++
	c.started[id]++
	first := c.started[id] == 1
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.running[id]--
		c.mu.Unlock()
	}()
	if first {
		<-tc.Context().Done()
		return nil, tc.Heartbeat()
	}
	return "ok", nil
}

// execScript is the exec task: $DIR/$STEM_TASK_ID holds a pid.<pid> file
// per process of every copy; a copy that finds one of them alive (not a
// zombie) at its start writes overlap.<its pid>.<live pid>.
const execScript = `
d="$DIR/$STEM_TASK_ID"; mkdir -p "$d"
first=1
for f in "$d"/pid.*; do
  [ -e "$f" ] || continue
  first=0
  p=${f##*.}
  s=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null)
  if [ -n "$s" ] && [ "$s" != Z ]; then : > "$d/overlap.$$.$p"; fi
done
: > "$d/pid.$$"
if [ $first = 1 ]; then
  sleep 600 &
  : > "$d/pid.$!"
  wait
fi
echo '"ok"'
`

// isoArgs are the arguments of the isolated task.
type isoArgs struct {
	Dir string `json:"dir"`
}

// childRegistry is the registry of the isolation child (and of the
// workers, which must know the isolated handler by name).
func childRegistry() *worker.Registry {
	reg := worker.NewRegistry()
	reg.MustRegister("g.iso", isolatedCopy, worker.TaskOptions{Isolated: true})
	return reg
}

// isolatedCopy does in Go what execScript does in sh, with one
// difference: an isolation child outlives its tasks (it serves the next
// one), so a copy marks itself running with a run.<pid> file that it
// removes when it returns; a copy that finds a run.<pid> file of a live
// process at its start writes overlap.<its pid>.<live pid>. A child killed
// mid-task leaves its file behind, but its pid is dead.
func isolatedCopy(tc worker.TaskContext, raw json.RawMessage) (any, error) {
	var a isoArgs
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, err
	}
	d := filepath.Join(a.Dir, tc.ID())
	if err := os.MkdirAll(d, 0o700); err != nil {
		return nil, err
	}
	me := os.Getpid()
	earlier, _ := filepath.Glob(filepath.Join(d, "pid.*"))
	running, _ := filepath.Glob(filepath.Join(d, "run.*"))
	for _, f := range running {
		pid := strings.TrimPrefix(filepath.Ext(f), ".")
		if alive(pid) {
			_ = os.WriteFile(filepath.Join(d, fmt.Sprintf("overlap.%d.%s", me, pid)), nil, 0o600)
		}
	}
	mark := filepath.Join(d, "run."+strconv.Itoa(me))
	if err := os.WriteFile(mark, nil, 0o600); err != nil {
		return nil, err
	}
	defer os.Remove(mark)
	if err := os.WriteFile(filepath.Join(d, "pid."+strconv.Itoa(me)), nil, 0o600); err != nil {
		return nil, err
	}
	if len(earlier) == 0 {
		<-tc.Context().Done()
		return nil, tc.Heartbeat()
	}
	return "ok", nil
}

// alive reports whether pid names a live process that is not a zombie.
func alive(pid string) bool {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// frozenBroker wraps a broker so that, while frozen, every call blocks
// until it is thawed or its context ends: a partition for an engine that
// has no network (SQLite).
type frozenBroker struct {
	broker.Broker
	mu     sync.Mutex
	thawed chan struct{} // closed while not frozen
}

func newFrozenBroker(b broker.Broker) *frozenBroker {
	f := &frozenBroker{Broker: b, thawed: make(chan struct{})}
	close(f.thawed)
	return f
}

func (f *frozenBroker) Freeze() {
	f.mu.Lock()
	f.thawed = make(chan struct{})
	f.mu.Unlock()
}

func (f *frozenBroker) Thaw() {
	f.mu.Lock()
	select {
	case <-f.thawed:
	default:
		close(f.thawed)
	}
	f.mu.Unlock()
}

func (f *frozenBroker) wait(ctx context.Context) error {
	f.mu.Lock()
	ch := f.thawed
	f.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: partitioned (test)", stem.ErrUnavailable)
	}
}

func (f *frozenBroker) Claim(ctx context.Context, p broker.ClaimParams) ([]broker.Delivery, error) {
	if err := f.wait(ctx); err != nil {
		return nil, err
	}
	return f.Broker.Claim(ctx, p)
}

func (f *frozenBroker) Ack(ctx context.Context, ds []broker.Delivery) error {
	if err := f.wait(ctx); err != nil {
		return err
	}
	return f.Broker.Ack(ctx, ds)
}

func (f *frozenBroker) Nack(ctx context.Context, ns []broker.Nack) error {
	if err := f.wait(ctx); err != nil {
		return err
	}
	return f.Broker.Nack(ctx, ns)
}

func (f *frozenBroker) ExtendLease(ctx context.Context, ds []broker.Delivery, d time.Duration) error {
	if err := f.wait(ctx); err != nil {
		return err
	}
	return f.Broker.ExtendLease(ctx, ds, d)
}

// backend is what a partition test needs of an engine: two handles on
// the same store, the first (worker A's) behind something that can be
// frozen.
type backend struct {
	a, b   broker.Broker
	ra, rb result.Backend
	freeze func()
	thaw   func()
}

type closer interface{ Close() error }

func cleanupClose(t *testing.T, c closer) { t.Cleanup(func() { _ = c.Close() }) }

// proxiedBackend opens the engine at the URL in env twice: worker A's
// through a freezable TCP proxy, worker B's directly.
func proxiedBackend[E interface {
	broker.Broker
	result.Backend
}](t *testing.T, env string, open func(ctx context.Context, url string) (E, error)) backend {
	raw := testutil.EnvOrSkip(t, env)
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	p := testutil.StartProxy(t, u.Host)
	viaProxy := *u
	viaProxy.Host = p.Addr()
	ea, err := open(t.Context(), viaProxy.String())
	if err != nil {
		t.Fatal(err)
	}
	cleanupClose(t, ea)
	eb, err := open(t.Context(), raw)
	if err != nil {
		t.Fatal(err)
	}
	cleanupClose(t, eb)
	return backend{a: ea, b: eb, ra: ea, rb: eb, freeze: p.Freeze, thaw: p.Thaw}
}

func redisBackend(t *testing.T, ns string) backend {
	return proxiedBackend(t, "STEM_TEST_REDIS_URL", func(ctx context.Context, u string) (*stemredis.Engine, error) {
		return stemredis.Open(ctx, u, stemredis.Options{Namespace: ns})
	})
}

func postgresBackend(t *testing.T, ns string) backend {
	return proxiedBackend(t, "STEM_TEST_POSTGRES_URL", func(ctx context.Context, u string) (*stempostgres.Engine, error) {
		return stempostgres.Open(ctx, u, stempostgres.Options{Namespace: ns})
	})
}

func sqliteBackend(t *testing.T, ns string) backend {
	path := filepath.Join(t.TempDir(), "stem.db")
	ctx := t.Context()
	ea, err := stemsqlite.Open(ctx, path, stemsqlite.Options{Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	cleanupClose(t, ea)
	eb, err := stemsqlite.Open(ctx, path, stemsqlite.Options{Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	cleanupClose(t, eb)
	fb := newFrozenBroker(ea)
	return backend{a: fb, b: eb, ra: ea, rb: eb, freeze: fb.Freeze, thaw: fb.Thaw}
}

var engines = []struct {
	name string
	open func(t *testing.T, ns string) backend
}{
	{"sqlite", sqliteBackend},
	{"redis", redisBackend},
	{"postgres", postgresBackend},
}

// TestPartitionedWorkerFencesItsTasks: worker A runs an inline, an exec
// and an isolated task; its link to the broker is frozen for longer than
// the lease; worker B, which can reach the broker, reclaims each task once
// its lease expired. Each of A's copies (with the exec task's grandchild)
// must have stopped before B's copy started, and each task must end
// succeeded, once.
func TestPartitionedWorkerFencesItsTasks(t *testing.T) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			t.Parallel()
			ns := "fence" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
			be := e.open(t, ns)
			dir := t.TempDir()
			queue := "q" + ns

			inline := &inlineCopies{running: map[string]int{}, started: map[string]int{}}
			reg := childRegistry()
			reg.MustRegister("g.inline", inline.handler, worker.TaskOptions{})
			reg.MustRegister("g.exec", tasks.Exec(tasks.Def{
				Name: "g.exec", Command: []string{"sh", "-c", execScript}, Env: map[string]string{"DIR": dir},
			}, tasks.ExecOptions{}), worker.TaskOptions{})

			const lease = 2 * time.Second
			newWorker := func(node string, b broker.Broker, r result.Backend) *worker.Worker {
				w, err := worker.New(worker.Config{
					Broker: b, Results: r, Handlers: reg, Node: node, Hostname: "h", Namespace: ns,
					Queues: []string{queue}, Concurrency: 3, Lease: lease, ClaimWait: 100 * time.Millisecond,
					Isolation: worker.IsolationConfig{TerminateGrace: 100 * time.Millisecond},
				})
				if err != nil {
					t.Fatal(err)
				}
				return w
			}
			ids := map[string]string{"g.inline": uuid.NewString(), "g.exec": uuid.NewString(), "g.iso": uuid.NewString()}
			var envs []broker.Envelope
			for name, id := range ids {
				args, _ := json.Marshal(isoArgs{Dir: dir})
				envs = append(envs, broker.Envelope{ID: id, Name: name, Queue: queue, Args: args, MaxRetries: -1, CreatedAt: time.Now()})
			}
			if err := be.b.PublishBatch(t.Context(), envs); err != nil {
				t.Fatal(err)
			}

			a := newWorker("a", be.a, be.ra)
			stopA := run(t, a)
			// Every task runs on A: the inline counter, and the pid files
			// of the exec task and the isolated one.
			testutil.Eventually(t, 20*time.Second, func() bool {
				inline.mu.Lock()
				n := inline.running[ids["g.inline"]]
				inline.mu.Unlock()
				execPids, _ := filepath.Glob(filepath.Join(dir, ids["g.exec"], "pid.*"))
				isoPids, _ := filepath.Glob(filepath.Join(dir, ids["g.iso"], "pid.*"))
				return n == 1 && len(execPids) == 2 && len(isoPids) == 1
			}, "the three tasks did not all start on worker A")

			be.freeze()
			frozeAt := time.Now()
			b := newWorker("b", be.b, be.rb)
			stopB := run(t, b)

			testutil.Eventually(t, 30*time.Second, func() bool {
				for _, id := range ids {
					st, err := be.rb.Get(t.Context(), id)
					if err != nil || st.State != result.Succeeded {
						return false
					}
				}
				return true
			}, "worker B did not complete the three tasks after A was partitioned")
			t.Logf("B completed all three %s after the partition began", time.Since(frozeAt).Round(time.Millisecond))

			inline.mu.Lock()
			overlaps := inline.overlaps
			inline.mu.Unlock()
			if len(overlaps) > 0 {
				t.Errorf("inline task %v ran on B while A's copy still ran", overlaps)
			}
			for _, name := range []string{"g.exec", "g.iso"} {
				found, _ := filepath.Glob(filepath.Join(dir, ids[name], "overlap.*"))
				for _, f := range found {
					t.Errorf("%s: B's copy started while a process of A's copy was alive (%s)", name, filepath.Base(f))
				}
			}
			if n := a.Counters().LeasesLost; n < 3 {
				t.Errorf("worker A counted %d lost leases, want 3", n)
			}
			be.thaw()
			stopB()
			stopA()
			for name, id := range ids {
				st, err := be.rb.Get(context.Background(), id)
				if err != nil || st.State != result.Succeeded {
					t.Errorf("%s after both workers stopped: %+v, %v; want succeeded", name, st, err)
				}
			}
		})
	}
}

// run starts w and returns a function that stops it (warm, then hard
// after 10s) and waits for Run to return.
func run(t *testing.T, w *worker.Worker) (stop func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- w.Run(context.Background()) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			w.Shutdown(worker.Warm)
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
				return
			case <-time.After(10 * time.Second):
			}
			w.Shutdown(worker.Hard)
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	select {
	case <-w.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("worker not ready within 20s")
	}
	return stop
}

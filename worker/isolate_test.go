package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/memory"
	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/internal/testutil"
	"github.com/stemhq/stem/result"
	"github.com/stemhq/stem/worker"
)

// hoard keeps memory alive in a child, for the memory guard tests.
var hoard [][]byte

func touch(n int) []byte {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		panic(err)
	}
	for i := 0; i < n; i += 4096 {
		b[i] = 1
	}
	return b
}

// isolatedRegistry is the registry of both the worker and its children.
func isolatedRegistry() *worker.Registry {
	r := worker.NewRegistry()
	iso := worker.TaskOptions{Isolated: true}
	r.MustRegister("iso.pid", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		if err := tc.Progress(0.5, map[string]string{"in": "child"}); err != nil {
			return nil, err
		}
		return os.Getpid(), nil
	}, iso)
	r.MustRegister("iso.spin", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		signal.Ignore(syscall.SIGTERM) // a child that ignores SIGTERM, too
		x := 0
		for { // a tight loop: no checkpoint, ever
			x++
		}
	}, iso)
	r.MustRegister("iso.coop", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		for {
			if err := tc.Heartbeat(); err != nil {
				return nil, err
			}
			time.Sleep(time.Millisecond) // the task's own work
		}
	}, iso)
	r.MustRegister("iso.crash", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		os.Exit(3)
		return nil, nil
	}, worker.TaskOptions{Isolated: true, MaxRetries: 1, RetryBackoff: time.Millisecond})
	r.MustRegister("iso.garbage", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		f := os.NewFile(4, "out")
		f.Write([]byte("this is not a frame at all"))
		select {}
	}, iso)
	// Memory is taken with mmap and touched, so the RSS grows by exactly
	// that much whatever the Go runtime (or the race detector) does.
	r.MustRegister("iso.hoard", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		hoard = append(hoard, touch(96<<20))
		return os.Getpid(), nil
	}, iso)
	r.MustRegister("iso.balloon", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		for { // allocates without bound
			hoard = append(hoard, touch(8<<20))
		}
	}, iso)
	r.MustRegister("iso.rss", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		b, err := os.ReadFile("/proc/self/status")
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, err := strconv.ParseInt(f[1], 10, 64)
				return kb * 1024, err
			}
		}
		return nil, errors.New("no VmRSS")
	}, iso)
	// iso.sleepers starts a shell whose grandchildren are a sleep in its
	// group, one that left the group with setsid, and a setsid orphan;
	// the child's pid and theirs are written to files in args.dir.
	r.MustRegister("iso.sleepers", func(tc worker.TaskContext, args json.RawMessage) (any, error) {
		var a struct{ Dir string }
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(a.Dir, "child"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			return nil, err
		}
		cmd := exec.Command("/bin/sh", "-c", sleepersScript(a.Dir))
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		// Handed to no one: the worker must kill it, not the handler.
		return nil, cmd.Wait()
	}, worker.TaskOptions{Isolated: true, TimeLimit: time.Hour})
	// iso.extend asks for a longer lease, again and again, until stopped.
	r.MustRegister("iso.extend", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		for {
			if err := tc.ExtendLease(time.Minute); err != nil {
				return nil, err
			}
			time.Sleep(10 * time.Millisecond) // the task's own work
		}
	}, iso)
	// iso.fds runs a command that says whether it holds descriptor
	// args.fd, and returns what it printed.
	r.MustRegister("iso.fds", func(tc worker.TaskContext, args json.RawMessage) (any, error) {
		var a struct{ FD int }
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, err
		}
		out, err := exec.Command("/bin/sh", "-c", fmt.Sprintf("readlink /proc/self/fd/%d || echo closed", a.FD)).Output()
		return strings.TrimSpace(string(out)), err
	}, iso)
	r.MustRegister("iso.fail", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		return nil, errors.New("child says no")
	}, iso)
	return r
}

func setupIsolated(t *testing.T, mod func(*worker.IsolationConfig)) (*ctlFixture, *worker.Worker) {
	f := setupControl(t)
	f.reg = isolatedRegistry()
	iso := worker.IsolationConfig{TerminateGrace: 200 * time.Millisecond}
	if mod != nil {
		mod(&iso)
	}
	w := f.worker("iso", func(c *worker.Config) { c.Isolation = iso; c.Concurrency = 2; c.Prefetch = 0 })
	f.start(w)
	return f, w
}

func childPID(t *testing.T, st result.TaskState) int {
	t.Helper()
	pid, err := strconv.Atoi(string(st.Result))
	if err != nil {
		t.Fatalf("result %q is not a pid", st.Result)
	}
	return pid
}

func TestIsolatedTaskRunsInAChild(t *testing.T) {
	f, _ := setupIsolated(t, nil)
	st := f.waitState(f.publish("iso.pid", 1, nil), result.Succeeded, 20*time.Second)[0]
	if pid := childPID(t, st); pid == os.Getpid() || pid == 0 {
		t.Fatalf("ran in pid %d (the worker is %d)", pid, os.Getpid())
	}
	if st.Progress != 0.5 {
		t.Fatalf("progress from the child not recorded: %+v", st)
	}
	st = f.waitState(f.publish("iso.fail", 1, nil), result.Failed, 20*time.Second)[0]
	if st.Error != "child says no" {
		t.Fatalf("error %q", st.Error)
	}
}

func TestMaxTasksPerChildRecycles(t *testing.T) {
	f, w := setupIsolated(t, func(c *worker.IsolationConfig) { c.MaxTasksPerChild = 1 })
	a := f.waitState(f.publish("iso.pid", 1, nil), result.Succeeded, 20*time.Second)[0]
	b := f.waitState(f.publish("iso.pid", 1, nil), result.Succeeded, 20*time.Second)[0]
	if childPID(t, a) == childPID(t, b) {
		t.Fatalf("two tasks ran in child %d with maxTasksPerChild=1", childPID(t, a))
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return statsOf(f, w).ChildRecycles[worker.RecycleMaxTasks] >= 1 }, "recycle not counted")
}

func statsOf(f *ctlFixture, w *worker.Worker) control.StatsData {
	res, err := f.requester().Do(context.Background(), "stats", nil, []string{w.ID()}, 5*time.Second)
	if err != nil || len(res.Replies) != 1 {
		f.t.Fatalf("stats: %+v %v", res, err)
	}
	var st control.StatsData
	json.Unmarshal(res.Replies[0].Data, &st)
	return st
}

// TestTerminateKillsNonCooperativeChild: a tight loop that never
// checkpoints (and ignores SIGTERM) is killed once the grace period after
// the terminate is over, and its state is revoked.
func TestTerminateKillsNonCooperativeChild(t *testing.T) {
	f, w := setupIsolated(t, nil)
	ids := f.publish("iso.spin", 1, nil)
	testutil.Eventually(t, 20*time.Second, func() bool { return w.Stats().InFlight == 1 }, "spin never started")
	t0 := time.Now()
	w.ApplyRevokes([]revoke.Entry{{Namespace: f.ns, TaskID: ids[0], Version: 1, Terminate: true, Reason: "runaway"}})
	testutil.Eventually(t, 5*time.Second, func() bool { return w.Stats().InFlight == 0 }, "spinning child not stopped")
	took := time.Since(t0)
	t.Logf("non-cooperative isolated task stopped %s after terminate (grace 200ms)", took)
	// The grace is honoured (a lower bound is deterministic); how soon
	// after it the kill lands is a figure for the benchmarks, not an
	// assertion that a loaded machine could break.
	if took < 200*time.Millisecond {
		t.Errorf("killed after %s, before the 200ms terminate grace", took)
	}
	st := f.waitState(ids, result.Revoked, 5*time.Second)[0]
	if st.Reason != "runaway" {
		t.Fatalf("state %+v", st)
	}
	// The pool replaced the child; the next task runs.
	f.waitState(f.publish("iso.pid", 1, nil), result.Succeeded, 20*time.Second)
}

func TestTerminateStopsCooperativeChildAtCheckpoint(t *testing.T) {
	f, w := setupIsolated(t, func(c *worker.IsolationConfig) { c.TerminateGrace = 10 * time.Second })
	ids := f.publish("iso.coop", 1, nil)
	testutil.Eventually(t, 20*time.Second, func() bool { return w.Stats().InFlight == 1 }, "coop never started")
	t0 := time.Now()
	w.ApplyRevokes([]revoke.Entry{{Namespace: f.ns, TaskID: ids[0], Version: 1, Terminate: true}})
	f.waitState(ids, result.Revoked, 5*time.Second)
	if took := time.Since(t0); took > 2*time.Second {
		t.Fatalf("cooperative child took %s (it should stop at its next checkpoint, not after the 10s grace)", took)
	}
}

func TestCrashingChildFailsTaskAndIsReplaced(t *testing.T) {
	f, _ := setupIsolated(t, nil)
	st := f.waitState(f.publish("iso.crash", 1, nil), result.Failed, 20*time.Second)[0]
	if st.Attempt != 1 || !strings.Contains(st.Error, "died while running the task: exit status 3") {
		t.Fatalf("state %+v (want a retried, then failed, task naming the exit)", st)
	}
	f.waitState(f.publish("iso.pid", 1, nil), result.Succeeded, 20*time.Second)
}

func TestGarbageOnProtocolPipe(t *testing.T) {
	f, _ := setupIsolated(t, nil)
	st := f.waitState(f.publish("iso.garbage", 1, nil), result.Failed, 20*time.Second)[0]
	if !strings.Contains(st.Error, "protocol error") {
		t.Fatalf("error %q", st.Error)
	}
	f.waitState(f.publish("iso.pid", 1, nil), result.Succeeded, 20*time.Second)
}

func TestMemoryGuards(t *testing.T) {
	// The limit is set above an idle child's RSS (which the race detector
	// inflates): baseline + 64 MiB.
	f0, _ := setupIsolated(t, nil)
	st0 := f0.waitState(f0.publish("iso.rss", 1, nil), result.Succeeded, 20*time.Second)[0]
	baseline, _ := strconv.ParseInt(string(st0.Result), 10, 64)
	t.Logf("idle child RSS: %d MiB", baseline>>20)
	f, w := setupIsolated(t, func(c *worker.IsolationConfig) { c.MaxMemoryPerChildBytes = baseline + 64<<20 })
	a := f.waitState(f.publish("iso.hoard", 1, nil), result.Succeeded, 20*time.Second)[0]
	b := f.waitState(f.publish("iso.pid", 1, nil), result.Succeeded, 20*time.Second)[0]
	if childPID(t, a) == childPID(t, b) {
		t.Fatal("a child over its memory limit took more work")
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return statsOf(f, w).ChildRecycles[worker.RecycleMaxMemory] >= 1 }, "memory recycle not counted")
	st := f.waitState(f.publish("iso.balloon", 1, nil), result.Failed, 30*time.Second)[0]
	if !strings.Contains(st.Error, "over twice max memory per child") {
		t.Fatalf("error %q", st.Error)
	}
	f.waitState(f.publish("iso.pid", 1, nil), result.Succeeded, 20*time.Second)
}

// sleepersScript starts three grandchildren of the isolation child and
// writes their pids to dir/a, dir/b and dir/c.
func sleepersScript(dir string) string {
	f := func(n string) string { return filepath.Join(dir, n) }
	return fmt.Sprintf(`sleep 300 & echo $! > %s
setsid sleep 300 & echo $! > %s
(setsid sleep 300 & echo $! > %s) &
wait`, f("a"), f("b"), f("c"))
}

// gone reports whether pid has exited (a zombie counts as exited).
func gone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && len(b) > i+2 && b[i+2] == 'Z'
}

// readPIDs waits until each of dir's files holds a pid, and kills what is
// left of them when the test ends, whatever its outcome.
func readPIDs(t *testing.T, dir string, names ...string) []int {
	t.Helper()
	pids := make([]int, len(names))
	for i, n := range names {
		testutil.Eventually(t, 20*time.Second, func() bool {
			b, err := os.ReadFile(filepath.Join(dir, n))
			if err != nil || !strings.HasSuffix(string(b), "\n") {
				return false
			}
			pids[i], err = strconv.Atoi(strings.TrimSpace(string(b)))
			return err == nil && pids[i] > 0
		}, "the task never wrote %s", n)
	}
	t.Cleanup(func() {
		for _, p := range pids {
			if !gone(p) {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
	})
	return pids
}

// isoWorkerEnv puts this test binary in "worker" mode (see TestMain): it
// runs a worker on an in-memory broker, publishes one iso.sleepers task
// for the directory named by the variable, and runs until killed.
const isoWorkerEnv = "STEM_TEST_ISO_WORKER_DIR"

func serveIsoWorkerIfRequested() {
	dir := os.Getenv(isoWorkerEnv)
	if dir == "" || os.Getenv(worker.ChildEnv) == "1" {
		return
	}
	eng := memory.New(memory.Options{})
	w, err := worker.New(worker.Config{Broker: eng, Results: eng, Registry: eng, Handlers: isolatedRegistry(), Node: "doomed", Hostname: "h",
		Concurrency: 1, Lease: time.Minute, ClaimWait: 50 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(70)
	}
	args, _ := json.Marshal(map[string]string{"dir": dir})
	if err := eng.Publish(context.Background(), broker.Envelope{ID: "t1", Name: "iso.sleepers", Queue: "default", Args: args, MaxRetries: -1, CreatedAt: time.Now()}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(70)
	}
	err = w.Run(context.Background())
	fmt.Fprintln(os.Stderr, "worker stopped:", err)
	os.Exit(1)
}

// TestIsolatedTaskDiesWithItsWorker kills -9 a worker (another process)
// while its isolated task runs a shell with grandchildren, one of which
// left the process group with setsid: within a second nothing of the task
// is left, the child included.
func TestIsolatedTaskDiesWithItsWorker(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	// A race-enabled binary sleeps a second in os.Exit while goroutines
	// still run (the abandoned handler does): not what is measured here.
	cmd.Env = append(os.Environ(), isoWorkerEnv+"="+dir, "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	pids := readPIDs(t, dir, "child", "a", "b", "c")
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-waited
	for i, p := range pids {
		if !testutil.Poll(time.Second, func() bool { return gone(p) }) {
			b, _ := os.ReadFile("/proc/" + strconv.Itoa(p) + "/stat")
			t.Fatalf("process %d (%s) of the isolated task outlived its worker by 1s: %s", p, []string{"child", "a", "b", "c"}[i], b)
		}
	}
}

// TestIsolatedTaskAfterItsBinaryWasReplaced: a package upgrade replaces
// (or removes) the worker's binary while the worker runs. The worker's
// isolation children are started from the program the worker runs, not
// from whatever the path names now: its isolated tasks still run.
func TestIsolatedTaskAfterItsBinaryWasReplaced(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(t.TempDir(), "stem")
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), isoWorkerEnv+"="+dir, "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-waited
	})
	// The upgrade: the old file is gone (dpkg renames the new one over it).
	if err := os.Remove(exe); err != nil {
		t.Fatal(err)
	}
	pids := readPIDs(t, dir, "child", "a", "b", "c")
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for _, p := range pids {
		if !testutil.Poll(time.Second, func() bool { return gone(p) }) {
			t.Fatalf("process %d of the isolated task outlived its worker by 1s", p)
		}
	}
}

// TestIsolatedHandlersSubprocessesGetNoInheritedDescriptors: a descriptor
// the worker inherited without close-on-exec (from whatever started it)
// reaches neither the isolation child's handlers nor what they start.
func TestIsolatedHandlersSubprocessesGetNoInheritedDescriptors(t *testing.T) {
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(p[0])
	defer syscall.Close(p[1])
	// As if inherited: no close-on-exec on the write end.
	if _, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(p[1]), syscall.F_SETFD, 0); e != 0 {
		t.Fatal(e)
	}
	f, _ := setupIsolated(t, nil)
	ids := f.publish("iso.fds", 1, func(e *broker.Envelope) { e.Args = json.RawMessage(fmt.Sprintf(`{"fd":%d}`, p[1])) })
	st := f.waitState(ids, result.Succeeded, 20*time.Second)[0]
	if string(st.Result) != `"closed"` {
		t.Fatalf("a handler's command inherited the worker's descriptor %d: %s", p[1], st.Result)
	}
}

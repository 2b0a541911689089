package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stemhq/stem/internal/testutil"
	"github.com/stemhq/stem/worker"
)

// gone reports whether pid has exited (a zombie waiting for its reaper
// counts as exited).
func gone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && len(b) > i+2 && b[i+2] == 'Z'
}

// readPIDs waits until every file holds a pid and returns them.
func readPIDs(t *testing.T, files ...string) []int {
	t.Helper()
	pids := make([]int, len(files))
	for i, f := range files {
		testutil.Eventually(t, 10*time.Second, func() bool {
			b, err := os.ReadFile(f)
			if err != nil || !strings.HasSuffix(string(b), "\n") {
				return false
			}
			pids[i], err = strconv.Atoi(strings.TrimSpace(string(b)))
			return err == nil && pids[i] > 0
		}, "the task never wrote %s", f)
	}
	t.Cleanup(func() { // never leave a sleeper behind, even on failure
		for _, p := range pids {
			if !gone(p) {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
	})
	return pids
}

func assertGone(t *testing.T, within time.Duration, pids ...int) {
	t.Helper()
	for _, p := range pids {
		testutil.Eventually(t, within, func() bool { return gone(p) }, "process %d of the task is still alive", p)
	}
}

// sleepers is a command that starts a grandchild in the group, one that
// leaves the group and session with setsid, and an orphan (its parent
// exits at once) that setsid's too; each writes its pid to a file in dir.
func sleepers(dir string) ([]string, []string) {
	f := func(n string) string { return filepath.Join(dir, n) }
	script := fmt.Sprintf(`trap '' TERM
sleep 300 & echo $! > %s
setsid sleep 300 & echo $! > %s
(setsid sleep 300 & echo $! > %s) &
wait`, f("a"), f("b"), f("c"))
	return []string{"/bin/sh", "-c", script}, []string{f("a"), f("b"), f("c")}
}

type execResult struct {
	v   any
	err error
}

func runAsync(d Def, o ExecOptions, tc worker.TaskContext, args json.RawMessage) chan execResult {
	ch := make(chan execResult, 1)
	go func() {
		v, err := Exec(d, o)(tc, args)
		ch <- execResult{v, err}
	}()
	return ch
}

func waitResult(t *testing.T, ch chan execResult, within time.Duration) execResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(within):
		t.Fatalf("exec task did not return within %s", within)
		return execResult{}
	}
}

// TestExecLeaseLostKillsAtOnce: a task whose lease is lost is killed with
// SIGKILL at once, grandchildren included (even those that left the
// process group), with no KillGrace.
func TestExecLeaseLostKillsAtOnce(t *testing.T) {
	t.Parallel()
	cmd, files := sleepers(t.TempDir())
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	ch := runAsync(Def{Name: "t", Command: cmd}, ExecOptions{KillGrace: time.Hour}, &fakeTC{ctx: ctx}, nil)
	pids := readPIDs(t, files...)
	t0 := time.Now()
	cancel(worker.ErrLeaseLost)
	r := waitResult(t, ch, 5*time.Second)
	if r.err == nil {
		t.Fatal("a task whose lease was lost succeeded")
	}
	assertGone(t, time.Second, pids...)
	if took := time.Since(t0); took > time.Second {
		t.Fatalf("lease loss took %s to kill the task (KillGrace is an hour: it must not apply)", took)
	}
}

// TestExecTerminateKillsEscapedGrandchildren: after KillGrace, even a
// grandchild that left the process group with setsid is killed.
func TestExecTerminateKillsEscapedGrandchildren(t *testing.T) {
	t.Parallel()
	cmd, files := sleepers(t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tc := &fakeTC{ctx: ctx}
	ch := runAsync(Def{Name: "t", Command: cmd}, ExecOptions{KillGrace: 100 * time.Millisecond}, tc, nil)
	pids := readPIDs(t, files...)
	tc.revoked = true
	cancel()
	if r := waitResult(t, ch, 5*time.Second); !errors.Is(r.err, worker.ErrTaskRevoked) {
		t.Fatalf("got %v, want ErrTaskRevoked", r.err)
	}
	assertGone(t, time.Second, pids...)
}

// TestExecTimeLimitKillsTree: a time limit stops the task and all it
// started.
func TestExecTimeLimitKillsTree(t *testing.T) {
	t.Parallel()
	cmd, files := sleepers(t.TempDir())
	// Long enough for the script to write its pids on a loaded machine
	// (the limit is what is tested, not how soon it falls).
	ctx, cancel := context.WithTimeoutCause(context.Background(), 3*time.Second, errors.New("time limit 3s exceeded"))
	defer cancel()
	ch := runAsync(Def{Name: "t", Command: cmd}, ExecOptions{KillGrace: 100 * time.Millisecond}, &fakeTC{ctx: ctx}, nil)
	pids := readPIDs(t, files...)
	if r := waitResult(t, ch, 5*time.Second); !errors.Is(r.err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a deadline error", r.err)
	}
	assertGone(t, time.Second, pids...)
}

// TestExecCommandExitKillsLeftovers: when the command exits, what it left
// running is killed, and the task ends at once with the command's result.
func TestExecCommandExitKillsLeftovers(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := filepath.Join(dir, "a")
	d := Def{Name: "t", Command: []string{"/bin/sh", "-c", `setsid sleep 300 > /dev/null 2>&1 & echo $! > ` + f + `; sleep 300 & echo '{"ok":true}'`}}
	t0 := time.Now()
	v, err := Exec(d, ExecOptions{})(&fakeTC{ctx: context.Background()}, nil)
	if err != nil || string(v.(json.RawMessage)) != `{"ok":true}` {
		t.Fatalf("got %v %v", v, err)
	}
	if took := time.Since(t0); took > 5*time.Second {
		t.Fatalf("the task took %s: it waited for its leftovers", took)
	}
	assertGone(t, time.Second, readPIDs(t, f)...)
}

// TestExecReportsSignalAndExitCode: the worker's error text is the
// command's own, not the supervisor's.
func TestExecReportsSignalAndExitCode(t *testing.T) {
	t.Parallel()
	tests := []struct{ script, want string }{
		{`echo oops >&2; kill -KILL $$`, "/bin/sh: signal: killed: oops"},
		{`kill -TERM $$`, "/bin/sh: signal: terminated"},
		{`kill -QUIT $$`, "/bin/sh: signal: quit"},
		{`exit 42`, "/bin/sh: exit status 42"},
	}
	for _, tt := range tests {
		_, err := Exec(Def{Name: "t", Command: []string{"/bin/sh", "-c", tt.script}}, ExecOptions{})(&fakeTC{ctx: context.Background()}, nil)
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s: got %v, want %q", tt.script, err, tt.want)
		}
	}
}

func TestExecStartErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	noexec := filepath.Join(dir, "noexec")
	if err := os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		d    Def
		want string
	}{
		{Def{Name: "t", Command: []string{"no-such-command-stem"}}, `start no-such-command-stem: exec: "no-such-command-stem": executable file not found in $PATH`},
		{Def{Name: "t", Command: []string{noexec}}, "start " + noexec + ": permission denied"},
		{Def{Name: "t", Command: []string{"/bin/true"}, Dir: filepath.Join(dir, "missing")}, "start /bin/true: chdir " + filepath.Join(dir, "missing") + ": no such file or directory"},
	}
	for _, tt := range tests {
		_, err := Exec(tt.d, ExecOptions{})(&fakeTC{ctx: context.Background()}, nil)
		if err == nil || err.Error() != tt.want {
			t.Errorf("got %v, want %q", err, tt.want)
		}
	}
}

// TestExecBigArgsOnStdinOnly: arguments over MaxEnvArgs (here 1 MiB) are
// not put in the environment (E2BIG) but arrive whole on stdin, with
// STEM_TASK_ARGS_SIZE saying so.
func TestExecBigArgsOnStdinOnly(t *testing.T) {
	t.Parallel()
	big, _ := json.Marshal(map[string]string{"blob": strings.Repeat("x", 1<<20)})
	d := Def{Name: "t", Command: []string{"/bin/sh", "-c", `printf '%s %s ' "${STEM_TASK_ARGS-unset}" "$STEM_TASK_ARGS_SIZE"; wc -c | tr -d ' '`}}
	v, err := Exec(d, ExecOptions{})(&fakeTC{ctx: context.Background()}, big)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("unset %d %d\n", len(big), len(big))
	if v != want {
		t.Fatalf("got %.200q, want %q", v, want)
	}
	// At the limit, the environment still carries them.
	small := json.RawMessage(`"` + strings.Repeat("y", MaxEnvArgs-2) + `"`)
	v, err = Exec(d, ExecOptions{})(&fakeTC{ctx: context.Background()}, small)
	if err != nil || !strings.HasPrefix(v.(string), string(small)+"  ") {
		t.Fatalf("got %.100q %v", v, err)
	}
}

// BenchmarkExecTrue measures an exec task running /bin/true under its
// supervisor; BenchmarkExecTrueUnsupervised is the plain fork and exec it
// replaced, for comparison. The supervisor is this test binary, or the
// binary named by STEM_BENCH_SUPERVISOR (a built stem, whose package
// initialisation is most of the cost).
func BenchmarkExecTrue(b *testing.B) {
	h := Exec(Def{Name: "t", Command: []string{"/bin/true"}}, ExecOptions{Supervisor: os.Getenv("STEM_BENCH_SUPERVISOR")})
	tc := &fakeTC{ctx: context.Background()}
	for b.Loop() {
		if _, err := h(tc, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkExecTrueUnsupervised(b *testing.B) {
	for b.Loop() {
		cmd := exec.Command("/bin/true")
		cmd.Stdin = strings.NewReader("{}")
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
	}
}

// leaseTC is a fakeTC whose lease can be lost after its context was
// cancelled for another reason (worker.LeaseWatcher).
type leaseTC struct {
	fakeTC
	lost chan struct{}
}

func (l *leaseTC) LeaseLost() <-chan struct{} { return l.lost }

// TestExecLeaseLostDuringGraceKillsAtOnce: a task asked to stop (revoke,
// soft shutdown, time limit) that ignores SIGTERM waits out KillGrace; if
// its lease is lost meanwhile, it is killed at once, grandchildren
// included: another worker may claim the task.
func TestExecLeaseLostDuringGraceKillsAtOnce(t *testing.T) {
	t.Parallel()
	cmd, files := sleepers(t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tc := &leaseTC{fakeTC: fakeTC{ctx: ctx}, lost: make(chan struct{})}
	var _ worker.LeaseWatcher = tc
	ch := runAsync(Def{Name: "t", Command: cmd}, ExecOptions{KillGrace: time.Hour}, tc, nil)
	pids := readPIDs(t, files...)
	tc.revoked = true
	cancel() // SIGTERM, ignored by the script: KillGrace (1h) starts
	close(tc.lost)
	r := waitResult(t, ch, 5*time.Second)
	if r.err == nil {
		t.Fatal("a task whose lease was lost succeeded")
	}
	assertGone(t, time.Second, pids...)
}

// TestExecCommandGetsNoInheritedDescriptors: a descriptor the worker
// inherited without close-on-exec (from whatever started it: a shell, a
// CI runner, `multi start` run from a script) does not reach the task's
// command, which gets stdin, stdout and stderr only.
func TestExecCommandGetsNoInheritedDescriptors(t *testing.T) {
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
	d := Def{Name: "t", Command: []string{"/bin/sh", "-c", fmt.Sprintf(`readlink /proc/self/fd/%d || echo closed`, p[1])}}
	v, err := Exec(d, ExecOptions{})(&fakeTC{ctx: context.Background()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if out := strings.TrimSpace(fmt.Sprint(v)); out != "closed" {
		t.Fatalf("the command inherited the worker's descriptor %d: %s", p[1], out)
	}
}

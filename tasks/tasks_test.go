package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/internal/testutil"
	"github.com/stemhq/stem/worker"
)

const sample = `# stem tasks
tasks:
  reports.build:
    command: ["/bin/sh", "-c", "echo built"]
    queue: reports
    timeout: 10m
    max_retries: 3
    env:
      A: "1"
  echo.json:
    command: [/bin/cat]
`

func TestParseSample(t *testing.T) {
	t.Parallel()
	f, err := Parse("tasks.yaml", []byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Tasks) != 2 || f.Tasks[0].Name != "echo.json" || f.Tasks[1].Queue != "reports" ||
		f.Tasks[1].Timeout != 10*time.Minute || f.Tasks[1].MaxRetries != 3 || f.Tasks[1].Env["A"] != "1" || f.Tasks[1].Line != 3 {
		t.Fatalf("parsed %+v", f.Tasks)
	}
}

func TestParseErrorsNameFileAndLine(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, src, want string }{
		{"unknown key", "tasks:\n  a:\n    command: [x]\n    retries: 3\n", "t.yaml:4: task \"a\": unknown key \"retries\""},
		{"bad duration", "tasks:\n  a:\n    command: [x]\n    timeout: 10\n", "t.yaml:4: task \"a\": timeout: \"10\" is not a Go duration"},
		{"missing command", "tasks:\n  a:\n    queue: q\n", "t.yaml:2: task \"a\": missing 'command'"},
		{"empty command", "tasks:\n  a:\n    command: []\n", "t.yaml:3: task \"a\": command: must be a non-empty list"},
		{"syntax", "tasks:\n  a:\n    command: [x\n", "t.yaml:"},
		{"reserved", "tasks:\n  stem.echo:\n    command: [x]\n", "t.yaml:2: task name \"stem.echo\": the stem. prefix is reserved"},
		{"duplicate", "tasks:\n  a:\n    command: [x]\n  a:\n    command: [y]\n", "t.yaml:4: task \"a\" defined twice (first on line 2)"},
		{"top key", "jobs: {}\n", "t.yaml:1: unknown key \"jobs\""},
		{"negative retries", "tasks:\n  a:\n    command: [x]\n    max_retries: -1\n", "t.yaml:4: task \"a\": max_retries: must be 0 or more"},
	}
	for _, tt := range tests {
		_, err := Parse("t.yaml", []byte(tt.src))
		var ce *stem.ConfigError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want a config error containing %q", tt.name, err, tt.want)
		}
	}
}

// fakeTC is a TaskContext for handlers run outside a worker.
type fakeTC struct {
	ctx     context.Context
	revoked bool
}

func (f *fakeTC) Context() context.Context { return f.ctx }
func (f *fakeTC) ID() string               { return "task-1" }
func (f *fakeTC) Name() string             { return "t" }
func (f *fakeTC) Queue() string            { return "default" }
func (f *fakeTC) Attempt() int             { return 0 }
func (f *fakeTC) Heartbeat() error {
	if f.revoked {
		return worker.ErrTaskRevoked
	}
	return nil
}
func (f *fakeTC) ExtendLease(time.Duration) error { return nil }
func (f *fakeTC) Progress(float64, any) error     { return nil }

func TestExecPassesArgsAndEnv(t *testing.T) {
	t.Parallel()
	d := Def{Name: "t", Command: []string{"/bin/sh", "-c", `read -r in; printf '{"stdin":%s,"id":"%s","env":"%s","argsEnv":%s}' "$in" "$STEM_TASK_ID" "$A" "$STEM_TASK_ARGS"`}, Env: map[string]string{"A": "x"}}
	v, err := Exec(d, ExecOptions{Environ: []string{"PATH=/usr/bin:/bin", "NOTIFY_SOCKET=/run/x"}})(&fakeTC{ctx: context.Background()}, json.RawMessage(`{"n":1}`))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := v.(json.RawMessage)
	if string(raw) != `{"stdin":{"n":1},"id":"task-1","env":"x","argsEnv":{"n":1}}` {
		t.Fatalf("got %s", raw)
	}
}

func TestExecDropsNotifySocket(t *testing.T) {
	t.Parallel()
	d := Def{Name: "t", Command: []string{"/bin/sh", "-c", `echo "${NOTIFY_SOCKET:-unset}${WATCHDOG_USEC:-}"`}}
	v, err := Exec(d, ExecOptions{Environ: []string{"NOTIFY_SOCKET=/run/x", "WATCHDOG_USEC=1"}})(&fakeTC{ctx: context.Background()}, nil)
	if err != nil || v != "unset\n" {
		t.Fatalf("got %v %v", v, err)
	}
}

func TestExecFailureCarriesStderrTail(t *testing.T) {
	t.Parallel()
	d := Def{Name: "t", Command: []string{"/bin/sh", "-c", `head -c 100000 /dev/zero | tr '\0' a >&2; echo boom-at-the-end >&2; exit 3`}}
	_, err := Exec(d, ExecOptions{MaxStderr: 64})(&fakeTC{ctx: context.Background()}, nil)
	if err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "boom-at-the-end") || len(err.Error()) > 200 {
		t.Fatalf("got %v", err)
	}
}

// TestExecBoundsStdout runs a task printing 20 MB and checks the result is
// bounded to MaxStdout.
func TestExecBoundsStdout(t *testing.T) {
	t.Parallel()
	d := Def{Name: "t", Command: []string{"/bin/sh", "-c", `head -c 20000000 /dev/zero`}}
	v, err := Exec(d, ExecOptions{MaxStdout: 1024})(&fakeTC{ctx: context.Background()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := v.(map[string]any)
	if m["truncated"] != true || len(m["stdout"].(string)) != 1024 || m["bytes"].(int64) != 20000000 {
		t.Fatalf("got truncated=%v len=%d bytes=%v", m["truncated"], len(m["stdout"].(string)), m["bytes"])
	}
}

// TestExecTerminateKillsGroup cancels a task whose process group ignores
// SIGTERM and checks the whole group is killed after the grace period.
func TestExecTerminateKillsGroup(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	script := `trap '' TERM; sleep 1000 & echo $! > ` + pidFile + `; wait`
	d := Def{Name: "t", Command: []string{"/bin/sh", "-c", script}}
	ctx, cancel := context.WithCancel(context.Background())
	tc := &fakeTC{ctx: ctx}
	done := make(chan error, 1)
	go func() {
		_, err := Exec(d, ExecOptions{KillGrace: 100 * time.Millisecond})(tc, nil)
		done <- err
	}()
	var childPID string
	testutil.Eventually(t, 5*time.Second, func() bool {
		b, err := os.ReadFile(pidFile)
		childPID = strings.TrimSpace(string(b))
		return err == nil && childPID != ""
	}, "the task never started its child")
	tc.revoked = true
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, worker.ErrTaskRevoked) {
			t.Fatalf("got %v, want ErrTaskRevoked", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("exec task did not stop within 5s of terminate")
	}
	testutil.Eventually(t, 2*time.Second, func() bool {
		if _, err := os.Stat("/proc/" + childPID); os.IsNotExist(err) {
			return true
		}
		b, _ := os.ReadFile("/proc/" + childPID + "/stat")
		return strings.Contains(string(b), ") Z ") // a zombie waiting for init: dead
	}, "grandchild %s survived the group kill", childPID)
}

func TestBuiltins(t *testing.T) {
	t.Parallel()
	r := worker.NewRegistry()
	if err := RegisterBuiltins(r); err != nil {
		t.Fatal(err)
	}
	tc := &fakeTC{ctx: context.Background()}
	h, _ := r.Lookup(Echo)
	if v, err := h.Run(tc, json.RawMessage(`{"a":1}`)); err != nil || string(v.(json.RawMessage)) != `{"a":1}` {
		t.Fatalf("echo: %v %v", v, err)
	}
	h, _ = r.Lookup(Fail)
	if _, err := h.Run(tc, json.RawMessage(`{"message":"nope","permanent":true}`)); err == nil || !errors.Is(err, worker.ErrNoRetry) || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("fail: %v", err)
	}
	h, _ = r.Lookup(Sleep)
	if _, err := h.Run(tc, json.RawMessage(`{"duration":"nope"}`)); err == nil {
		t.Fatal("sleep accepted a bad duration")
	}
	if v, err := h.Run(tc, json.RawMessage(`{"duration":"10ms"}`)); err != nil {
		t.Fatalf("sleep: %v %v", v, err)
	}
	tc.revoked = true
	if _, err := h.Run(tc, json.RawMessage(`{"duration":"1h"}`)); !errors.Is(err, worker.ErrTaskRevoked) {
		t.Fatalf("sleep did not stop on revoke: %v", err)
	}
}

package daemon

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-time.After(10 * time.Millisecond)
	}
}

func fileContains(path, s string) func() bool {
	return func() bool {
		data, _ := os.ReadFile(path)
		return strings.Contains(string(data), s)
	}
}

// node builds a Node under dir running script with sh.
func node(dir, name, script string, env ...string) Node {
	return Node{
		Name:    name,
		Pidfile: filepath.Join(dir, "run", name+".pid"),
		Logfile: filepath.Join(dir, "log", name+".log"),
		Argv:    []string{"sh", "-c", script},
		Env:     append([]string{"PATH=" + os.Getenv("PATH"), "STEM_WORKER_NODE=" + name}, env...),
	}
}

// cleanupNodes kills whatever the nodes still run at the end of a test.
func cleanupNodes(t *testing.T, s Supervisor, nodes ...Node) {
	t.Cleanup(func() { s.Kill(nodes) })
}

func TestSupervisorLifecycle(t *testing.T) {
	dir := t.TempDir()
	var s Supervisor
	script := `echo "started $STEM_WORKER_NODE fd=$STEM_WORKER_PIDFILE_FD notify=${NOTIFY_SOCKET:-none}"; echo oops >&2; trap 'kill $!; exit 0' TERM; sleep 1000 & wait`
	nodes := []Node{node(dir, "alpha", script, "NOTIFY_SOCKET=/run/systemd/notify"), node(dir, "beta", script)}
	cleanupNodes(t, s, nodes...)
	for _, n := range nodes {
		r := s.Start(n)
		if r.Err != nil || r.State != Running || r.PID == 0 {
			t.Fatalf("Start(%s) = %+v", n.Name, r)
		}
	}
	for _, n := range nodes {
		waitFor(t, n.Name+"'s log", fileContains(n.Logfile, "started "+n.Name+" fd=3 notify=none"))
		waitFor(t, n.Name+"'s stderr in the log", fileContains(n.Logfile, "oops"))
		if r := s.Status(n); r.State != Running || r.Err != nil || r.Since.IsZero() {
			t.Fatalf("Status(%s) = %+v", n.Name, r)
		}
	}
	r := s.Start(nodes[0])
	if r.Err == nil || r.State != Running || !strings.Contains(r.Err.Error(), "already running") {
		t.Fatalf("second Start = %+v", r)
	}
	results := s.Stop(nodes, 10*time.Second)
	for i, r := range results {
		if r.Err != nil || r.State != NotRunning || r.Msg != "stopped" || r.Node != nodes[i].Name {
			t.Fatalf("Stop = %+v", r)
		}
		if _, err := os.Stat(nodes[i].Pidfile); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("pidfile of %s left after stop", r.Node)
		}
		if st := s.Status(nodes[i]); st.State != NotRunning || st.State.LSBCode() != 3 {
			t.Fatalf("Status after stop = %+v", st)
		}
	}
	// Stopping again is fine: nothing runs.
	if r := s.Stop(nodes[:1], time.Second)[0]; r.Err != nil || r.Msg != "not running" {
		t.Fatalf("second Stop = %+v", r)
	}
}

func TestSupervisorStopEscalatesToKill(t *testing.T) {
	dir := t.TempDir()
	var s Supervisor
	// An ignored signal stays ignored across exec: sleep ignores SIGTERM.
	n := node(dir, "stubborn", `trap "" TERM; echo up; while :; do sleep 0.1; done`)
	cleanupNodes(t, s, n)
	if r := s.Start(n); r.Err != nil {
		t.Fatal(r.Err)
	}
	waitFor(t, "the node", fileContains(n.Logfile, "up"))
	r := s.Stop([]Node{n}, 100*time.Millisecond)[0]
	if r.Err != nil || !strings.Contains(r.Msg, "SIGKILL after 100ms") {
		t.Fatalf("Stop = %+v", r)
	}
	if _, err := os.Stat(n.Pidfile); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("pidfile left")
	}
}

func TestSupervisorKill(t *testing.T) {
	dir := t.TempDir()
	var s Supervisor
	n := node(dir, "k", "")
	n.Argv = []string{"sleep", "1000"}
	cleanupNodes(t, s, n)
	r := s.Start(n)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	if k := s.Kill([]Node{n})[0]; k.Err != nil || k.Msg != "killed" {
		t.Fatalf("Kill = %+v", k)
	}
	if alive, _ := (Proc{}).Alive(r.PID); alive {
		t.Fatal("process alive after Kill")
	}
}

// TestSupervisorRefusesStranger: a pidfile naming a PID that now belongs to
// another process is never signalled; stop reports it and cleans the file.
func TestSupervisorRefusesStranger(t *testing.T) {
	dir := t.TempDir()
	var s Supervisor
	stranger := startSleeper(t)
	n := node(dir, "alpha", "exit 0")
	must(t, os.MkdirAll(filepath.Dir(n.Pidfile), 0o755))
	must(t, os.WriteFile(n.Pidfile, []byte(strconv.Itoa(stranger.Process.Pid)+"\n"), 0o644))
	old := time.Now().Add(-time.Hour)
	must(t, os.Chtimes(n.Pidfile, old, old))

	st := s.Status(n)
	if st.State != Reused || st.State.LSBCode() != 1 || st.Err == nil {
		t.Fatalf("Status = %+v", st)
	}
	for _, r := range []Result{s.Stop([]Node{n}, time.Second)[0]} {
		if r.Err != nil || !strings.Contains(r.Msg, "not signalled") || !strings.Contains(r.Stale, "reused") {
			t.Fatalf("Stop = %+v", r)
		}
	}
	if alive, _ := (Proc{}).Alive(stranger.Process.Pid); !alive {
		t.Fatal("the stranger was killed")
	}
	if _, err := os.Stat(n.Pidfile); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("stale pidfile not removed")
	}
	// Kill refuses the same way.
	must(t, os.WriteFile(n.Pidfile, []byte(strconv.Itoa(stranger.Process.Pid)+"\n"), 0o644))
	if r := s.Kill([]Node{n})[0]; !strings.Contains(r.Msg, "not signalled") {
		t.Fatalf("Kill = %+v", r)
	}
	if alive, _ := (Proc{}).Alive(stranger.Process.Pid); !alive {
		t.Fatal("the stranger was killed")
	}
}

func TestSupervisorStartCleansStale(t *testing.T) {
	dir := t.TempDir()
	var s Supervisor
	n := node(dir, "alpha", "")
	n.Argv = []string{"sleep", "1000"}
	cleanupNodes(t, s, n)
	must(t, os.MkdirAll(filepath.Dir(n.Pidfile), 0o755))
	must(t, os.WriteFile(n.Pidfile, []byte("garbage\n"), 0o644))
	if st := s.Status(n); st.State != Invalid || st.State.LSBCode() != 1 {
		t.Fatalf("Status = %+v", st)
	}
	r := s.Start(n)
	if r.Err != nil || !strings.Contains(r.Stale, "not a PID") {
		t.Fatalf("Start = %+v", r)
	}
	if st := s.Status(n); st.State != Running {
		t.Fatalf("Status = %+v", st)
	}
}

func TestSupervisorDeadNodeLeavesPidfile(t *testing.T) {
	dir := t.TempDir()
	var s Supervisor
	n := node(dir, "brief", "exit 3")
	r := s.Start(n)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	waitFor(t, "the node to exit", func() bool { return s.Status(n).State == Dead })
	if code := s.Status(n).State.LSBCode(); code != 1 {
		t.Fatalf("LSB code %d, want 1", code)
	}
}

func TestSupervisorStartErrors(t *testing.T) {
	dir := t.TempDir()
	var s Supervisor
	n := node(dir, "x", "")
	n.Argv = []string{"/nonexistent/stem-worker"}
	r := s.Start(n)
	if r.Err == nil || !strings.Contains(r.Err.Error(), "/nonexistent/stem-worker") {
		t.Fatalf("Start = %+v", r)
	}
	if _, err := os.Stat(n.Pidfile); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("pidfile left after a failed start")
	}
	entries, _ := os.ReadDir(filepath.Dir(n.Pidfile))
	if len(entries) != 0 {
		t.Fatalf("left %d files in the pid directory", len(entries))
	}
	n = node(dir, "y", "exit 0")
	n.Logfile = "/dev/null/y.log"
	if r := s.Start(n); r.Err == nil || !strings.Contains(r.Err.Error(), "/dev/null") {
		t.Fatalf("Start with a log under a file = %+v", r)
	}
	n.Argv = nil
	if r := s.Start(n); r.Err == nil {
		t.Fatal("Start without a command succeeded")
	}
}

func TestMakeDirs(t *testing.T) {
	dir := t.TempDir()
	n := Node{Pidfile: filepath.Join(dir, "a/b/x.pid"), Logfile: filepath.Join(dir, "c/x.log")}
	must(t, MakeDirs(n))
	for _, d := range []string{"a/b", "c"} {
		if st, err := os.Stat(filepath.Join(dir, d)); err != nil || !st.IsDir() {
			t.Fatalf("%s not created", d)
		}
	}
	err := MakeDirs(Node{Logfile: "/dev/null/sub/x.log"})
	if err == nil || !strings.Contains(err.Error(), "logfile directory /dev/null/sub") || !errors.Is(err, syscall.ENOTDIR) {
		t.Fatalf("MakeDirs under a file = %v", err)
	}
}

package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/stemhq/stem/daemon"
)

// TestScriptsDaemon runs the black-box scripts of the daemon toolkit
// (testdata/daemon): worker multi, healthcheck, diagnose, routing. They
// need no broker.
//
// Besides the shared commands (waitfor, signal), scripts get:
//
//	stranger PIDFILE   start a process that is not a node ("sleep"), write
//	                   its PID to PIDFILE as a stale pidfile would (unlocked,
//	                   written an hour ago), and set $STRANGER_PID
//	forge PIDFILE      like stranger, but the pidfile is fresh and this test
//	                   process holds its lock until the script ends, as an
//	                   attacker who can write in the pid directory would
//	alive PID          succeed if PID is a live process (! alive: if not)
//
// Every process a script leaves behind in a pidfile under $WORK is killed
// (after an identity check) when the script ends, and so are strangers.
func TestScriptsDaemon(t *testing.T) {
	p := scriptParams(t, "testdata/daemon", "")
	setup := p.Setup
	p.Setup = func(e *testscript.Env) error {
		if err := setup(e); err != nil {
			return err
		}
		work := e.WorkDir
		e.Defer(func() { killNodesUnder(work) })
		return nil
	}
	p.Cmds["stranger"] = cmdStranger
	p.Cmds["alive"] = cmdAlive
	p.Cmds["forge"] = cmdForge
	testscript.Run(t, p)
}

// killNodesUnder kills the running node of every pidfile under dir.
func killNodesUnder(dir string) {
	var proc daemon.Proc
	_ = filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() || !strings.HasSuffix(path, ".pid") {
			return nil
		}
		in := proc.Inspect(path)
		if in.State == daemon.Running {
			_ = proc.Signal(in.Pidfile.PID, in.Process.StartTicks, syscall.SIGKILL)
			proc.WaitExit(in.Pidfile.PID, in.Process.StartTicks, time.Now().Add(5*time.Second))
		}
		return nil
	})
}

func cmdStranger(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: stranger PIDFILE")
	}
	cmd := exec.Command("sleep", "1000")
	ts.Check(cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	ts.Defer(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	path := ts.MkAbs(args[0])
	ts.Check(os.MkdirAll(filepath.Dir(path), 0o755))
	ts.Check(os.WriteFile(path, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644))
	old := time.Now().Add(-time.Hour)
	ts.Check(os.Chtimes(path, old, old))
	ts.Setenv("STRANGER_PID", strconv.Itoa(cmd.Process.Pid))
}

func cmdAlive(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 {
		ts.Fatalf("usage: alive PID")
	}
	pid, err := strconv.Atoi(args[0])
	ts.Check(err)
	alive, err := daemon.Proc{}.Alive(pid)
	ts.Check(err)
	if alive == neg {
		ts.Fatalf("PID %d alive: %v", pid, alive)
	}
}

func cmdForge(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: forge PIDFILE")
	}
	cmdStranger(ts, false, args)
	path := ts.MkAbs(args[0])
	now := time.Now()
	ts.Check(os.Chtimes(path, now, now))
	f, err := os.Open(path)
	ts.Check(err)
	ts.Defer(func() { f.Close() })
	ts.Check(syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB))
}

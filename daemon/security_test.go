package daemon

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startStranger starts `sleep 300`, a process that is no node, optionally
// holding extra (inherited descriptors), and stops it at the end of the
// test.
func startStranger(t *testing.T, extra ...*os.File) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "300")
	cmd.ExtraFiles = extra
	must(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	return cmd
}

// forge writes a pidfile at path naming pid, in the current format with
// pid's true start time and boot id and the given program, as an attacker
// who can read /proc would.
func forge(t *testing.T, path string, pid int, exe ExeID) {
	t.Helper()
	rec, err := record(pid, exe)
	must(t, err)
	must(t, os.MkdirAll(filepath.Dir(path), 0o750))
	must(t, os.WriteFile(path, formatPidfile(pid, rec), 0o640))
}

// lockFile opens path and takes the flock a node would hold, from this
// process; the lock goes at the end of the test.
func lockFile(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	t.Cleanup(func() { f.Close() })
	must(t, syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB))
	return f
}

func assertAlive(t *testing.T, pid int) {
	t.Helper()
	if alive, err := (Proc{}).Alive(pid); err != nil || !alive {
		t.Fatalf("PID %d was signalled: alive=%v, %v", pid, alive, err)
	}
}

func assertRefused(t *testing.T, what string, err error, want ...string) {
	t.Helper()
	var re *RefusedError
	if !errors.As(err, &re) {
		t.Fatalf("%s: error %v, want a refusal", what, err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("%s: error %q does not say %q", what, err, w)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Fatalf("%s: error %q is not one line", what, err)
	}
}

// TestForgedLockedPidfileIsRefused: someone who can write in the pid
// directory plants a pidfile naming an unrelated process, with its true
// start time, boot id and program, and holds the pidfile's lock. stop,
// kill, restart's start and status all refuse it: the stranger is not
// signalled and the file stays.
func TestForgedLockedPidfileIsRefused(t *testing.T) {
	dir := t.TempDir()
	var s Supervisor
	stranger := startStranger(t)
	pid := stranger.Process.Pid
	n := node(dir, "alpha", "exit 0")
	forge(t, n.Pidfile, pid, ExeID{})
	lockFile(t, n.Pidfile)

	st := s.Status(n)
	if st.State != Refused || st.State.LSBCode() != 4 {
		t.Fatalf("Status = %+v", st)
	}
	assertRefused(t, "Status", st.Err, n.Pidfile, "locked, but not by PID")
	for name, r := range map[string]Result{
		"Stop":  s.Stop([]Node{n}, time.Second)[0],
		"Kill":  s.Kill([]Node{n})[0],
		"Start": s.Start(node(dir, "alpha", "exit 0")),
	} {
		assertRefused(t, name, r.Err, "alpha: refusing pidfile "+n.Pidfile, "not signalled")
		assertAlive(t, pid)
	}
	if _, err := os.Stat(n.Pidfile); err != nil {
		t.Fatalf("the forged pidfile was removed: %v", err)
	}
}

// TestReusedPIDIsRefused: the pidfile's PID now runs another program. When
// the pidfile is unlocked, its node is gone and it is stale (reported,
// removed, not signalled); when the other program holds the lock (it
// inherited it), the pidfile is refused. Either way nothing is signalled.
func TestReusedPIDIsRefused(t *testing.T) {
	dir := t.TempDir()
	var s Supervisor
	sh, err := ResolveExe("/bin/sh")
	must(t, err)

	// Unlocked: recorded start time of another process.
	stranger := startStranger(t)
	n := node(dir, "alpha", "exit 0")
	forge(t, n.Pidfile, stranger.Process.Pid, sh)
	data, err := os.ReadFile(n.Pidfile)
	must(t, err)
	must(t, os.WriteFile(n.Pidfile, []byte(strings.Replace(string(data), "\nstart ", "\nstart 1", 1)), 0o640))
	r := s.Stop([]Node{n}, time.Second)[0]
	if r.Err != nil || !strings.Contains(r.Msg, "not signalled") || !strings.Contains(r.Stale, "the PID was reused") {
		t.Fatalf("Stop = %+v", r)
	}
	assertAlive(t, stranger.Process.Pid)
	if _, err := os.Stat(n.Pidfile); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("stale pidfile not removed")
	}

	// Locked by the process it names, which runs another program than the
	// one recorded.
	b := node(dir, "beta", "exit 0")
	pf, err := PreparePidfile(b.Pidfile)
	if errors.Is(err, fs.ErrNotExist) {
		must(t, MakeDirs(b))
		pf, err = PreparePidfile(b.Pidfile)
	}
	must(t, err)
	holder := startStranger(t, pf.File())
	pf.SetExe(sh)
	must(t, pf.Commit(holder.Process.Pid))
	must(t, pf.Close())
	st := s.Status(b)
	assertRefused(t, "Status", st.Err, "holds its lock, but it runs", "not "+sh.Path)
	r = s.Stop([]Node{b}, time.Second)[0]
	assertRefused(t, "Stop", r.Err, "not signalled")
	assertAlive(t, holder.Process.Pid)
}

// TestUnsafePidDirectoryIsRefused: a pid directory writable by group or
// others, or a pidfile that is, or a pidfile of another user, is refused
// before anything is read, signalled, created or removed.
func TestUnsafePidDirectoryIsRefused(t *testing.T) {
	dir := t.TempDir()
	var s Supervisor
	stranger := startStranger(t)
	n := node(dir, "alpha", "exit 0")
	n.Argv = []string{"sleep", "300"}
	forge(t, n.Pidfile, stranger.Process.Pid, ExeID{})
	run := filepath.Dir(n.Pidfile)
	must(t, os.Chmod(run, 0o770))
	for name, err := range map[string]error{
		"Status": s.Status(n).Err,
		"Stop":   s.Stop([]Node{n}, time.Second)[0].Err,
		"Start":  s.Start(n).Err,
	} {
		assertRefused(t, name, err, "refusing pid directory "+run, "writable by group or others (mode 0770)")
	}
	assertAlive(t, stranger.Process.Pid)
	if _, err := os.Stat(n.Pidfile); err != nil {
		t.Fatal("the pidfile was removed")
	}

	must(t, os.Chmod(run, 0o750))
	must(t, os.Chmod(n.Pidfile, 0o666))
	assertRefused(t, "Stop", s.Stop([]Node{n}, time.Second)[0].Err, "refusing pidfile "+n.Pidfile, "mode 0666")
	must(t, os.Chmod(n.Pidfile, 0o640))

	// Ownership: only root can give a file away, so only root can test it.
	if os.Geteuid() == 0 {
		must(t, os.Chown(n.Pidfile, 4242, 4242))
		assertRefused(t, "Stop", s.Stop([]Node{n}, time.Second)[0].Err, "belongs to uid 4242, not to this user (uid 0) or root")
	}
	assertAlive(t, stranger.Process.Pid)

	// A symlinked pidfile.
	must(t, os.Remove(n.Pidfile))
	must(t, os.Symlink(filepath.Join(dir, "elsewhere.pid"), n.Pidfile))
	assertRefused(t, "Status", s.Status(n).Err, "symbolic link")
	assertRefused(t, "Start", s.Start(n).Err, "symbolic link")
}

// TestSymlinkedLogfileIsRefused: a logfile that is a symbolic link is not
// followed; the node is not started.
func TestSymlinkedLogfileIsRefused(t *testing.T) {
	dir := t.TempDir()
	var s Supervisor
	n := node(dir, "alpha", "echo hi")
	must(t, MakeDirs(n))
	target := filepath.Join(dir, "target")
	must(t, os.WriteFile(target, nil, 0o600))
	must(t, os.Symlink(target, n.Logfile))
	r := s.Start(n)
	assertRefused(t, "Start", r.Err, "refusing logfile "+n.Logfile, "symbolic link")
	if _, err := os.Stat(n.Pidfile); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("a pidfile was written")
	}
	if st, _ := os.Stat(target); st.Size() != 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("the link's target was touched: %v", st.Mode())
	}
}

// TestCreatedModesUnderUmaskZero: with umask 0, the directories multi
// creates are 0750 and the pidfile and logfile 0640. It changes the
// process umask, so it must not run in parallel with other tests.
func TestCreatedModesUnderUmaskZero(t *testing.T) {
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
	dir := t.TempDir()
	var s Supervisor
	n := node(dir, "alpha", "")
	n.Pidfile = filepath.Join(dir, "run/sub", "alpha.pid")
	n.Argv = []string{"sleep", "300"}
	cleanupNodes(t, s, n)
	if r := s.Start(n); r.Err != nil {
		t.Fatal(r.Err)
	}
	for path, want := range map[string]fs.FileMode{
		filepath.Join(dir, "run"):     fs.ModeDir | 0o750,
		filepath.Join(dir, "run/sub"): fs.ModeDir | 0o750,
		filepath.Join(dir, "log"):     fs.ModeDir | 0o750,
		n.Pidfile:                     0o640,
		n.Logfile:                     0o640,
	} {
		st, err := os.Stat(path)
		must(t, err)
		if st.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, st.Mode(), want)
		}
	}
	if st := s.Status(n); st.State != Running {
		t.Fatalf("Status = %+v", st)
	}
	// An existing world-writable logfile loses o+w; any other mode stays.
	s.Kill([]Node{n})
	must(t, os.Chmod(n.Logfile, 0o666))
	if r := s.Start(n); r.Err != nil {
		t.Fatal(r.Err)
	}
	if st, _ := os.Stat(n.Logfile); st.Mode().Perm() != 0o664 {
		t.Fatalf("world-writable logfile: mode %v, want 0664", st.Mode())
	}
}

// TestSymlinkedPidDirectoryIsChecked: a pid directory that is a symbolic
// link to a directory writable by others (say a link planted under /tmp)
// is as unsafe as that directory: anyone can plant pidfiles there. It is
// refused, and a stale-looking pidfile in it is left alone.
func TestSymlinkedPidDirectoryIsChecked(t *testing.T) {
	dir := t.TempDir()
	var s Supervisor
	stranger := startStranger(t)
	open := filepath.Join(dir, "open")
	must(t, os.Mkdir(open, 0o700))
	must(t, os.Chmod(open, 0o777))
	must(t, os.Symlink(open, filepath.Join(dir, "run")))
	n := node(dir, "alpha", "exit 0")
	n.Argv = []string{"sleep", "300"}
	cleanupNodes(t, s, n) // should the check fail, Start would start it
	forge(t, n.Pidfile, stranger.Process.Pid, ExeID{})
	run := filepath.Dir(n.Pidfile)
	for name, err := range map[string]error{
		"Status": s.Status(n).Err,
		"Stop":   s.Stop([]Node{n}, time.Second)[0].Err,
		"Start":  s.Start(n).Err,
	} {
		assertRefused(t, name, err, "refusing pid directory "+run, "writable by group or others (mode 0777)")
	}
	assertAlive(t, stranger.Process.Pid)
	if _, err := os.Stat(n.Pidfile); err != nil {
		t.Fatal("the pidfile was removed")
	}
	// A link to a safe directory (the usual /var/run -> /run) is fine.
	must(t, os.Chmod(open, 0o750))
	if st := s.Status(n); st.State == Refused {
		t.Fatalf("Status through a link to a safe directory = %+v", st)
	}
}

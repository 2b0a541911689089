package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestReadPidfileContent(t *testing.T) {
	tests := []struct {
		name, content string
		pid           int
		reason        string
	}{
		{"plain", "1234\n", 1234, ""},
		{"no newline", "1234", 1234, ""},
		{"spaces", "  77 \n\n", 77, ""},
		{"empty", "", 0, "empty"},
		{"blank", " \n\t\n", 0, "empty"},
		{"garbage", "hello\n", 0, "not a number"},
		{"negative", "-5\n", 0, "not a number"},
		{"two numbers", "12 13\n", 0, "not a number"},
		{"zero", "0\n", 0, "out of range"},
		{"too large", "99999999999999999999\n", 0, "out of range"},
		{"above pid max", fmt.Sprint(MaxPID+1) + "\n", 0, "out of range"},
		{"binary", "\x00\x01\x02", 0, "not a number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "n.pid")
			must(t, os.WriteFile(path, []byte(tt.content), 0o644))
			info, err := ReadPidfile(path)
			if tt.reason == "" {
				if err != nil || info.PID != tt.pid || info.Locked {
					t.Fatalf("ReadPidfile = %+v, %v", info, err)
				}
				return
			}
			var ie *InvalidPidfileError
			if !errors.As(err, &ie) || !strings.HasPrefix(ie.Reason, tt.reason) {
				t.Fatalf("ReadPidfile error = %v, want reason %q", err, tt.reason)
			}
			if !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q should be one line naming the file", err)
			}
		})
	}
}

func TestReadPidfileMissingAndDirectory(t *testing.T) {
	dir := t.TempDir()
	_, err := ReadPidfile(filepath.Join(dir, "none.pid"))
	if !errors.Is(err, ErrPidfileMissing) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing pidfile: %v", err)
	}
	var ie *InvalidPidfileError
	if _, err := ReadPidfile(dir); !errors.As(err, &ie) {
		t.Fatalf("directory as pidfile: %v", err)
	}
}

func TestCreatePidfileExclusiveAndLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "n.pid")
	pf, err := CreatePidfile(path, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	info, err := ReadPidfile(path)
	if err != nil || info.PID != os.Getpid() || !info.Locked {
		t.Fatalf("ReadPidfile = %+v, %v; want our PID, locked", info, err)
	}
	var ee *ExistsError
	if _, err := CreatePidfile(path, os.Getpid()+1); !errors.As(err, &ee) || ee.PID != os.Getpid() {
		t.Fatalf("second CreatePidfile = %v, want *ExistsError", err)
	}
	if err := RemoveStale(path); !errors.As(err, &ee) {
		t.Fatalf("RemoveStale of a locked pidfile = %v", err)
	}
	// Only the pidfile is left in the directory: no temporary files.
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want 1", len(entries))
	}
	must(t, pf.Remove())
	must(t, pf.Remove()) // twice is safe
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("pidfile left after Remove: %v", err)
	}
}

func TestCreatePidfileReplacesStale(t *testing.T) {
	for name, content := range map[string]string{"dead": "999999\n", "garbage": "xyz", "empty": ""} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "n.pid")
			must(t, os.WriteFile(path, []byte(content), 0o644))
			pf, err := CreatePidfile(path, os.Getpid())
			if err != nil {
				t.Fatal(err)
			}
			defer pf.Remove()
			if info, err := ReadPidfile(path); err != nil || info.PID != os.Getpid() {
				t.Fatalf("ReadPidfile = %+v, %v", info, err)
			}
		})
	}
}

func TestCreatePidfileMissingDir(t *testing.T) {
	_, err := CreatePidfile("/dev/null/x.pid", 1)
	if err == nil || !strings.Contains(err.Error(), "/dev/null/x.pid") {
		t.Fatalf("CreatePidfile under a file = %v", err)
	}
}

// TestPidfileLockInherited checks the multi protocol: the lock survives the
// creator's Close while a child holds the descriptor, the child adopts the
// pidfile naming it, and the lock goes when the child exits.
func TestPidfileLockInherited(t *testing.T) {
	path := filepath.Join(t.TempDir(), "n.pid")
	pf, err := PreparePidfile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("a prepared pidfile is visible before Commit")
	}
	cmd := exec.Command("sleep", "1000")
	cmd.ExtraFiles = []*os.File{pf.File()}
	must(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	defer func() { _ = cmd.Process.Kill(); <-done }()
	must(t, pf.Commit(cmd.Process.Pid))
	must(t, pf.Close())
	info, err := ReadPidfile(path)
	if err != nil || !info.Locked || info.PID != cmd.Process.Pid {
		t.Fatalf("after Close: %+v, %v; want locked by the child", info, err)
	}
	must(t, cmd.Process.Signal(syscall.SIGKILL))
	<-done
	info, err = ReadPidfile(path)
	if err != nil || info.Locked {
		t.Fatalf("after the child died: %+v, %v; want unlocked", info, err)
	}
	must(t, RemoveStale(path))
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("RemoveStale left an unlocked pidfile")
	}
	must(t, RemoveStale(path)) // no file: nothing to do
}

func TestCommitAdoptsChildsOwnPidfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "n.pid")
	pf, err := PreparePidfile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	// The "child" (this process) wrote its own pidfile first.
	own, err := CreatePidfile(path, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer own.Remove()
	if err := pf.Commit(os.Getpid()); err != nil {
		t.Fatalf("Commit over the child's own pidfile = %v", err)
	}
	pf2, _ := PreparePidfile(path)
	defer pf2.Close()
	var ee *ExistsError
	// The parent (go test) is alive and not the PID the pidfile names.
	if err := pf2.Commit(os.Getppid()); !errors.As(err, &ee) {
		t.Fatalf("Commit over another node's pidfile = %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want 1", len(entries))
	}
}

func TestCreatePidfileAdoptsLauncherPidfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "n.pid")
	launcher, err := CreatePidfile(path, os.Getpid()) // as multi --no-detach does before exec
	if err != nil {
		t.Fatal(err)
	}
	defer launcher.Close()
	node, err := CreatePidfile(path, os.Getpid())
	if err != nil {
		t.Fatalf("node's CreatePidfile = %v, want adoption", err)
	}
	must(t, node.Remove())
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("adopted pidfile not removed")
	}
}

func TestRemoveLeavesAnotherNodesPidfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "n.pid")
	pf, err := CreatePidfile(path, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Someone replaced the file (an operator, say).
	must(t, os.WriteFile(path, []byte("1\n"), 0o644))
	must(t, pf.Remove())
	if _, err := os.Stat(path); err != nil {
		t.Fatal("Remove deleted a pidfile naming another PID")
	}
}

// holdFD makes fixture process pid (under root) hold a descriptor on path with a
// flock lock, as /proc shows it: fd/N links to the file, fdinfo/N has a
// FLOCK line naming its inode.
func holdFD(t *testing.T, root string, pid int, path string) {
	t.Helper()
	dir := filepath.Join(root, fmt.Sprint(pid))
	must(t, os.MkdirAll(filepath.Join(dir, "fd"), 0o755))
	must(t, os.MkdirAll(filepath.Join(dir, "fdinfo"), 0o755))
	fd := 3
	for ; ; fd++ {
		if _, err := os.Lstat(filepath.Join(dir, "fd", fmt.Sprint(fd))); err != nil {
			break
		}
	}
	must(t, os.Symlink(path, filepath.Join(dir, "fd", fmt.Sprint(fd))))
	var st syscall.Stat_t
	must(t, syscall.Stat(path, &st))
	info := fmt.Sprintf("pos:\t0\nflags:\t02\nlock:\t1: FLOCK  ADVISORY  WRITE 1 fe:00:%d 0 EOF\n", st.Ino)
	must(t, os.WriteFile(filepath.Join(dir, "fdinfo", fmt.Sprint(fd)), []byte(info), 0o644))
}

// fakeExe makes fixture process pid run the program at target.
func fakeExe(t *testing.T, root string, pid int, target string) {
	t.Helper()
	dir := filepath.Join(root, fmt.Sprint(pid))
	must(t, os.MkdirAll(dir, 0o755))
	must(t, os.Symlink(target, filepath.Join(dir, "exe")))
}

func TestInspect(t *testing.T) {
	written := time.Unix(1700000100, 0)
	// Boot at 1700000000; PID 10 started 50 s after boot, PID 11 200 s after.
	root := fakeProc(t, 1700000000, map[int]string{
		10: statLine(10, "stem", 'S', 5000),
		11: statLine(11, "stranger", 'S', 20000),
		12: statLine(12, "zombie", 'Z', 5000),
	})
	const boot = "6c14ad05-f92e-4ba4-967d-3a5e45872351"
	must(t, os.MkdirAll(filepath.Join(root, "sys/kernel/random"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "sys/kernel/random/boot_id"), []byte(boot+"\n"), 0o644))
	sh, err := ResolveExe("/bin/sh")
	must(t, err)
	sleep, err := exec.LookPath("sleep")
	must(t, err)
	fakeExe(t, root, 10, "/bin/sh")
	fakeExe(t, root, 11, sleep)
	p := Proc{Root: root, Kill: func(pid int, sig syscall.Signal) error {
		if pid >= 10 && pid <= 12 {
			return nil
		}
		return syscall.ESRCH
	}}
	dir := t.TempDir()
	write := func(name, content string, lock bool) string {
		path := filepath.Join(dir, name)
		must(t, os.WriteFile(path, []byte(content), 0o644))
		must(t, os.Chtimes(path, written, written))
		if lock {
			f, err := os.Open(path)
			must(t, err)
			t.Cleanup(func() { f.Close() })
			must(t, syscall.Flock(int(f.Fd()), syscall.LOCK_EX))
		}
		return path
	}
	v2 := func(pid int, start uint64, boot string, exe ExeID) string {
		return string(formatPidfile(pid, Record{StartTicks: start, BootID: boot, Exe: exe}))
	}
	held := func(pid int, path string) string { holdFD(t, root, pid, path); return path }
	tests := []struct {
		name  string
		path  string
		state State
		msg   string
		lsb   int
	}{
		{"running", held(10, write("run.pid", "10\n", true)), Running, "", 0},
		{"running, current format", held(10, write("run2.pid", v2(10, 5000, boot, sh), true)), Running, "", 0},
		{"missing", filepath.Join(dir, "none.pid"), NotRunning, "does not exist", 3},
		{"dead", write("dead.pid", "13\n", true), Dead, "not running", 1},
		{"zombie", write("zombie.pid", "12\n", true), Dead, "not running", 1},
		{"started after the pidfile", write("late.pid", "11\n", false), Reused, "after the pidfile was written", 1},
		{"old format, started after the pidfile, holds the lock", held(11, write("late-held.pid", "11\n", true)), Refused, "after the pidfile was written", 4},
		{"unlocked", write("unlocked.pid", "10\n", false), Reused, "lock", 1},
		{"locked by someone else", write("forged.pid", "10\n", true), Refused, "locked, but not by PID 10", 4},
		{"forged in the current format", write("forged2.pid", v2(10, 5000, boot, sh), true), Refused, "locked, but not by PID 10", 4},
		{"another start time, unlocked", write("ticks.pid", v2(10, 4999, boot, sh), false), Reused, "not at 4999 ticks as recorded: the PID was reused", 1},
		{"another start time, held", held(10, write("ticks-held.pid", v2(10, 4999, boot, sh), true)), Refused, "not at 4999 ticks", 4},
		{"another boot", held(10, write("boot.pid", v2(10, 5000, "other-boot", sh), true)), Refused, "another boot", 4},
		{"another program", held(11, write("exe.pid", v2(11, 20000, boot, sh), true)), Refused, "runs " + sleep, 4},
		{"garbage", write("garbage.pid", "abc\n", false), Invalid, "not a PID", 1},
		{"empty", write("empty.pid", "", false), Invalid, "empty", 1},
		{"bad record", write("record.pid", "10\nstem-pidfile 2\nstart x\n", false), Invalid, "bad start line", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := p.Inspect(tt.path)
			if in.State != tt.state || in.State.LSBCode() != tt.lsb {
				t.Fatalf("Inspect = %v (%v), want %v", in.State, in.Err, tt.state)
			}
			if tt.msg == "" {
				if in.Err != nil || in.Process.PID != 10 {
					t.Fatalf("Inspect = %+v", in)
				}
				return
			}
			if in.Err == nil || !strings.Contains(in.Err.Error(), tt.msg) || !strings.Contains(in.Err.Error(), tt.path) || strings.Contains(in.Err.Error(), "\n") {
				t.Fatalf("Inspect error = %v, want one line with %q naming the file", in.Err, tt.msg)
			}
			var re *RefusedError
			if (tt.state == Refused) != errors.As(in.Err, &re) {
				t.Fatalf("Inspect error = %#v: RefusedError exactly when refused", in.Err)
			}
		})
	}
}

func TestStateStrings(t *testing.T) {
	for s := NotRunning; s <= Refused; s++ {
		if strings.HasPrefix(s.String(), "State(") {
			t.Errorf("state %d has no name", s)
		}
	}
	if Unknown.LSBCode() != 4 || State(42).String() != "State(42)" {
		t.Error("unexpected state mapping")
	}
}

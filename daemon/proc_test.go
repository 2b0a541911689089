package daemon

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// statLine builds a /proc/<pid>/stat line with the given command, state
// and start ticks.
func statLine(pid int, comm string, state byte, start uint64) string {
	// Fields 3..21 then 22 = start time, then a few more.
	f := []string{string(state)}
	for i := 4; i <= 21; i++ {
		f = append(f, "0")
	}
	f = append(f, fmt.Sprint(start), "1000", "200")
	return fmt.Sprintf("%d (%s) %s\n", pid, comm, strings.Join(f, " "))
}

// fakeProc builds a proc fixture with boot time btime and the given
// processes (pid → stat line).
func fakeProc(t *testing.T, btime int64, procs map[int]string) string {
	t.Helper()
	root := t.TempDir()
	must(t, os.WriteFile(filepath.Join(root, "stat"), []byte(fmt.Sprintf("cpu  1 2 3\nbtime %d\nprocesses 9\n", btime)), 0o644))
	for pid, line := range procs {
		dir := filepath.Join(root, fmt.Sprint(pid))
		must(t, os.MkdirAll(dir, 0o755))
		must(t, os.WriteFile(filepath.Join(dir, "stat"), []byte(line), 0o644))
	}
	return root
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestParseStat(t *testing.T) {
	tests := []struct {
		name, line string
		comm       string
		state      byte
		start      uint64
		err        string
	}{
		{"plain", statLine(7, "stem", 'S', 4242), "stem", 'S', 4242, ""},
		{"spaces and parens in comm", statLine(7, "a) b (c", 'R', 9), "a) b (c", 'R', 9, ""},
		{"zombie", statLine(7, "x", 'Z', 1), "x", 'Z', 1, ""},
		{"no parens", "7 stem S 0", "", 0, 0, "no command name"},
		{"short", "7 (stem) S 1 2 3", "", 0, 0, "fields"},
		{"bad start", strings.Replace(statLine(7, "s", 'S', 5), " 5 1000", " x 1000", 1), "", 0, 0, "start time"},
		{"empty", "", "", 0, 0, "no command name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := parseStat(7, []byte(tt.line))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parseStat error = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if info.Comm != tt.comm || info.State != tt.state || info.StartTicks != tt.start || info.PID != 7 {
				t.Fatalf("parseStat = %+v", info)
			}
		})
	}
}

func TestProcessStartTime(t *testing.T) {
	root := fakeProc(t, 1700000000, map[int]string{42: statLine(42, "w", 'S', 12345)})
	p := Proc{Root: root}
	info, err := p.Process(42)
	if err != nil {
		t.Fatal(err)
	}
	want := time.Unix(1700000000, 0).Add(123*time.Second + 450*time.Millisecond)
	if !info.Start.Equal(want) {
		t.Fatalf("start = %v, want %v", info.Start, want)
	}
	if _, err := p.Process(43); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("missing process: %v, want ErrNoProcess", err)
	}
	if _, err := p.Process(0); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("PID 0: %v, want ErrNoProcess", err)
	}
	p.ClockTicks = 1000
	info, _ = p.Process(42)
	if want := time.Unix(1700000000, 0).Add(12345 * time.Millisecond); !info.Start.Equal(want) {
		t.Fatalf("start at 1000 Hz = %v, want %v", info.Start, want)
	}
}

func TestBootTimeErrors(t *testing.T) {
	for name, content := range map[string]string{"missing": "cpu 1\n", "garbage": "btime soon\n", "zero": "btime 0\n"} {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			must(t, os.WriteFile(filepath.Join(root, "stat"), []byte(content), 0o644))
			if _, err := (Proc{Root: root}).BootTime(); err == nil || !strings.Contains(err.Error(), "stat") {
				t.Fatalf("BootTime error = %v", err)
			}
		})
	}
	if _, err := (Proc{Root: t.TempDir()}).BootTime(); err == nil {
		t.Fatal("BootTime without a stat file succeeded")
	}
}

func TestAlive(t *testing.T) {
	root := fakeProc(t, 1700000000, map[int]string{
		10: statLine(10, "ok", 'S', 1),
		11: statLine(11, "other-user", 'S', 1),
		12: statLine(12, "zombie", 'Z', 1),
	})
	kill := func(pid int, sig syscall.Signal) error {
		if sig != 0 {
			t.Fatalf("Alive sent signal %v", sig)
		}
		switch pid {
		case 10, 12:
			return nil
		case 11:
			return syscall.EPERM
		case 99:
			return syscall.EINVAL
		}
		return syscall.ESRCH
	}
	p := Proc{Root: root, Kill: kill}
	tests := []struct {
		pid     int
		want    bool
		wantErr bool
	}{{10, true, false}, {11, true, false}, {12, false, false}, {13, false, false}, {0, false, false}, {-1, false, false}, {99, false, true}}
	for _, tt := range tests {
		got, err := p.Alive(tt.pid)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("Alive(%d) = %v, %v; want %v (error %v)", tt.pid, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestSignalChecksIdentity(t *testing.T) {
	root := fakeProc(t, 1700000000, map[int]string{10: statLine(10, "w", 'S', 500)})
	var sent []syscall.Signal
	p := Proc{Root: root, Kill: func(pid int, sig syscall.Signal) error { sent = append(sent, sig); return nil }}
	var re *ReusedError
	if err := p.Signal(10, 499, syscall.SIGTERM); !errors.As(err, &re) || re.GotTicks != 500 {
		t.Fatalf("Signal with the wrong start = %v, want *ReusedError", err)
	}
	if len(sent) != 0 {
		t.Fatalf("signals sent to a stranger: %v", sent)
	}
	if err := p.Signal(10, 500, syscall.SIGTERM); err != nil || len(sent) != 1 || sent[0] != syscall.SIGTERM {
		t.Fatalf("Signal = %v, sent %v", err, sent)
	}
	if err := p.Signal(11, 500, syscall.SIGTERM); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("Signal to a missing PID = %v", err)
	}
	if err := p.Signal(0, 0, syscall.SIGTERM); err == nil {
		t.Fatal("Signal(0) succeeded")
	}
}

// startSleeper starts a process that waits, and stops it at the end of
// the test.
func startSleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "1000")
	must(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	return cmd
}

func TestSignalRealProcess(t *testing.T) {
	cmd := startSleeper(t)
	var p Proc
	info, err := p.Process(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(info.Start); d < -2*time.Second || d > time.Minute {
		t.Fatalf("start time %v is %v from now", info.Start, d)
	}
	if alive, err := p.Alive(cmd.Process.Pid); !alive || err != nil {
		t.Fatalf("Alive = %v, %v", alive, err)
	}
	var re *ReusedError
	if err := p.Signal(cmd.Process.Pid, info.StartTicks+1, syscall.SIGTERM); !errors.As(err, &re) {
		t.Fatalf("Signal with the wrong start = %v", err)
	}
	if p.WaitExit(cmd.Process.Pid, info.StartTicks, time.Now().Add(50*time.Millisecond)) {
		t.Fatal("the process exited although it was not signalled")
	}
	must(t, p.Signal(cmd.Process.Pid, info.StartTicks, syscall.SIGTERM))
	if !p.WaitExit(cmd.Process.Pid, info.StartTicks, time.Now().Add(10*time.Second)) {
		t.Fatal("the process did not exit after SIGTERM")
	}
}

func TestWaitExitPolling(t *testing.T) {
	root := fakeProc(t, 1700000000, map[int]string{10: statLine(10, "w", 'S', 500)})
	p := Proc{Root: root, Kill: func(int, syscall.Signal) error { return nil }}
	if p.WaitExit(10, 500, time.Now().Add(30*time.Millisecond)) {
		t.Fatal("WaitExit reported a live process gone")
	}
	if !p.WaitExit(10, 499, time.Now().Add(time.Second)) {
		t.Fatal("WaitExit did not notice the PID names another process")
	}
	if !p.WaitExit(11, 1, time.Now().Add(time.Second)) {
		t.Fatal("WaitExit did not notice a missing process")
	}
}

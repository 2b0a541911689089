package daemon

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// listenNotify opens a unixgram socket like systemd's and points
// NOTIFY_SOCKET at it.
func listenNotify(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "n.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return conn
}

func readMsg(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	must(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("reading the notify socket: %v", err)
	}
	return string(buf[:n])
}

func TestNotifierSendsOverUnixgram(t *testing.T) {
	conn := listenNotify(t)
	n := NewNotifier()
	steps := []struct {
		send func() error
		want string
	}{
		{n.Ready, "READY=1"},
		{func() error { return n.Status("ready: 3/8 busy; queues default,critical") }, "STATUS=ready: 3/8 busy; queues default,critical"},
		{func() error { return n.Status("two\nlines\n") }, "STATUS=two; lines"},
		{func() error { return n.ReadyStatus("up") }, "READY=1\nSTATUS=up"},
		{n.Watchdog, "WATCHDOG=1"},
		{func() error { return n.ExtendTimeout(1500 * time.Millisecond) }, "EXTEND_TIMEOUT_USEC=1500000"},
		{func() error { return n.ExtendTimeout(0) }, "EXTEND_TIMEOUT_USEC=1"},
		{n.Stopping, "STOPPING=1"},
	}
	for _, s := range steps {
		if err := s.send(); err != nil {
			t.Fatalf("sending %q: %v", s.want, err)
		}
		if got := readMsg(t, conn); got != s.want {
			t.Fatalf("socket got %q, want %q", got, s.want)
		}
	}
	// The socket stays set after every message (SdNotify(false, ...)).
	if os.Getenv("NOTIFY_SOCKET") == "" {
		t.Fatal("NOTIFY_SOCKET was unset")
	}
}

func TestNotifierWithoutSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n := NewNotifier()
	if sent, err := n.Notify("READY=1"); sent || err != nil {
		t.Fatalf("Notify without a socket = %v, %v", sent, err)
	}
	if err := n.Ready(); err != nil {
		t.Fatal(err)
	}
	var nilN *Notifier
	if err := nilN.Ready(); err != nil {
		t.Fatal("a nil Notifier should do nothing")
	}
	if d, err := nilN.WatchdogInterval(); d != 0 || err != nil {
		t.Fatal("a nil Notifier has no watchdog")
	}
}

func TestNotifierSocketGone(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "gone.sock"))
	if err := NewNotifier().Ready(); err == nil {
		t.Fatal("Ready to a missing socket succeeded")
	}
}

func TestWatchdogInterval(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	tests := []struct {
		usec, pid string
		want      time.Duration
		err       bool
	}{
		{"", "", 0, false},
		{"2000000", pid, 2 * time.Second, false},
		{"2000000", "", 2 * time.Second, false},
		{"2000000", "1", 0, false}, // meant for another process
		{"abc", pid, 0, true},
		{"-5", pid, 0, true},
	}
	for _, tt := range tests {
		t.Setenv("WATCHDOG_USEC", tt.usec)
		t.Setenv("WATCHDOG_PID", tt.pid)
		d, err := NewNotifier().WatchdogInterval()
		if d != tt.want || (err != nil) != tt.err {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: %v, %v; want %v", tt.usec, tt.pid, d, err, tt.want)
		}
		if os.Getenv("WATCHDOG_USEC") != tt.usec {
			t.Error("WatchdogInterval changed the environment")
		}
	}
}

func TestRunWatchdogOnlyWhileAlive(t *testing.T) {
	conn := listenNotify(t)
	t.Setenv("WATCHDOG_USEC", "20000") // 20 ms: pings every 10 ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	// The main loop is alive for two ticks, then stuck.
	var calls atomic.Int32
	stuckSeen := make(chan struct{})
	alive := func() bool {
		n := calls.Add(1)
		if n == 4 {
			close(stuckSeen)
		}
		return n <= 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- NewNotifier().RunWatchdog(ctx, alive, nil) }()
	select {
	case <-stuckSeen:
	case <-time.After(10 * time.Second):
		t.Fatal("the watchdog loop did not tick")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	pings := 0
	for {
		must(t, conn.SetReadDeadline(time.Now().Add(10*time.Millisecond)))
		n, err := conn.Read(make([]byte, 64))
		if err != nil {
			break
		}
		if n != len("WATCHDOG=1") {
			t.Fatalf("unexpected message of %d bytes", n)
		}
		pings++
	}
	if pings != 2 {
		t.Fatalf("got %d watchdog pings, want 2 (one per live tick)", pings)
	}
}

func TestRunWatchdogOff(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "")
	if err := NewNotifier().RunWatchdog(context.Background(), nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestChildEnv(t *testing.T) {
	in := []string{"PATH=/bin", "NOTIFY_SOCKET=/run/x", "WATCHDOG_PID=1", "WATCHDOG_USEC=5", "LISTEN_FDS=1", "LISTEN_PID=1", "LISTEN_FDNAMES=a", "NOTIFY_SOCKETX=keep", "STEM_WORKER_NODE=a"}
	orig := slices.Clone(in)
	got := ChildEnv(in)
	want := []string{"PATH=/bin", "NOTIFY_SOCKETX=keep", "STEM_WORKER_NODE=a"}
	if !slices.Equal(got, want) {
		t.Fatalf("ChildEnv = %q, want %q", got, want)
	}
	if !slices.Equal(in, orig) {
		t.Fatal("ChildEnv modified its input")
	}
}

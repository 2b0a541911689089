package testutil

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// RedisServer is a redis-server process owned by one test, on its own
// loopback port and data directory; never the shared server.
type RedisServer struct {
	t      testing.TB
	bin    string
	port   int
	dir    string
	args   []string
	cmd    *exec.Cmd
	exited chan error
}

// StartRedis starts a private redis-server with args added to its command
// line (e.g. "--appendonly", "no"). Without the redis-server binary the
// test is skipped, or fails under CI. It is stopped when the test ends.
func StartRedis(t testing.TB, args ...string) *RedisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("redis-server not found and CI is set: %v", err)
		}
		t.Skipf("redis-server not found: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	s := &RedisServer{t: t, bin: bin, port: port, dir: t.TempDir(), args: args}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// Addr is "127.0.0.1:port".
func (s *RedisServer) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// URL is "redis://127.0.0.1:port/0".
func (s *RedisServer) URL() string { return "redis://" + s.Addr() + "/0" }

// Start runs redis-server (again) and waits until it answers PING.
func (s *RedisServer) Start() {
	s.t.Helper()
	logf, err := os.OpenFile(filepath.Join(s.dir, "redis.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		s.t.Fatal(err)
	}
	defer logf.Close()
	argv := append([]string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--save", "", "--dir", s.dir}, s.args...)
	s.cmd = exec.Command(s.bin, argv...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	s.exited = make(chan error, 1)
	go func(cmd *exec.Cmd, exited chan error) { exited <- cmd.Wait() }(s.cmd, s.exited)
	c := goredis.NewClient(&goredis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer c.Close()
	ok := Poll(15*time.Second, func() bool {
		select {
		case werr := <-s.exited:
			s.exited <- werr
			return true
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return c.Ping(ctx).Err() == nil
	})
	select {
	case werr := <-s.exited:
		s.t.Fatalf("redis-server exited at start (%v); log:\n%s", werr, s.Log())
	default:
	}
	if !ok {
		s.t.Fatalf("redis-server on %s not answering after 15s; log:\n%s", s.Addr(), s.Log())
	}
}

// Kill stops the server with SIGKILL (a crash) and waits for it.
func (s *RedisServer) Kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// WipeData removes the server's data files; call it between Kill and
// Start to restart it empty, as a server without persistence would.
func (s *RedisServer) WipeData() {
	s.t.Helper()
	for _, name := range []string{"appendonlydir", "appendonly.aof", "dump.rdb"} {
		if err := os.RemoveAll(filepath.Join(s.dir, name)); err != nil {
			s.t.Fatal(err)
		}
	}
}

// Stop sends SIGTERM to the server's PID and waits for it; stopping a
// stopped server does nothing.
func (s *RedisServer) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
		s.t.Errorf("redis-server ignored SIGTERM for 15s; killed it")
	}
	s.cmd = nil
}

// Log returns the server's log.
func (s *RedisServer) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	return string(b)
}

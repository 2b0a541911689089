package postgres

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/internal/testutil"
	"github.com/stemhq/stem/result"
	"github.com/stemhq/stem/worker"
)

// pgServer is a Postgres server owned by one test: its own data directory
// in t.TempDir(), its own loopback port, no Unix socket. As root, its
// programs run as the OS user postgres (Postgres refuses to run as root).
// The shared test server is never touched.
type pgServer struct {
	t       *testing.T
	bin     string // directory of initdb and pg_ctl
	data    string
	logFile string
	port    int
	asUser  string // "" to run as the current user
}

// startOwnPostgres initialises and starts a private server. Without the
// Postgres server binaries the test is skipped, or fails under CI.
func startOwnPostgres(t *testing.T) *pgServer {
	t.Helper()
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	if len(bins) == 0 {
		if path, err := exec.LookPath("pg_ctl"); err == nil {
			bins = []string{path}
		}
	}
	if len(bins) == 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("pg_ctl not found and CI is set: the Postgres fault tests must run")
		}
		t.Skip("pg_ctl not found; skipping the Postgres fault test")
	}
	s := &pgServer{t: t, bin: filepath.Dir(bins[len(bins)-1])}
	dir := t.TempDir()
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("running as root without an OS user postgres to run the server, and CI is set: %v", err)
			}
			t.Skipf("running as root without an OS user postgres to run the server: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		// root's t.TempDir() directories are 0700: let postgres in.
		if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		s.asUser = "postgres"
	}
	s.data = filepath.Join(dir, "data")
	s.logFile = filepath.Join(dir, "postgres.log")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.port = l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	s.run("initdb", "-D", s.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
	s.start()
	t.Cleanup(func() { s.stop("fast") })
	return s
}

// run runs one of the server's programs, as postgres when root.
func (s *pgServer) run(prog string, args ...string) {
	s.t.Helper()
	name := filepath.Join(s.bin, prog)
	if s.asUser != "" {
		args = append([]string{"-u", s.asUser, "--", name}, args...)
		name = "runuser"
	}
	cmd := exec.Command(name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		logs, _ := os.ReadFile(s.logFile)
		s.t.Fatalf("%s %s: %v\n%s\nserver log:\n%s", prog, strings.Join(args, " "), err, out, logs)
	}
}

// url is the server's URL.
func (s *pgServer) url() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=2", s.port)
}

// start starts the server and waits until it accepts connections.
func (s *pgServer) start() {
	s.t.Helper()
	s.run("pg_ctl", "-D", s.data, "-l", s.logFile, "-w", "-t", "60", "-o",
		fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=50", s.port),
		"start")
}

// stop stops the server with pg_ctl's mode: "immediate" is a crash (no
// shutdown checkpoint; the next start recovers from the WAL), "fast" a
// clean stop.
func (s *pgServer) stop(mode string) {
	s.t.Helper()
	if _, err := os.Stat(filepath.Join(s.data, "postmaster.pid")); err != nil {
		return // not running
	}
	s.run("pg_ctl", "-D", s.data, "-m", mode, "-w", "-t", "60", "stop")
}

// TestRestartWhileTasksRun runs a real worker on a private server, crashes
// and restarts the server while tasks run, and checks that nothing is
// lost: every task ends succeeded in the result backend and no task row is
// left. During the outage, calls fail with stem.ErrUnavailable (the URL
// redacted) rather than hang; afterwards the pool and the listening
// connection reconnect by themselves.
func TestRestartWhileTasksRun(t *testing.T) {
	srv := startOwnPostgres(t)
	ctx := t.Context()
	e, err := Open(ctx, srv.url(), Options{ResultTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	const total = 3000
	var (
		mu   sync.Mutex
		runs = map[string]int{}
		done atomic.Int64
	)
	reg := worker.NewRegistry()
	reg.MustRegister("work", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		mu.Lock()
		runs[tc.ID()]++
		first := runs[tc.ID()] == 1
		mu.Unlock()
		if first {
			done.Add(1)
		}
		time.Sleep(time.Millisecond) // the task's work, not synchronisation
		return nil, nil
	}, worker.TaskOptions{})
	w, err := worker.New(worker.Config{
		Broker: e, Results: e, Registry: e, Handlers: reg, Node: "fault",
		Concurrency: 16, Prefetch: 64, MaxBatch: 64, Lease: 10 * time.Second, ClaimWait: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < total; i += 500 {
		envs := make([]broker.Envelope, 500)
		for j := range envs {
			envs[j] = broker.Envelope{ID: "task-" + strconv.Itoa(i+j), Name: "work", Queue: "default", MaxRetries: -1, CreatedAt: time.Now()}
		}
		if err := e.PublishBatch(ctx, envs); err != nil {
			t.Fatal(err)
		}
	}
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(ctx) }()

	testutil.Eventually(t, time.Minute, func() bool { return done.Load() >= total/4 }, "the worker did not get going")
	srv.stop("immediate")
	err = e.Publish(ctx, broker.Envelope{ID: "during", Name: "work", Queue: "default"})
	if !errors.Is(err, stem.ErrUnavailable) || !strings.Contains(err.Error(), fmt.Sprint(srv.port)) {
		t.Fatalf("Publish while the server is down = %v; want stem.ErrUnavailable naming the server", err)
	}
	atOutage := done.Load()
	srv.start()
	t.Logf("server crashed and restarted after %d of %d tasks", atOutage, total)

	testutil.Eventually(t, 2*time.Minute, func() bool { return done.Load() >= total }, "only %d of %d tasks ran after the restart", done.Load(), total)
	w.Shutdown(worker.Warm)
	if err := <-stopped; err != nil {
		t.Fatalf("worker: %v", err)
	}
	// Nothing lost: every task succeeded, no row left behind.
	for i := range total {
		id := "task-" + strconv.Itoa(i)
		st, err := e.Get(ctx, id)
		if err != nil || st.State != result.Succeeded {
			t.Fatalf("task %s: state %s, %v; want succeeded", id, st.State, err)
		}
	}
	var left int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{e.Schema()}.Sanitize()+`.tasks`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d task rows left after the burn-down (%v)", left, err)
	}
	dups := 0
	for _, n := range runs {
		dups += n - 1
	}
	t.Logf("tasks run more than once (at-least-once across the crash): %d", dups)
	testutil.Eventually(t, 10*time.Second, e.listen.listening, "the listening connection did not come back")

	// A waiting claim is woken by a notification again.
	got := make(chan []broker.Delivery, 1)
	go func() {
		ds, _ := e.Claim(ctx, broker.ClaimParams{Queues: []string{"after"}, Max: 1, Lease: time.Minute, Wait: 20 * time.Second})
		got <- ds
	}()
	pause(t, 50*time.Millisecond)
	if err := e.Publish(ctx, broker.Envelope{ID: "after", Name: "work", Queue: "after"}); err != nil {
		t.Fatal(err)
	}
	select {
	case ds := <-got:
		if len(ds) != 1 {
			t.Fatalf("claim after the restart = %v", ds)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a publish after the restart did not wake a waiting claim")
	}
}

package cli

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/stemhq/stem/internal/testutil"
	"github.com/stemhq/stem/tasks"
	"github.com/stemhq/stem/worker"
)

// TestMain makes "stem" available to every testscript of this package: the
// test binary re-executes itself as the stem command.
func TestMain(m *testing.M) {
	// Workers started by the scripts re-execute this binary (as
	// /proc/self/exe) to supervise exec tasks.
	tasks.ServeSupervisorIfRequested()
	// Isolation children re-execute it too (argv[0] stem-isolation-child):
	// the stem command serves them with its own handlers.
	if os.Getenv(worker.ChildEnv) == "1" {
		os.Exit(Main(os.Args[1:]))
	}
	testscript.Main(leakChecked{m}, map[string]func(){
		// The exit code is echoed on stderr as "[exit N]" so scripts can
		// assert it: stderr '\[exit 64\]'.
		"stem": func() {
			code := Main(os.Args[1:])
			fmt.Fprintf(os.Stderr, "[exit %d]\n", code)
			os.Exit(code)
		},
	})
}

// leakChecked runs the tests and then fails the run when they left a
// goroutine behind (goleak): testscript.Main exits with what Run returns.
// The "stem" command re-executed by the scripts never gets here.
type leakChecked struct{ m *testing.M }

func (l leakChecked) Run() int {
	code := l.m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			return 1
		}
	}
	return code
}

// scriptParams returns testscript parameters for the scripts in dir. Every
// script gets its own namespace (STEM_WORKER_NAMESPACE) so scripts never
// see each other's tasks or workers. The scripts run with brokerURL as
// STEM_BROKER_URL, or, when it is empty, on the default SQLite file of the
// script's own state directory.
func scriptParams(t *testing.T, dir string, brokerURL string) testscript.Params {
	return testscript.Params{
		Dir: dir,
		Setup: func(e *testscript.Env) error {
			ns := fmt.Sprintf("t%d", time.Now().UnixNano())
			e.Setenv("STEM_WORKER_NAMESPACE", ns)
			if brokerURL != "" {
				e.Setenv("STEM_BROKER_URL", brokerURL)
			}
			e.Setenv("STEM_LOG_FORMAT", "text")
			// No packaged env file of the machine leaks into the scripts.
			e.Setenv("STEM_ENV_FILE", "")
			// The default broker is a SQLite file in the state directory.
			e.Setenv("XDG_STATE_HOME", e.WorkDir+"/state")
			// Scripts share the test Redis: their task states expire soon.
			e.Setenv("STEM_RESULT_TTL", "10m")
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"waitfor":     cmdWaitFor,
			"signal":      cmdSignal,
			"freeport":    cmdFreePort,
			"waitworkers": cmdWaitWorkers,
			"capture":     cmdCapture,
			"waitstate":   cmdWaitState,
			"httpget":     cmdHTTPGet,
			"notifysock":  cmdNotifySocket,
			"waitpids":    cmdWaitPIDs,
			"procsgone":   cmdProcsGone,
		},
		RequireExplicitExec: true,
	}
}

// cmdWaitFor implements `waitfor FILE TEXT [TIMEOUT]`: wait until FILE
// (relative to $WORK) contains TEXT. It is how scripts wait for a
// background worker's log line instead of sleeping.
func cmdWaitFor(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: waitfor FILE TEXT [TIMEOUT]")
	}
	within := 10 * time.Second
	if len(args) > 2 {
		d, err := time.ParseDuration(args[2])
		ts.Check(err)
		within = d
	}
	path := ts.MkAbs(args[0])
	ok := testutil.Poll(within, func() bool {
		b, _ := os.ReadFile(path)
		return strings.Contains(string(b), args[1])
	})
	if !ok {
		b, _ := os.ReadFile(path)
		ts.Fatalf("%s does not contain %q after %s; it holds:\n%s", args[0], args[1], within, b)
	}
}

// cmdSignal implements `signal PIDFILE SIG`: send SIG (TERM, INT, QUIT,
// KILL, ...) to the process named by PIDFILE (relative to $WORK), waiting up
// to 10s for the pidfile to appear.
func cmdSignal(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: signal PIDFILE SIG")
	}
	path := ts.MkAbs(args[0])
	var pid int
	ok := testutil.Poll(10*time.Second, func() bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		first, _, _ := strings.Cut(string(b), "\n") // the PID is the first line
		pid, err = strconv.Atoi(strings.TrimSpace(first))
		return err == nil && pid > 0
	})
	if !ok {
		ts.Fatalf("no pid in %s after 10s", args[0])
	}
	sig := unix.SignalNum("SIG" + args[1])
	if sig == 0 {
		ts.Fatalf("unknown signal %s", args[1])
	}
	ts.Check(syscall.Kill(pid, sig))
}

// cmdFreePort implements `freeport VAR`: set VAR to a free loopback TCP
// port, for a server the script starts itself.
func cmdFreePort(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: freeport VAR")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	ts.Check(err)
	port := l.Addr().(*net.TCPAddr).Port
	ts.Check(l.Close())
	ts.Setenv(args[0], strconv.Itoa(port))
}

// cmdWaitWorkers implements `waitworkers N`: wait until `stem worker
// status --json` lists N workers.
func cmdWaitWorkers(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitworkers N")
	}
	want := args[0]
	ok := testutil.Poll(15*time.Second, func() bool {
		err := ts.Exec("stem", "worker", "status", "--json")
		if err != nil {
			return false
		}
		return strings.Count(ts.ReadFile("stdout"), `"id": `) == mustAtoi(ts, want)
	})
	if !ok {
		ts.Fatalf("%s workers never registered", want)
	}
}

func mustAtoi(ts *testscript.TestScript, s string) int {
	n, err := strconv.Atoi(s)
	ts.Check(err)
	return n
}

// cmdCapture implements `capture VAR`: set VAR to the previous command's
// stdout, trimmed (a task id printed by enqueue, say).
func cmdCapture(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: capture VAR")
	}
	ts.Setenv(args[0], strings.TrimSpace(ts.ReadFile("stdout")))
}

// cmdWaitState implements `waitstate ID STATE`: wait until task ID is in
// STATE (started, succeeded, revoked, ...).
func cmdWaitState(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: waitstate ID STATE")
	}
	want := `"state": "` + args[1] + `"`
	ok := testutil.Poll(20*time.Second, func() bool {
		return ts.Exec("stem", "task", "status", args[0], "--json") == nil && strings.Contains(ts.ReadFile("stdout"), want)
	})
	if !ok {
		ts.Fatalf("task %s never reached state %s", args[0], args[1])
	}
}

// cmdHTTPGet implements `httpget URL`: GET URL (retrying for up to 10s
// while the server starts) and write the body to stdout.
func cmdHTTPGet(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: httpget URL")
	}
	var body []byte
	ok := testutil.Poll(10*time.Second, func() bool {
		resp, err := http.Get(args[0])
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, err = io.ReadAll(resp.Body)
		return err == nil && resp.StatusCode == http.StatusOK
	})
	if !ok {
		ts.Fatalf("GET %s failed for 10s", args[0])
	}
	ts.Stdout().Write(body)
}

// cmdNotifySocket implements `notifysock NAME`: listen on a unixgram
// socket $WORK/NAME (as systemd's NOTIFY_SOCKET does) and append every
// datagram, one per line, to $WORK/NAME.log until the script ends.
func cmdNotifySocket(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: notifysock NAME")
	}
	path := ts.MkAbs(args[0])
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	ts.Check(err)
	logf, err := os.Create(path + ".log")
	ts.Check(err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			logf.Write(append([]byte(strings.ReplaceAll(string(buf[:n]), "\n", " ")), '\n'))
		}
	}()
	ts.Defer(func() {
		conn.Close()
		<-done
		logf.Close()
	})
}

// readPID returns the pid in FILE (relative to $WORK), or 0.
func readPID(ts *testscript.TestScript, file string) int {
	b, err := os.ReadFile(ts.MkAbs(file))
	if err != nil || !strings.HasSuffix(string(b), "\n") {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// procGone reports whether pid has exited (a zombie counts as exited).
func procGone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && len(b) > i+2 && b[i+2] == 'Z'
}

// cmdWaitPIDs implements `waitpids FILE...`: wait up to 20s until every
// FILE holds a pid and a newline (written by a task), and SIGKILL those
// processes when the script ends, so that a failing script leaves nothing.
func cmdWaitPIDs(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) == 0 {
		ts.Fatalf("usage: waitpids FILE...")
	}
	for _, f := range args {
		if !testutil.Poll(20*time.Second, func() bool { return readPID(ts, f) > 0 }) {
			ts.Fatalf("no pid in %s after 20s", f)
		}
		pid := readPID(ts, f)
		ts.Defer(func() {
			if !procGone(pid) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		})
	}
}

// cmdProcsGone implements `procsgone WITHIN FILE...`: fail unless every
// process named by a pid FILE has exited within WITHIN.
func cmdProcsGone(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: procsgone WITHIN FILE...")
	}
	within, err := time.ParseDuration(args[0])
	ts.Check(err)
	deadline := time.Now().Add(within)
	for _, f := range args[1:] {
		pid := readPID(ts, f)
		if pid == 0 {
			ts.Fatalf("no pid in %s", f)
		}
		if !testutil.Poll(time.Until(deadline), func() bool { return procGone(pid) }) {
			b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
			ts.Fatalf("process %d (%s: %q) still alive %s later", pid, f, b, within)
		}
	}
}

// TestScripts runs the black-box CLI scripts that need no broker server
// (usage, configuration errors, exec tasks' processes): those that run a
// worker run it on the default SQLite file, since what they check does not
// depend on the engine.
func TestScripts(t *testing.T) {
	testscript.Run(t, scriptParams(t, "testdata/scripts", ""))
}

// TestScriptsEngines runs the black-box CLI scripts that run workers on
// every engine: SQLite always (the default, no server), Redis and Postgres
// when STEM_TEST_REDIS_URL and STEM_TEST_POSTGRES_URL are set (mandatory
// under CI). A script whose behaviour depends on the engine at all (the
// control plane, pauses, revokes, signing, leases after a kill -9,
// readiness from the worker registry) belongs here, not in a directory
// that runs on one engine; only faults of one engine's server (a Redis
// restart, AOF) stay in testdata/faults.
func TestScriptsEngines(t *testing.T) {
	for _, eng := range []struct{ name, env string }{
		{"sqlite", ""},
		{"redis", "STEM_TEST_REDIS_URL"},
		{"postgres", "STEM_TEST_POSTGRES_URL"},
	} {
		t.Run(eng.name, func(t *testing.T) {
			url := ""
			if eng.env != "" {
				url = testutil.EnvOrSkip(t, eng.env)
			}
			p := scriptParams(t, "testdata/engines", url)
			setup := p.Setup
			p.Setup = func(e *testscript.Env) error {
				if err := setup(e); err != nil {
					return err
				}
				// Nodes started by `worker multi start` outlive a script
				// that fails before stopping them.
				work := e.WorkDir
				e.Defer(func() { killNodesUnder(work) })
				return nil
			}
			testscript.Run(t, p)
		})
	}
}

// TestScriptsFaults runs the fault scripts specific to Redis: each starts,
// kills and restarts its own redis-server on a free loopback port (never
// the shared one).
func TestScriptsFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("fault scripts start their own redis-server; skipped with -short")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("redis-server is not installed, and fault tests may not skip under CI")
		}
		t.Skip("redis-server not installed")
	}
	testscript.Run(t, scriptParams(t, "testdata/faults", ""))
}

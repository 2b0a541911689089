package cli

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/stemhq/stem/internal/testutil"
)

const testSecret = "s3cr3t"

// notifyBuffer is an output buffer that says when it was written to, so a
// test can wait for a log line without sleeping.
type notifyBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	wrote chan struct{}
}

func newNotifyBuffer() *notifyBuffer { return &notifyBuffer{wrote: make(chan struct{}, 1)} }

func (b *notifyBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case b.wrote <- struct{}{}:
	default:
	}
	return b.buf.Write(p)
}

func (b *notifyBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// runStem runs one command in process with env as its whole environment
// and returns its output and exit code. When until is set, the command's
// context is cancelled once its output contains until.
func runStem(t *testing.T, env map[string]string, until string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	env["STEM_ENV_FILE"] = ""
	env["STEM_LOG_FORMAT"] = "text"
	if _, ok := env["XDG_STATE_HOME"]; !ok {
		env["XDG_STATE_HOME"] = t.TempDir()
	}
	var environ []string
	for k, v := range env {
		environ = append(environ, k+"="+v)
	}
	root := New(WithDefaultEnvFile(""), WithEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, func() []string { return environ }))
	out, errOut := newNotifyBuffer(), newNotifyBuffer()
	root.SetOut(out)
	root.SetErr(errOut)
	root.SetArgs(args)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if until != "" {
		go func() {
			for range errOut.wrote {
				if strings.Contains(errOut.String(), until) {
					cancel()
					return
				}
			}
		}()
	}
	root.SetContext(ctx)
	code = Execute(root)
	return out.String(), errOut.String(), code
}

// secretURLs are broker URLs with the password in every place stem
// accepts one, on a port where nothing listens.
var secretURLs = map[string]string{
	"userinfo":       "postgres://stem:" + testSecret + "@127.0.0.1:1/stem?sslmode=disable",
	"password":       "postgres://stem@127.0.0.1:1/stem?sslmode=disable&password=" + testSecret,
	"PassWord":       "postgresql://stem@127.0.0.1:1/stem?PassWord=" + testSecret + "&sslmode=disable",
	"sslpassword":    "postgres://stem@127.0.0.1:1/stem?sslmode=disable&sslpassword=" + testSecret,
	"passfile":       "postgres://stem@127.0.0.1:1/stem?sslmode=disable&passfile=/etc/stem/" + testSecret + ".pgpass",
	"encoded key":    "postgres://stem@127.0.0.1:1/stem?sslmode=disable&pass%77ord=" + testSecret,
	"redis userinfo": "redis://:" + testSecret + "@127.0.0.1:1/0",
	"unparsable":     "postgres://stem:" + testSecret + "@127.0.0.1:1/stem%zz",
	"keyword/value":  "host=127.0.0.1 port=1 password=" + testSecret,
}

// TestSecretsNeverPrinted runs the commands an operator runs against a
// broker URL that holds a password, in every form, and checks the password
// appears nowhere in stdout, stderr or --json output, whatever the error.
func TestSecretsNeverPrinted(t *testing.T) {
	t.Parallel()
	commands := [][]string{
		{"enqueue", "stem.echo"},
		{"enqueue", "stem.echo", "--json"},
		{"task", "status", "0193c1f0-0000-7000-8000-000000000000"},
		{"task", "status", "0193c1f0-0000-7000-8000-000000000000", "--json"},
		{"worker", "diagnose", "--connect"},
		{"worker", "diagnose", "--connect", "--json"},
		{"worker", "ping"},
	}
	for name, u := range secretURLs {
		for _, args := range commands {
			t.Run(name+"/"+strings.Join(args, " "), func(t *testing.T) {
				t.Parallel()
				stdout, stderr, code := runStem(t, map[string]string{"STEM_BROKER_URL": u}, "", args...)
				if strings.Contains(stdout+stderr, testSecret) {
					t.Fatalf("the password is shown (exit %d):\nstdout: %s\nstderr: %s", code, stdout, stderr)
				}
				if code == ExitOK && args[0] != "worker" {
					t.Fatalf("exit 0 against an unreachable broker:\n%s%s", stdout, stderr)
				}
			})
		}
	}
}

// TestWorkerRunHidesPassword: the worker's start line and its retry
// warnings name the broker with the password redacted.
func TestWorkerRunHidesPassword(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"userinfo", "password", "sslpassword", "redis userinfo"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, stderr, _ := runStem(t, map[string]string{"STEM_BROKER_URL": secretURLs[name]}, "broker unavailable; retrying", "worker", "run", "--node", "secrets")
			if !strings.Contains(stderr, "xxxxx") || !strings.Contains(stderr, "retrying") {
				t.Fatalf("no redacted URL or retry line in:\n%s", stderr)
			}
			if strings.Contains(stderr, testSecret) {
				t.Fatalf("the password is shown:\n%s", stderr)
			}
		})
	}
}

// TestSecretsAgainstPostgres does the same against the test Postgres, which
// accepts the connection (trust authentication ignores the password): the
// start line, enqueue and task status of a real task.
func TestSecretsAgainstPostgres(t *testing.T) {
	base := testutil.EnvOrSkip(t, "STEM_TEST_POSTGRES_URL")
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	u := base + sep + "password=" + testSecret
	env := func() map[string]string {
		return map[string]string{"STEM_BROKER_URL": u, "STEM_WORKER_NAMESPACE": "secretspg"}
	}
	stdout, stderr, code := runStem(t, env(), "", "enqueue", "stem.echo", "--arg", "a=1")
	if code != ExitOK || strings.Contains(stdout+stderr, testSecret) {
		t.Fatalf("enqueue: exit %d, output shows the password or failed:\n%s%s", code, stdout, stderr)
	}
	id := strings.TrimSpace(stdout)
	for _, args := range [][]string{{"task", "status", id}, {"task", "status", id, "--json"}} {
		stdout, stderr, code = runStem(t, env(), "", args...)
		if code != ExitOK || strings.Contains(stdout+stderr, testSecret) {
			t.Fatalf("%v: exit %d:\n%s%s", args, code, stdout, stderr)
		}
	}
	_, stderr, _ = runStem(t, env(), "worker ready", "worker", "run", "--node", "secrets")
	t.Logf("worker run:\n%s", stderr)
	if !strings.Contains(stderr, "password=xxxxx") || strings.Contains(stderr, testSecret) {
		t.Fatalf("worker run start line:\n%s", stderr)
	}
}

// TestSecretsWithQuotesOrSpacesNeverPrinted: a password holding a quote
// (legal in a URL's user info) or a space (an operator who forgot to
// percent-encode it) is hidden too, in every message that quotes the URL.
func TestSecretsWithQuotesOrSpacesNeverPrinted(t *testing.T) {
	t.Parallel()
	urls := map[string]string{
		"apostrophe": "redis://:it's" + testSecret + "@127.0.0.1:1/0",
		"quote":      `postgres://stem:a"` + testSecret + "@127.0.0.1:1/stem?sslmode=disable",
		"space":      "redis://:a " + testSecret + "@127.0.0.1:1/0",
	}
	for name, u := range urls {
		for _, args := range [][]string{{"enqueue", "stem.echo"}, {"worker", "diagnose", "--connect", "--json"}, {"worker", "ping"}} {
			t.Run(name+"/"+strings.Join(args, " "), func(t *testing.T) {
				t.Parallel()
				stdout, stderr, code := runStem(t, map[string]string{"STEM_BROKER_URL": u}, "", args...)
				if strings.Contains(stdout+stderr, testSecret) {
					t.Fatalf("the password is shown (exit %d):\nstdout: %s\nstderr: %s", code, stdout, stderr)
				}
			})
		}
	}
}

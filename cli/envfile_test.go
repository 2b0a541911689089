package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDefaultEnvFile: without STEM_ENV_FILE the packaged env file is read
// when it exists; the process environment still wins over it; an explicit
// STEM_ENV_FILE replaces it.
func TestDefaultEnvFile(t *testing.T) {
	dir := t.TempDir()
	def := filepath.Join(dir, "stem.env")
	os.WriteFile(def, []byte("STEM_WORKER_CONCURRENCY=zero\n"), 0o600)
	run := func(env map[string]string, defFile string) string {
		var out bytes.Buffer
		root := New(WithDefaultEnvFile(defFile), WithEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, func() []string { return nil }))
		root.SetArgs([]string{"worker", "run"})
		root.SetOut(&out)
		root.SetErr(&out)
		_, err := root.ExecuteC()
		if err != nil {
			return err.Error()
		}
		return out.String()
	}
	if got := run(nil, def); !strings.Contains(got, `invalid STEM_WORKER_CONCURRENCY="zero"`) {
		t.Fatalf("the default env file was not read: %s", got)
	}
	if got := run(map[string]string{"STEM_WORKER_CONCURRENCY": "x1"}, def); !strings.Contains(got, `"x1"`) {
		t.Fatalf("the environment did not win over the default env file: %s", got)
	}
	other := filepath.Join(dir, "other.env")
	os.WriteFile(other, []byte("STEM_WORKER_PREFETCH=none\n"), 0o600)
	if got := run(map[string]string{"STEM_ENV_FILE": other}, def); !strings.Contains(got, `STEM_WORKER_PREFETCH="none"`) {
		t.Fatalf("STEM_ENV_FILE did not replace the default: %s", got)
	}
	if got := run(map[string]string{"STEM_WORKER_CONCURRENCY": "y2"}, filepath.Join(dir, "missing.env")); !strings.Contains(got, `"y2"`) {
		t.Fatalf("a missing default env file is not ignored: %s", got)
	}
}

// TestEveryCommandReadsTheEnvFile: the commands that talk to the broker,
// the daemon toolkit and units all resolve their settings through the one
// path, so a value set only in the default env file reaches each of them.
func TestEveryCommandReadsTheEnvFile(t *testing.T) {
	dir := t.TempDir()
	def := filepath.Join(dir, "stem.env")
	os.WriteFile(def, []byte("STEM_BROKER_URL=bogus://from-env-file\n"+
		"STEM_ROUTING_CONFIG="+dir+"/routing-from-env-file.yaml\n"+
		"STEM_WORKER_PIDFILE="+dir+"/pid-from-env-file.pid\n"+
		"STEM_WORKER_COMMAND="+dir+"/command-from-env-file worker run\n"), 0o600)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"enqueue", "stem.echo"}, "bogus://from-env-file"},
		{[]string{"task", "status", "x"}, "bogus://from-env-file"},
		{[]string{"worker", "ping"}, "bogus://from-env-file"},
		{[]string{"worker", "revoke", "--task", "x"}, "bogus://from-env-file"},
		{[]string{"routing", "dump"}, "routing-from-env-file.yaml"},
		{[]string{"units", "generate", "--queue", "q"}, "routing-from-env-file.yaml"},
		{[]string{"worker", "multi", "start", "a", "--pidfile", dir + "/%n.pid"}, "command-from-env-file"},
		{[]string{"worker", "multi", "start", "a", "--pidfile", dir + "/%n.pid", "--queue", "q"}, "routing-from-env-file.yaml"},
		{[]string{"worker", "healthcheck"}, "pid-from-env-file.pid"},
		{[]string{"worker", "diagnose"}, "command-from-env-file"},
	} {
		var out bytes.Buffer
		root := New(WithDefaultEnvFile(def), WithEnv(func(string) (string, bool) { return "", false }, func() []string { return nil }))
		root.SetArgs(tc.args)
		root.SetOut(&out)
		root.SetErr(&out)
		if _, err := root.ExecuteC(); err != nil {
			out.WriteString(err.Error())
		}
		if !strings.Contains(out.String(), tc.want) {
			t.Errorf("stem %s did not read the env file (want %q in the output): %s", strings.Join(tc.args, " "), tc.want, out.String())
		}
	}
}

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

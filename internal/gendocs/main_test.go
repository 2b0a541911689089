package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestGenerate writes the docs of the real command tree and checks a page
// per command and the three completions exist, with the version and date.
func TestGenerate(t *testing.T) {
	out := t.TempDir()
	if err := run([]string{"-out", out, "-version", "v9.9.9", "-date", "2026-01-02"}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"man/stem.1", "man/stem-worker-run.1", "man/stem-units.1", "man/stem-units-install.1",
		"completions/stem.bash", "completions/_stem", "completions/stem.fish"} {
		b, err := os.ReadFile(filepath.Join(out, p))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) == 0 {
			t.Errorf("%s is empty", p)
		}
	}
	b, _ := os.ReadFile(filepath.Join(out, "man/stem-worker-run.1"))
	if !strings.Contains(string(b), `"stem v9.9.9"`) || !strings.Contains(string(b), "Jan 2026") {
		t.Errorf("stem-worker-run.1 lacks the version or date:\n%.300s", b)
	}
	// Same input, same bytes.
	out2 := t.TempDir()
	if err := run([]string{"-out", out2, "-version", "v9.9.9", "-date", "2026-01-02"}); err != nil {
		t.Fatal(err)
	}
	b2, _ := os.ReadFile(filepath.Join(out2, "man/stem-worker-run.1"))
	if string(b) != string(b2) {
		t.Error("two runs gave different man pages")
	}
}

func TestBadArguments(t *testing.T) {
	for _, args := range [][]string{{}, {"-out", t.TempDir(), "extra"}, {"-out", t.TempDir(), "-date", "yesterday"}} {
		if err := run(args); err == nil {
			t.Errorf("run(%q): want an error", args)
		}
	}
	if _, err := manDate("", "soon"); err == nil {
		t.Error("SOURCE_DATE_EPOCH=soon: want an error")
	}
	if d, err := manDate("", "0"); err != nil || !d.Equal(time.Unix(0, 0)) {
		t.Errorf("SOURCE_DATE_EPOCH=0: %v %v", d, err)
	}
}

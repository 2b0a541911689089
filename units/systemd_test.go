package units

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

// MaxExposure is the highest `systemd-analyze security --offline=true`
// exposure the template may score.
const MaxExposure = 1.5

// systemdAnalyze returns the path of systemd-analyze. Without it the test
// skips on a laptop and fails under CI, where .ci/run installs it.
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze is not installed (apt-get install systemd), and this test may not skip under CI")
		}
		t.Skip("systemd-analyze not installed")
	}
	return p
}

// renderForAnalyze renders units whose binary is a real executable in a
// directory named with a specifier (opt-%h: left unescaped, systemd would
// look for the binary under the host name and verify would fail),
// writes the template and target to a unit directory and returns it.
func renderForAnalyze(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "opt-%h", "stem")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	unitDir := filepath.Join(dir, "units")
	files, err := Render(Spec{Binary: bin, UnitDir: unitDir, Nodes: []Node{{Name: "alpha"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(unitDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if f.Kind == KindTemplate || f.Kind == KindTarget {
			if err := os.WriteFile(f.Path, f.Content, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := os.Stat("/bin/kill"); err != nil {
		t.Fatalf("ExecReload= runs /bin/kill, which this machine lacks (apt-get install procps): %v", err)
	}
	return unitDir
}

// TestSystemdAnalyzeVerify runs `systemd-analyze verify` on a node instance
// of the template and on the target: no error, no warning.
func TestSystemdAnalyzeVerify(t *testing.T) {
	tool := systemdAnalyze(t)
	dir := renderForAnalyze(t)
	for _, u := range []string{"stem-worker@alpha.service", TargetUnit} {
		cmd := exec.Command(tool, "verify", "--man=no", filepath.Join(dir, u))
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stderr, &stderr
		err := cmd.Run()
		// Unknown keys only warn (exit 0): any output is a failure.
		if err != nil || stderr.Len() > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", u, err, stderr.String())
		}
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)

// TestSystemdAnalyzeSecurity checks the template's exposure score.
func TestSystemdAnalyzeSecurity(t *testing.T) {
	tool := systemdAnalyze(t)
	dir := renderForAnalyze(t)
	// --threshold is in tenths: exit non-zero above MaxExposure.
	cmd := exec.Command(tool, "security", "--offline=true", "--no-pager",
		"--threshold="+strconv.Itoa(int(MaxExposure*10)), filepath.Join(dir, "stem-worker@alpha.service"))
	out, err := cmd.CombinedOutput()
	m := exposureRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security printed no exposure level (%v):\n%s", err, out)
	}
	score, perr := strconv.ParseFloat(string(m[1]), 64)
	if perr != nil {
		t.Fatal(perr)
	}
	t.Logf("exposure of stem-worker@alpha.service: %.1f (at most %.1f)", score, MaxExposure)
	if err != nil || score > MaxExposure {
		t.Errorf("exposure %.1f, want at most %.1f (%v):\n%s", score, MaxExposure, err, out)
	}
}

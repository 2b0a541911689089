package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stemhq/stem"
)

// TestChildEnviron pins the precedence of a node's environment: set >
// process environment > env file, an empty variable counting as unset.
func TestChildEnviron(t *testing.T) {
	base := []string{"PATH=/bin", "SHARED=env", "EMPTY=", "STEM_WORKER_NODE=outer", "ONLY_ENV=1"}
	file := map[string]string{"SHARED": "file", "EMPTY": "file", "ONLY_FILE": "2", "STEM_WORKER_NODE": "file"}
	set := map[string]string{"STEM_WORKER_NODE": "alpha"}
	got := ChildEnviron(base, file, set)
	want := []string{"PATH=/bin", "SHARED=env", "ONLY_ENV=1", "EMPTY=file", "ONLY_FILE=2", "STEM_WORKER_NODE=alpha"}
	if !slices.Equal(got, want) {
		t.Fatalf("ChildEnviron =\n %q\nwant\n %q", got, want)
	}
}

func TestCheckNodeName(t *testing.T) {
	for _, ok := range []string{"alpha", "a.b", "w-1", "x_y", "ünï"} {
		if err := CheckNodeName(ok); err != nil {
			t.Errorf("CheckNodeName(%q) = %v", ok, err)
		}
	}
	var ue *UsageError
	for _, bad := range []string{"", "a/b", "a b", ".", "..", "...", "a\nb", "../x", "x:y"} {
		if err := CheckNodeName(bad); !errors.As(err, &ue) {
			t.Errorf("CheckNodeName(%q) = %v, want a usage error", bad, err)
		}
	}
	if err := CheckNodeNames([]string{"a", "b", "a"}); !errors.As(err, &ue) || !strings.Contains(err.Error(), "twice") {
		t.Errorf("a node named twice: %v", err)
	}
}

func TestPaths(t *testing.T) {
	nodes, err := Paths([]string{"a", "b"}, "/run/%n.pid", "/log/%i-%n.log", time.Now())
	if err != nil || len(nodes) != 2 || nodes[1].Pidfile != "/run/b.pid" || nodes[1].Logfile != "/log/2-b.log" {
		t.Fatalf("Paths = %+v, %v", nodes, err)
	}
	var ue *UsageError
	for tmpl, want := range map[string]string{
		"/run/%d.pid": "uses %d",
		"/run/x.pid":  "would share pidfile",
		"/run/%q.pid": "--pidfile: template",
	} {
		if _, err := Paths([]string{"a", "b"}, tmpl, "", time.Now()); !errors.As(err, &ue) || !strings.Contains(err.Error(), want) {
			t.Errorf("pidfile %s: %v, want a usage error with %q", tmpl, err, want)
		}
	}
}

// TestStartPlan: every node gets the command, its paths (directories
// made), the resolved queues and the env file under the environment.
func TestStartPlan(t *testing.T) {
	dir := t.TempDir()
	p := StartPlan{Pidfile: dir + "/run/%n.pid", Logfile: dir + "/log/%n.log", Command: `/bin/stem "worker run"`,
		Args: []string{"--x"}, CommandLine: "--concurrency 4", Queues: []string{"q1", "q2"},
		Environ: []string{"A=env"}, EnvFile: map[string]string{"A": "file", "B": "file"}}
	nodes, err := p.Nodes([]string{"alpha"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	n := nodes[0]
	if !slices.Equal(n.Argv, []string{"/bin/stem", "worker run", "--x", "--concurrency", "4"}) {
		t.Errorf("argv %q", n.Argv)
	}
	want := []string{"A=env", "B=file", "STEM_WORKER_LOGFILE=" + dir + "/log/alpha.log", "STEM_WORKER_NODE=alpha",
		"STEM_WORKER_PIDFILE=" + dir + "/run/alpha.pid", "STEM_WORKER_QUEUES=q1,q2"}
	if !slices.Equal(n.Env, want) {
		t.Errorf("env %q\nwant %q", n.Env, want)
	}
	for _, d := range []string{"run", "log"} {
		if st, err := os.Stat(filepath.Join(dir, d)); err != nil || !st.IsDir() {
			t.Errorf("directory %s not made: %v", d, err)
		}
	}
	var ce *stem.ConfigError
	if _, err := (StartPlan{Pidfile: p.Pidfile, Command: `"unclosed`}).Nodes([]string{"a"}, time.Now()); !errors.As(err, &ce) {
		t.Errorf("a bad STEM_WORKER_COMMAND: %v, want a config error", err)
	}
	var ue *UsageError
	if _, err := (StartPlan{Pidfile: p.Pidfile, Command: "x", Dir: dir + "/missing"}).Nodes([]string{"a"}, time.Now()); !errors.As(err, &ue) {
		t.Errorf("a missing --workdir: %v, want a usage error", err)
	}
}

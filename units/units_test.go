package units

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/unit"
	"github.com/joho/godotenv"

	"github.com/stemhq/stem/config"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/")

// goldenCases are the specs whose renderings testdata/NAME.golden pins.
var goldenCases = []struct {
	name string
	spec Spec
}{
	// What the packages ship: no node.
	{"packaged", Spec{}},
	{"two-nodes", Spec{Nodes: []Node{
		{Name: "alpha", Queues: []string{"critical", "default"}, Broadcasts: []string{"ops"}, Concurrency: 8,
			Env: []EnvVar{{"REPORTS_DIR", "/var/lib/reports"}, {"GREETING", "hello, 100% $HOME"}, {"EMPTY", ""}}},
		{Name: "beta", Autoscale: &Autoscale{Min: 2, Max: 16}},
	}}},
	// Paths holding '%' must come out doubled; durations follow the grace.
	{"custom", Spec{
		Binary: "/opt/stem-100%/bin/stem", User: "tasks", Group: "tasks", EnvFile: "/srv/stem%h/stem.env",
		NodeEnvDir: "/srv/stem%h/nodes", UnitDir: "/usr/local/lib/systemd/system", Name: "tasks",
		ShutdownGrace: 2 * time.Minute, Watchdog: time.Minute,
		Nodes: []Node{{Name: "reports.1"}},
	}},
}

// dump renders files as one text: a header per file, then its content.
func dump(files []File) []byte {
	var b bytes.Buffer
	for _, f := range files {
		if f.Link != "" {
			fmt.Fprintf(&b, "==> %s -> %s (%s)\n", f.Path, f.Link, f.Kind)
			continue
		}
		group := ""
		if f.Group != "" {
			group = " root:" + f.Group
		}
		fmt.Fprintf(&b, "==> %s (%s, %04o%s)\n", f.Path, f.Kind, f.Mode, group)
		b.Write(f.Content)
	}
	return b.Bytes()
}

func TestRenderGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			files, err := Render(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			got := dump(files)
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./units -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("rendering differs from %s (go test ./units -update rewrites it):\n%s", path, lineDiff(string(want), string(got)))
			}
			// Rendering is pure.
			again, _ := Render(tc.spec)
			if !bytes.Equal(dump(again), got) {
				t.Error("a second rendering differs from the first")
			}
		})
	}
}

// lineDiff shows the first lines that differ.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return fmt.Sprintf("line %d:\n  want %q\n  got  %q", i+1, wl, gl)
		}
	}
	return "(no line differs)"
}

// fileOf returns the rendered file of kind k (the first one).
func fileOf(t *testing.T, files []File, k Kind) File {
	t.Helper()
	for _, f := range files {
		if f.Kind == k {
			return f
		}
	}
	t.Fatalf("no %s file rendered", k)
	return File{}
}

// options parses a unit file with go-systemd's parser.
func options(t *testing.T, content []byte) []*unit.UnitOption {
	t.Helper()
	opts, err := unit.DeserializeOptions(bytes.NewReader(content))
	if err != nil {
		t.Fatalf("the rendered unit does not parse: %v", err)
	}
	return opts
}

// values returns every value of section/name.
func values(opts []*unit.UnitOption, section, name string) []string {
	var out []string
	for _, o := range opts {
		if o.Section == section && o.Name == name {
			out = append(out, o.Value)
		}
	}
	return out
}

func one(t *testing.T, opts []*unit.UnitOption, section, name string) string {
	t.Helper()
	v := values(opts, section, name)
	if len(v) != 1 {
		t.Fatalf("[%s] %s= appears %d times (%q), want once", section, name, len(v), v)
	}
	return v[0]
}

// TestTemplateRoundTrip parses the template, checks the settings the issue
// and the worker rely on, and serializes it back: the options survive.
func TestTemplateRoundTrip(t *testing.T) {
	files, err := Render(Spec{})
	if err != nil {
		t.Fatal(err)
	}
	tmpl := fileOf(t, files, KindTemplate)
	opts := options(t, tmpl.Content)
	want := map[[2]string]string{
		{"Service", "Type"}:                   "notify",
		{"Service", "NotifyAccess"}:           "main",
		{"Service", "User"}:                   "stem",
		{"Service", "Restart"}:                "on-failure",
		{"Service", "KillMode"}:               "mixed",
		{"Service", "WatchdogSec"}:            "30s",
		{"Service", "TimeoutStopSec"}:         "90s",
		{"Service", "RuntimeDirectory"}:       "stem",
		{"Service", "StateDirectory"}:         "stem",
		{"Service", "LogsDirectory"}:          "stem",
		{"Service", "ExecStart"}:              "/usr/bin/stem worker run --node %i --pidfile /run/stem/%i.pid --shutdown-grace 30s",
		{"Service", "ExecStartPost"}:          "/usr/bin/stem worker healthcheck --node %i --pidfile /run/stem/%i.pid",
		{"Service", "ExecReload"}:             "/bin/kill -HUP $MAINPID",
		{"Service", "RestartForceExitStatus"}: "129",
		{"Unit", "PartOf"}:                    TargetUnit,
		{"Unit", "StartLimitIntervalSec"}:     "60s",
		{"Unit", "StartLimitBurst"}:           "5",
		{"Install", "WantedBy"}:               "multi-user.target " + TargetUnit,
	}
	for k, v := range want {
		if got := one(t, opts, k[0], k[1]); got != v {
			t.Errorf("[%s] %s=%q, want %q", k[0], k[1], got, v)
		}
	}
	if got := values(opts, "Service", "EnvironmentFile"); strings.Join(got, " ") != "-/etc/stem/stem.env -/etc/stem/nodes/%i.env" {
		t.Errorf("EnvironmentFile= %q: want the shared file, then the node's", got)
	}
	// StartLimit* belong in [Unit]; in [Service] systemd ignores them.
	for _, k := range []string{"StartLimitIntervalSec", "StartLimitBurst"} {
		if v := values(opts, "Service", k); len(v) > 0 {
			t.Errorf("%s= in [Service]: systemd wants it in [Unit]", k)
		}
	}
	back, err := unit.DeserializeOptions(unit.Serialize(opts))
	if err != nil {
		t.Fatal(err)
	}
	if len(back) != len(opts) {
		t.Fatalf("round trip: %d options, want %d", len(back), len(opts))
	}
	for i := range opts {
		if !opts[i].Match(back[i]) {
			t.Errorf("round trip: option %d is %v, want %v", i, back[i], opts[i])
		}
	}
}

// TestStopTimeoutCoversGrace checks the relation systemd needs: the stop
// timeout exceeds the grace period the unit hands the worker, whatever the
// grace.
func TestStopTimeoutCoversGrace(t *testing.T) {
	for _, grace := range []time.Duration{time.Second, 30 * time.Second, 10 * time.Minute} {
		files, err := Render(Spec{ShutdownGrace: grace})
		if err != nil {
			t.Fatal(err)
		}
		opts := options(t, fileOf(t, files, KindTemplate).Content)
		exec := one(t, opts, "Service", "ExecStart")
		m := regexp.MustCompile(`--shutdown-grace (\S+)`).FindStringSubmatch(exec)
		if m == nil {
			t.Fatalf("ExecStart= %q passes no --shutdown-grace", exec)
		}
		g, err := time.ParseDuration(m[1])
		if err != nil || g != grace {
			t.Fatalf("ExecStart= passes --shutdown-grace %q, want %s", m[1], grace)
		}
		stop, err := time.ParseDuration(one(t, opts, "Service", "TimeoutStopSec"))
		if err != nil {
			t.Fatal(err)
		}
		if stop <= g {
			t.Errorf("grace %s: TimeoutStopSec=%s does not exceed it", g, stop)
		}
	}
	_, err := Render(Spec{ShutdownGrace: time.Minute, StopTimeout: time.Minute})
	if err == nil || !strings.Contains(err.Error(), "must exceed the shutdown grace period") {
		t.Errorf("a stop timeout equal to the grace: err = %v", err)
	}
}

// specifierRE finds a systemd specifier (or an escaped %%).
var specifierRE = regexp.MustCompile(`%.?`)

// TestPercentEscaped checks that every '%' systemd would expand in a
// rendered unit file is either doubled or one the renderer means (%i).
func TestPercentEscaped(t *testing.T) {
	for _, tc := range goldenCases {
		files, err := Render(tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if f.Kind != KindTemplate && f.Kind != KindTarget {
				continue
			}
			for _, o := range options(t, f.Content) {
				for _, m := range specifierRE.FindAllString(o.Value, -1) {
					if m != "%%" && m != "%i" {
						t.Errorf("%s: %s: [%s] %s=%q expands %q", tc.name, f.Path, o.Section, o.Name, o.Value, m)
					}
				}
			}
		}
	}
	files, _ := Render(goldenCases[2].spec)
	exec := one(t, options(t, fileOf(t, files, KindTemplate).Content), "Service", "ExecStart")
	if !strings.HasPrefix(exec, "/opt/stem-100%%/bin/stem ") {
		t.Errorf("ExecStart=%q: want the binary's %% doubled", exec)
	}
}

// TestNodeEnvRoundTrip reads the node env files back with godotenv (what
// stem's --env-file uses) and checks every value comes back unchanged.
func TestNodeEnvRoundTrip(t *testing.T) {
	tricky := []string{"", "plain", "a b", "100%", "$HOME", "${HOME}", `back\slash`, `"double"`, "#hash", "a #b", " lead", "trail ", "x=y", "ü", "semi;colon", "`tick`"}
	var env []EnvVar
	for i, v := range tricky {
		env = append(env, EnvVar{fmt.Sprintf("V%d", i), v})
	}
	files, err := Render(Spec{Nodes: []Node{{Name: "alpha", Queues: []string{"a", "b:c"}, Concurrency: 3, Env: env}}})
	if err != nil {
		t.Fatal(err)
	}
	f := fileOf(t, files, KindNodeEnv)
	if f.Path != "/etc/stem/nodes/alpha.env" || f.Mode != 0o640 || f.Group != "stem" {
		t.Errorf("node env file %s %04o group %q", f.Path, f.Mode, f.Group)
	}
	got, err := godotenv.Unmarshal(string(f.Content))
	if err != nil {
		t.Fatalf("godotenv cannot read the node env file: %v\n%s", err, f.Content)
	}
	if got[VarQueues] != "a,b:c" || got[VarConcurrency] != "3" {
		t.Errorf("queues %q, concurrency %q", got[VarQueues], got[VarConcurrency])
	}
	for i, v := range tricky {
		if k := fmt.Sprintf("V%d", i); got[k] != v {
			t.Errorf("%s: wrote %q, read back %q", k, v, got[k])
		}
	}
}

func TestValidateRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec Spec
		want string
	}{
		{"relative binary", Spec{Binary: "stem"}, `binary "stem": want a clean absolute path`},
		{"binary with a space", Spec{Binary: "/opt/my stem"}, `binary "/opt/my stem"`},
		{"binary with $", Spec{Binary: "/opt/$HOME/stem"}, `binary "/opt/$HOME/stem"`},
		{"dotdot", Spec{EnvFile: "/etc/../stem.env"}, `env file "/etc/../stem.env"`},
		{"user", Spec{User: "Root Admin"}, `user "Root Admin"`},
		{"zero watchdog is defaulted, short one refused", Spec{Watchdog: 5 * time.Second}, "watchdog 5s: must be at least 10s"},
		{"fractional", Spec{ShutdownGrace: 1500 * time.Millisecond}, "shutdown grace 1.5s: must be whole seconds"},
		{"negative", Spec{StartTimeout: -time.Second}, "start timeout -1s: must be greater than zero"},
		{"node slash", Spec{Nodes: []Node{{Name: "a/b"}}}, `node "a/b": names hold only`},
		{"node unicode", Spec{Nodes: []Node{{Name: "grün"}}}, `node "grün"`},
		{"node dots", Spec{Nodes: []Node{{Name: ".."}}}, `node ".."`},
		{"node empty", Spec{Nodes: []Node{{Name: ""}}}, `node ""`},
		{"node long", Spec{Nodes: []Node{{Name: strings.Repeat("n", 250)}}}, "too long for a unit name"},
		{"node twice", Spec{Nodes: []Node{{Name: "a"}, {Name: "a"}}}, `node "a": given twice`},
		{"queue", Spec{Nodes: []Node{{Name: "a", Queues: []string{"x y"}}}}, `node a: queue "x y"`},
		{"broadcast", Spec{Nodes: []Node{{Name: "a", Broadcasts: []string{""}}}}, `node a: broadcast ""`},
		{"concurrency", Spec{Nodes: []Node{{Name: "a", Concurrency: -1}}}, "node a: concurrency -1"},
		{"autoscale order", Spec{Nodes: []Node{{Name: "a", Autoscale: &Autoscale{Min: 5, Max: 2}}}}, "min is greater than max"},
		{"autoscale zero", Spec{Nodes: []Node{{Name: "a", Autoscale: &Autoscale{Min: 0, Max: 2}}}}, "bounds must be between 1"},
		{"concurrency outside", Spec{Nodes: []Node{{Name: "a", Concurrency: 9, Autoscale: &Autoscale{Min: 1, Max: 4}}}}, "outside the autoscale bounds"},
		{"env key", Spec{Nodes: []Node{{Name: "a", Env: []EnvVar{{"1X", "v"}}}}}, `variable name "1X"`},
		{"env reserved", Spec{Nodes: []Node{{Name: "a", Env: []EnvVar{{"STEM_WORKER_PIDFILE", "/x"}}}}}, "STEM_WORKER_PIDFILE cannot be set per node: the unit passes --pidfile"},
		{"env twice", Spec{Nodes: []Node{{Name: "a", Env: []EnvVar{{"X", "1"}, {"X", "2"}}}}}, "variable X given twice"},
		{"env quote", Spec{Nodes: []Node{{Name: "a", Env: []EnvVar{{"X", "it's"}}}}}, "single quote"},
		{"env newline", Spec{Nodes: []Node{{Name: "a", Env: []EnvVar{{"X", "a\nb"}}}}}, "control character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(tc.spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v; want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestRenderNodeLinks(t *testing.T) {
	files, err := Render(Spec{UnitDir: "/lib/systemd/system", Nodes: []Node{{Name: "alpha"}}})
	if err != nil {
		t.Fatal(err)
	}
	var links []string
	for _, f := range files {
		if f.Kind == KindEnableLink {
			links = append(links, f.Path+" -> "+f.Link)
		}
	}
	want := []string{
		"/etc/systemd/system/multi-user.target.wants/stem-worker@alpha.service -> /lib/systemd/system/stem-worker@.service",
		"/etc/systemd/system/stem-workers.target.wants/stem-worker@alpha.service -> /lib/systemd/system/stem-worker@.service",
	}
	if strings.Join(links, "\n") != strings.Join(want, "\n") {
		t.Errorf("links:\n%s\nwant:\n%s", strings.Join(links, "\n"), strings.Join(want, "\n"))
	}
}

// TestNodeVarsAreWorkerVars checks that every variable a node env file
// sets is one the worker documents (config.Vars), so no setting is written
// that the worker would ignore.
func TestNodeVarsAreWorkerVars(t *testing.T) {
	known := map[string]bool{}
	for _, v := range config.Vars {
		known[v.Key] = true
	}
	files := mustRender(t, Spec{Nodes: []Node{{Name: "a", Queues: []string{"q"}, Broadcasts: []string{"b"}, Concurrency: 2, Autoscale: &Autoscale{Min: 1, Max: 2}}}})
	m, err := godotenv.Unmarshal(string(fileOf(t, files, KindNodeEnv).Content))
	if err != nil {
		t.Fatal(err)
	}
	for k := range m {
		if !known[k] {
			t.Errorf("node env files set %s, which config.Vars does not document", k)
		}
	}
	if len(m) != 6 {
		t.Errorf("node env file sets %d variables, want 6: %v", len(m), m)
	}
}

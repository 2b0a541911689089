package routing

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stemhq/stem/config"
)

func TestSampleRoundTrips(t *testing.T) {
	c, err := Parse("sample.yaml", Sample())
	if err != nil {
		t.Fatalf("the sample does not load: %v", err)
	}
	if !c.Equal(SampleConfig()) {
		t.Fatalf("the sample loads as %+v, want SampleConfig", c)
	}
	var buf bytes.Buffer
	if err := c.Dump(&buf, YAML); err != nil {
		t.Fatal(err)
	}
	back, err := Parse("dump.yaml", buf.Bytes())
	if err != nil {
		t.Fatalf("the YAML dump does not load: %v\n%s", err, buf.String())
	}
	if !back.Equal(c) {
		t.Fatalf("YAML dump changed the config:\n%s", buf.String())
	}
	// Dumping again gives the same bytes.
	var again bytes.Buffer
	if err := back.Dump(&again, YAML); err != nil || again.String() != buf.String() {
		t.Fatalf("second dump differs:\n%s\n---\n%s", buf.String(), again.String())
	}
	// The JSON dump has the same content; YAML is a superset of JSON, so
	// it loads too.
	var js bytes.Buffer
	if err := c.Dump(&js, JSON); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(js.Bytes(), &m); err != nil {
		t.Fatalf("JSON dump: %v", err)
	}
	if m["default_queue"] != "default" {
		t.Fatalf("JSON dump lacks default_queue: %s", js.String())
	}
	fromJSON, err := Parse("dump.json", js.Bytes())
	if err != nil || !fromJSON.Equal(c) {
		t.Fatalf("JSON dump does not load back: %v", err)
	}
}

func TestDefaultRoundTrips(t *testing.T) {
	var buf bytes.Buffer
	if err := Default().Dump(&buf, YAML); err != nil {
		t.Fatal(err)
	}
	c, err := Parse("default", buf.Bytes())
	if err != nil || !c.Equal(Default()) {
		t.Fatalf("Default dump %q loads as %v, %v", buf.String(), c, err)
	}
}

func TestLoadFromFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routing.yaml")
	if err := os.WriteFile(path, Sample(), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil || c.File() != path {
		t.Fatalf("Load = %v, %v", c, err)
	}
	_, err = Load(filepath.Join(t.TempDir(), "none.yaml"))
	var re *Error
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "none.yaml") || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("Load of a missing file = %v", err)
	}
}

func TestLoadErrorsNameTheLine(t *testing.T) {
	tests := []struct {
		name, yaml string
		line       int
		msg        string
	}{
		{"empty", "", 0, "empty"},
		{"not a mapping", "- a\n- b\n", 1, "expected a mapping"},
		{"syntax", "queues:\n  a: [\n", 0, "line"},
		{"unknown key", "default_queue: a\nqueues: {a: {}}\nroutes: {}\n", 3, `unknown key "routes"`},
		{"queues not a mapping", "default_queue: a\nqueues: [a, b]\n", 2, "queues must be a mapping"},
		{"no queues", "default_queue: a\nqueues:\n", 2, "no queues"},
		{"missing default", "queues:\n  a: {}\n", 0, "default_queue is missing"},
		{"default not a queue", "default_queue: b\nqueues:\n  a: {}\n", 1, `default_queue "b" is not one of the queues`},
		{"default a list", "default_queue: [a]\nqueues: {a: {}}\n", 1, "default_queue must be a name"},
		{"bad queue name", "default_queue: a\nqueues:\n  a: {}\n  \"b c\": {}\n", 4, `queue name "b c"`},
		{"queue slash", "default_queue: a\nqueues:\n  a: {}\n  x/y: {}\n", 4, `queue name "x/y"`},
		{"duplicate queue", "default_queue: a\nqueues:\n  a: {}\n  a: {}\n", 4, `"a" is defined twice`},
		{"queue option", "default_queue: a\nqueues:\n  a:\n    priority: 3\n", 4, `unknown key "priority"`},
		{"queue scalar", "default_queue: a\nqueues:\n  a: fast\n", 3, "expected {} or {description"},
		{"alias unknown target", "default_queue: a\nqueues: {a: {}}\naliases:\n  fast: [a, crit]\n", 4, `alias "fast" names "crit"`},
		{"alias mixes", "default_queue: a\nqueues: {a: {}}\nbroadcasts: {ops: {}}\naliases:\n  x: [a, ops]\n", 5, "mixes"},
		{"alias shadows queue", "default_queue: a\nqueues: {a: {}, b: {}}\naliases:\n  b: [a]\n", 4, "name of a queue"},
		{"alias of alias", "default_queue: a\nqueues: {a: {}}\naliases:\n  x: [a]\n  y: [x]\n", 5, `names alias "x"`},
		{"alias empty", "default_queue: a\nqueues: {a: {}}\naliases:\n  x: []\n", 4, "names nothing"},
		{"alias item list", "default_queue: a\nqueues: {a: {}}\naliases:\n  x: [[a]]\n", 4, "every item must be a name"},
		{"channel is a queue", "default_queue: a\nqueues: {a: {}}\nbroadcasts:\n  a: {}\n", 4, "both a queue and a broadcast"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("/etc/stem/routing.yaml", []byte(tt.yaml))
			var re *Error
			if !errors.As(err, &re) {
				t.Fatalf("Parse error = %v, want *Error", err)
			}
			if re.File != "/etc/stem/routing.yaml" || (tt.line > 0 && re.Line != tt.line) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Parse error = %q (line %d), want line %d and %q", err, re.Line, tt.line, tt.msg)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q is not one line", err)
			}
			if tt.line > 0 && !strings.Contains(err.Error(), "routing.yaml:") {
				t.Fatalf("error %q does not show file:line", err)
			}
		})
	}
}

func TestAliasShorthand(t *testing.T) {
	c, err := Parse("f", []byte("default_queue: a\nqueues:\n  a:\n  b:\naliases:\n  one: b\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := c.ResolveQueues([]string{"one"}); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("ResolveQueues(one) = %v", got)
	}
}

func TestResolve(t *testing.T) {
	c := SampleConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		broadcast  bool
		in, want   []string
		errMsg     string
		wantUnknow bool
	}{
		{"queues as is", false, []string{"critical", "default"}, []string{"critical", "default"}, "", false},
		{"alias expands in order", false, []string{"urgent", "reports"}, []string{"critical", "reports"}, "", false},
		{"duplicates dropped", false, []string{"critical", "all"}, []string{"critical", "default", "reports"}, "", false},
		{"none", false, nil, nil, "", false},
		{"unknown", false, []string{"nope"}, nil, `unknown queue or alias "nope"`, true},
		{"channel alias as queue", false, []string{"everyone"}, nil, "not a queue", false},
		{"channel as queue", false, []string{"ops"}, nil, `unknown queue or alias "ops"`, true},
		{"channel", true, []string{"ops"}, []string{"ops"}, "", false},
		{"channel alias", true, []string{"everyone"}, []string{"ops"}, "", false},
		{"queue alias as channel", true, []string{"urgent"}, nil, "not a broadcast channel", false},
		{"unknown channel", true, []string{"x"}, nil, `unknown broadcast channel or alias "x"`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resolve := c.ResolveQueues
			if tt.broadcast {
				resolve = c.ResolveBroadcasts
			}
			got, err := resolve(tt.in)
			if tt.errMsg != "" {
				var ue *UnknownError
				if err == nil || !strings.Contains(err.Error(), tt.errMsg) || errors.As(err, &ue) != tt.wantUnknow {
					t.Fatalf("resolve(%v) error = %v, want %q", tt.in, err, tt.errMsg)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("resolve(%v) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

// TestValidName pins the names a routing file may use (config.ValidName).
func TestValidName(t *testing.T) {
	for _, ok := range []string{"default", "a.b-c_d:e", "ünï"} {
		if !config.ValidName(ok) {
			t.Errorf("ValidName(%q) = false", ok)
		}
	}
	for _, bad := range []string{"", "a b", "a/b", strings.Repeat("x", 201), "a\tb"} {
		if config.ValidName(bad) {
			t.Errorf("ValidName(%q) = true", bad)
		}
	}
}

func TestResolveFile(t *testing.T) {
	qs, bs, err := ResolveFile("", []string{"a", "b", "a"}, []string{"x", "x"})
	if err != nil || strings.Join(qs, ",") != "a,b" || strings.Join(bs, ",") != "x" {
		t.Fatalf("without a file: %v %v %v", qs, bs, err)
	}
	var le *ListError
	if _, _, err := ResolveFile("", []string{"ok"}, []string{"a b"}); !errors.As(err, &le) || le.Kind != "broadcast" || le.Name != "a b" || le.Err != nil {
		t.Fatalf("an invalid name: %v", err)
	}
	path := filepath.Join(t.TempDir(), "routing.yaml")
	if err := os.WriteFile(path, Sample(), 0o644); err != nil {
		t.Fatal(err)
	}
	rc, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var alias string
	for name := range rc.Aliases {
		if _, err := rc.ResolveQueues([]string{name}); err == nil {
			alias = name
		}
	}
	want, _ := rc.ResolveQueues([]string{alias, rc.DefaultQueue})
	qs, _, err = ResolveFile(path, []string{alias, rc.DefaultQueue}, nil)
	if err != nil || strings.Join(qs, ",") != strings.Join(want, ",") {
		t.Fatalf("through the file: %v %v; want %v", qs, err, want)
	}
	if _, _, err := ResolveFile(path, []string{"nope"}, nil); !errors.As(err, &le) || le.Kind != "queue" || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("an unknown queue: %v", err)
	}
	var fe *Error
	if _, _, err := ResolveFile(filepath.Join(t.TempDir(), "missing.yaml"), nil, nil); !errors.As(err, &fe) {
		t.Fatalf("a missing file: %v", err)
	}
}

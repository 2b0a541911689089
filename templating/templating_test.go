package templating

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestExpand(t *testing.T) {
	v := Vars{Node: "alpha", Hostname: "h1", Index: 3, Time: time.Date(2025, 7, 8, 9, 10, 11, 0, time.FixedZone("X", 3600))}
	tests := []struct {
		name, tmpl, want string
	}{
		{"node", "/run/stem/%n.pid", "/run/stem/alpha.pid"},
		{"node upper", "%N", "ALPHA"},
		{"host", "%h-%n", "h1-alpha"},
		{"index", "w%i", "w3"},
		{"index upper", "w%I", "w3"},
		{"timestamp is UTC", "%n-%d.log", "alpha-20250708T081011Z.log"},
		{"literal percent", "100%%", "100%"},
		{"percent then letter", "%%n", "%n"},
		{"no placeholders", "/var/log/x.log", "/var/log/x.log"},
		{"empty", "", ""},
		{"non-ASCII around", "é%né", "éalphaé"},
		{"all", "%n%N%h%i%I%d%%", "alphaALPHAh133" + "20250708T081011Z" + "%"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Expand(tt.tmpl, v)
			if err != nil {
				t.Fatalf("Expand(%q): %v", tt.tmpl, err)
			}
			if got != tt.want {
				t.Fatalf("Expand(%q) = %q, want %q", tt.tmpl, got, tt.want)
			}
		})
	}
}

func TestExpandErrors(t *testing.T) {
	full := Vars{Node: "alpha", Hostname: "h", Index: 1, Time: time.Unix(0, 0)}
	tests := []struct {
		name, tmpl string
		v          Vars
		col        int
		msg        string
	}{
		{"unknown specifier", "/run/%q.pid", full, 6, "unknown specifier %q"},
		{"unknown after non-ASCII", "éé%x", full, 3, "unknown specifier %x"},
		{"trailing lone percent", "/run/a%", full, 7, "lone % at the end"},
		{"only percent", "%", full, 1, "lone %"},
		{"node missing", "%n.pid", Vars{}, 1, "%n needs a node name"},
		{"upper node missing", "x%N", Vars{}, 2, "%N needs a node name"},
		{"host missing", "%h", Vars{}, 1, "%h needs a host name"},
		{"index missing", "%i", Vars{}, 1, "%i needs the node's index"},
		{"upper index missing", "%I", Vars{}, 1, "%i needs the node's index"},
		{"time missing", "%d", Vars{}, 1, "%d needs a timestamp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Expand(tt.tmpl, tt.v)
			var te *Error
			if !errors.As(err, &te) {
				t.Fatalf("Expand(%q) error = %v, want *Error", tt.tmpl, err)
			}
			if te.Column != tt.col || te.Template != tt.tmpl || !strings.Contains(te.Msg, tt.msg) {
				t.Fatalf("Expand(%q) = %+v, want column %d and %q", tt.tmpl, te, tt.col, tt.msg)
			}
			if !strings.Contains(err.Error(), tt.tmpl) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q should be one line naming the template", err)
			}
		})
	}
}

// TestSpecifierExamples checks every row of the table: its example is what
// Expand makes of it with ExampleVars.
func TestSpecifierExamples(t *testing.T) {
	seen := map[byte]bool{}
	for _, s := range Specifiers {
		if seen[s.Verb] {
			t.Fatalf("specifier %%%c listed twice", s.Verb)
		}
		seen[s.Verb] = true
		got, err := Expand("%"+string(s.Verb), ExampleVars)
		if err != nil || got != s.Example {
			t.Errorf("%%%c expands to %q, %v; table says %q", s.Verb, got, err, s.Example)
		}
	}
	for _, v := range "nNhiId%" {
		if !seen[byte(v)] {
			t.Errorf("specifier %%%c missing from the table", v)
		}
	}
}

func TestUses(t *testing.T) {
	tests := []struct {
		tmpl string
		verb byte
		want bool
	}{
		{"/run/%n-%d.pid", 'd', true},
		{"/run/%%d.pid", 'd', false},
		{"/run/%n.pid", 'd', false},
		{"%", 'd', false},
	}
	for _, tt := range tests {
		if got := Uses(tt.tmpl, tt.verb); got != tt.want {
			t.Errorf("Uses(%q, %q) = %v, want %v", tt.tmpl, tt.verb, got, tt.want)
		}
	}
}

// TestDocsTable checks that the README and docs/daemon.md list exactly
// Specifiers, with the same meanings and examples.
func TestDocsTable(t *testing.T) {
	for _, doc := range []string{"../README.md", "../docs/daemon.md"} {
		t.Run(doc, func(t *testing.T) { checkDocTable(t, doc) })
	}
}

func checkDocTable(t *testing.T, doc string) {
	data, err := os.ReadFile(doc)
	if err != nil {
		t.Fatalf("reading the docs: %v", err)
	}
	var rows []string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "| `%") {
			rows = append(rows, line)
		}
	}
	if len(rows) != len(Specifiers) {
		t.Fatalf("%s has %d placeholder rows, the table has %d", doc, len(rows), len(Specifiers))
	}
	for i, s := range Specifiers {
		want := "| `%" + string(s.Verb) + "` | " + s.Meaning + " | `" + s.Example + "` |"
		if rows[i] != want {
			t.Errorf("docs row %d:\n got  %s\n want %s", i+1, rows[i], want)
		}
	}
}

func FuzzExpand(f *testing.F) {
	for _, s := range []string{"%n", "%%", "%", "a%qb", "%d%i"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out, err := Expand(s, ExampleVars)
		if err == nil && strings.Count(s, "%") == 0 && out != s {
			t.Fatalf("Expand(%q) = %q without placeholders", s, out)
		}
	})
}

package cli

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/stemhq/stem/config"
)

// readmeRows returns the cells of the README table rows whose first cell
// matches first.
func readmeRows(t *testing.T, first *regexp.Regexp) [][]string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var rows [][]string
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "| ") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), " | ")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if first.MatchString(cells[0]) {
			rows = append(rows, cells)
		}
	}
	return rows
}

func unquote(s string) string { return strings.Trim(s, "`") }

// TestREADMEVariableTable checks the README's variable table against
// config.Vars, row by row: key, flag, default and meaning.
func TestREADMEVariableTable(t *testing.T) {
	rows := readmeRows(t, regexp.MustCompile("^`STEM_[A-Z_]+`$"))
	var docRows [][]string
	for _, r := range rows {
		if unquote(r[0]) == "STEM_TEST_REDIS_URL" || unquote(r[0]) == "STEM_TEST_POSTGRES_URL" {
			continue
		}
		docRows = append(docRows, r)
	}
	if len(docRows) != len(config.Vars) {
		t.Fatalf("README documents %d variables, config.Vars has %d", len(docRows), len(config.Vars))
	}
	for i, v := range config.Vars {
		r := docRows[i]
		if len(r) != 4 {
			t.Fatalf("README row %v: want 4 cells", r)
		}
		if unquote(r[0]) != v.Key || unquote(r[1]) != v.Flag || unquote(r[2]) != v.Default || r[3] != v.Doc {
			t.Errorf("README row %q does not match config.Vars %+v", strings.Join(r, " | "), v)
		}
	}
}

// TestREADMEExitCodeTable checks the README's exit-code table against
// ExitCodes.
func TestREADMEExitCodeTable(t *testing.T) {
	rows := readmeRows(t, regexp.MustCompile(`^\d+$`))
	if len(rows) != len(ExitCodes) {
		t.Fatalf("README lists %d exit codes, ExitCodes has %d", len(rows), len(ExitCodes))
	}
	for i, e := range ExitCodes {
		code, _ := strconv.Atoi(rows[i][0])
		if code != e.Code || rows[i][1] != e.Meaning {
			t.Errorf("README row %v does not match %d %q", rows[i], e.Code, e.Meaning)
		}
	}
}

// TestEveryBoundFlagIsDocumented walks the command tree: every flag bound
// to a variable must name a documented variable.
func TestEveryBoundFlagIsDocumented(t *testing.T) {
	known := map[string]bool{}
	for _, v := range config.Vars {
		known[v.Key] = true
	}
	root := New()
	stack := []*cobra.Command{root}
	for len(stack) > 0 {
		c := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		stack = append(stack, c.Commands()...)
		for _, fs := range []*pflag.FlagSet{c.Flags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				for _, k := range f.Annotations[envAnnotation] {
					if !known[k] {
						t.Errorf("%s --%s is bound to %s, which is not in config.Vars", c.CommandPath(), f.Name, k)
					}
				}
			})
		}
	}
}

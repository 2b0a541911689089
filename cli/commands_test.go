package cli

import (
	"flag"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestCommandList pins the command tree (testdata/commands.golden): adding,
// renaming or removing a command is a visible change to review, with its
// docs.
func TestCommandList(t *testing.T) {
	var paths []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			return
		}
		paths = append(paths, c.CommandPath())
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(New())
	sort.Strings(paths)
	got := strings.Join(paths, "\n") + "\n"
	const golden = "testdata/commands.golden"
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./cli -run TestCommandList -update)", err)
	}
	if got != string(want) {
		t.Fatalf("command tree changed; review and run with -update:\ngot:\n%s\nwant:\n%s", got, want)
	}
}

// TestEveryCommandTeaches checks that every command has a short and a long
// description or examples, and that every flag has help text.
func TestEveryCommandTeaches(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			return
		}
		if c.Short == "" {
			t.Errorf("%s has no short description", c.CommandPath())
		}
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if strings.TrimSpace(f.Usage) == "" {
				t.Errorf("%s --%s has no help text", c.CommandPath(), f.Name)
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(New())
}

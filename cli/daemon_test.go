package cli

import (
	"slices"
	"testing"
)

// TestChildEnviron pins the precedence of a node's environment: set >
// process environment > env file, an empty variable counting as unset.
func TestChildEnviron(t *testing.T) {
	base := []string{"PATH=/bin", "SHARED=env", "EMPTY=", "STEM_WORKER_NODE=outer", "ONLY_ENV=1"}
	file := map[string]string{"SHARED": "file", "EMPTY": "file", "ONLY_FILE": "2", "STEM_WORKER_NODE": "file"}
	set := map[string]string{"STEM_WORKER_NODE": "alpha"}
	got := childEnviron(base, file, set)
	want := []string{"PATH=/bin", "SHARED=env", "ONLY_ENV=1", "EMPTY=file", "ONLY_FILE=2", "STEM_WORKER_NODE=alpha"}
	if !slices.Equal(got, want) {
		t.Fatalf("childEnviron =\n %q\nwant\n %q", got, want)
	}
}

func TestCheckNodeName(t *testing.T) {
	for _, ok := range []string{"alpha", "a.b", "w-1", "x_y", "ünï"} {
		if err := checkNodeName(ok); err != nil {
			t.Errorf("checkNodeName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a/b", "a b", ".", "..", "...", "a\nb", "../x", "x:y"} {
		if err := checkNodeName(bad); ExitCode(err) != ExitUsage {
			t.Errorf("checkNodeName(%q) = %v, want a usage error", bad, err)
		}
	}
}

package proctree

import (
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"testing"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		line string
		want Proc
		ok   bool
	}{
		{"42 (sleep) S 7 42 42 0 -1", Proc{PID: 42, PPID: 7, PGID: 42, State: 'S'}, true},
		{"43 (a) b) (c) Z 1 9 9 0", Proc{PID: 43, PPID: 1, PGID: 9, State: 'Z'}, true},
		{"44 (x) R", Proc{}, false},
		{"garbage", Proc{}, false},
		{"x (y) S 1 2 3", Proc{}, false},
	}
	for _, tt := range tests {
		got, err := ParseStat([]byte(tt.line))
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseStat(%q) = %+v, %v; want %+v ok=%v", tt.line, got, err, tt.want, tt.ok)
		}
	}
}

// TestDescendantsFromFixture reads a fixture /proc: grandchildren are
// found through their parents, zombies are left out, strangers too.
func TestDescendantsFromFixture(t *testing.T) {
	root := t.TempDir()
	for _, l := range []string{
		"1 (init) S 0 1 1", "10 (sup) S 1 10 10", "11 (sh) S 10 10 10", "12 (sleep) S 11 10 10",
		"13 (setsid sleep) S 11 13 13", "14 (dead) Z 10 10 10", "20 (other) S 1 20 20", "21 (deep) S 13 13 13",
	} {
		p, _ := ParseStat([]byte(l))
		dir := filepath.Join(root, strconv.Itoa(p.PID))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(l), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(root, "self"), 0o755)
	procs, err := List(root)
	if err != nil || len(procs) != 8 {
		t.Fatalf("List: %d procs, %v", len(procs), err)
	}
	var pids []int
	for _, p := range Descendants(procs, 10) {
		pids = append(pids, p.PID)
	}
	sort.Ints(pids)
	if want := []int{11, 12, 13, 21}; !reflect.DeepEqual(pids, want) {
		t.Fatalf("descendants of 10: %v, want %v", pids, want)
	}
	if _, err := List(filepath.Join(root, "missing")); err == nil {
		t.Fatal("List of a missing root succeeded")
	}
}

// Package archtest pins the import graph: a stack of leaf ← seams ←
// engines ← engine ← cli, with the runtime (worker) on the seams only.
// CONTRIBUTING.md explains the layers; a failure here names the edge that
// breaks them.
package archtest

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/stemhq/stem"

// drivers are the database client libraries; only engines link them.
var drivers = []string{"github.com/jackc/pgx", "github.com/redis/go-redis", "modernc.org/sqlite"}

// seams are the interfaces engines implement and the runtime uses.
var seams = []string{"broker", "result", "registry", "control/revoke"}

// engines are the packages that implement the seams on a backend.
var engines = []string{"broker/memory", "broker/redis", "broker/postgres", "broker/sqlite"}

// goList runs go list over the module's packages and returns, per package
// (relative to the module), the stem packages it imports (relative too)
// and every other import path, from the template's output.
func goList(t *testing.T, args ...string) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	graph := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		pkg := rel(fields[0])
		for _, imp := range fields[1:] {
			graph[pkg] = append(graph[pkg], rel(imp))
		}
	}
	return graph
}

func rel(path string) string {
	if path == module {
		return "."
	}
	return strings.TrimPrefix(path, module+"/")
}

func under(pkg, dir string) bool { return pkg == dir || strings.HasPrefix(pkg, dir+"/") }

func isDriver(path string) bool {
	return slices.ContainsFunc(drivers, func(d string) bool { return under(path, d) })
}

// TestImportGraph checks the direct (non-test) imports of every package.
func TestImportGraph(t *testing.T) {
	graph := goList(t, "-f", "{{.ImportPath}} {{join .Imports \" \"}}", "./...")
	if len(graph) < 10 {
		t.Fatalf("go list found %d packages; run from the module", len(graph))
	}
	for pkg, imports := range graph {
		for _, imp := range imports {
			var why string
			switch {
			case imp == "cli" && !under(pkg, "cmd") && !slices.Contains([]string{"internal/gendocs"}, pkg):
				why = "only cmd/ and the doc generator import the CLI"
			case under(pkg, "broker") && (under(imp, "worker") || imp == "cli" || imp == "engine" || imp == "config"):
				why = "nothing under broker/ (seams, engines, contract suites) imports the runtime, the CLI, the engine opener or config"
			case under(pkg, "broker") && under(imp, "control") && !under(imp, "control/revoke"):
				why = "engines implement the control seams in broker/; the control client is above them"
			case pkg == "worker" && (slices.Contains(engines, imp) || imp == "engine" || isDriver(imp)):
				why = "the worker runtime imports seams only, never an engine or a database driver"
			case under(pkg, "control/revoke") && !under(pkg, "control/revoke/revoketest") && (under(imp, "broker") || imp == "config" || isDriver(imp)):
				why = "the revoke seam imports no engine, no driver and no config"
			case pkg == "." && isStem(graph, imp):
				why = "the root package stem is the leaf: it imports nothing of stem's"
			case slices.Contains(seams, pkg) && isStem(graph, imp) && !under(imp, "internal") && imp != "." && !slices.Contains(seams, imp):
				why = "the seams import only the leaf, internal helpers and each other"
			case isDriver(imp) && !slices.Contains(engines, pkg) && !under(pkg, "internal/bench") && !under(pkg, "internal/testutil"):
				why = "only engines link a database driver"
			}
			if why != "" {
				t.Errorf("%s imports %s: %s", pkg, imp, why)
			}
		}
	}
}

// isStem reports whether path is a package of this module.
func isStem(graph map[string][]string, path string) bool {
	_, ok := graph[path]
	return ok
}

// TestWorkerLinksNoDriver checks the worker's transitive dependencies:
// embedding the runtime links no database client.
func TestWorkerLinksNoDriver(t *testing.T) {
	deps := goList(t, "-deps", "./worker")
	for pkg := range deps {
		if isDriver(pkg) {
			t.Errorf("worker links %s; the runtime must depend on seams only", pkg)
		}
	}
}

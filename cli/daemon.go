package cli

import (
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/stemhq/stem/config"
	"github.com/stemhq/stem/templating"
)

// addDaemonCommands registers the daemon-toolkit commands (worker multi,
// healthcheck, diagnose, routing). This file belongs to that toolkit.
//
// None of these commands needs the broker (diagnose --connect aside). Like
// every command they resolve their settings through App.env.
func addDaemonCommands(a *App, root, worker *cobra.Command) {
	root.AddCommand(newRoutingCmd(a))
	worker.AddCommand(newMultiCmd(a), newHealthcheckCmd(a), newDiagnoseCmd(a))
}

// childEnviron builds a child's environment: the process environment,
// then the env file's variables that the process environment does not set
// (the process environment wins; an empty variable counts as unset), then
// set, which overrides both.
func childEnviron(base []string, file map[string]string, set map[string]string) []string {
	out := make([]string, 0, len(base)+len(file)+len(set))
	have := map[string]bool{}
	for _, kv := range base {
		k, v, _ := strings.Cut(kv, "=")
		if _, override := set[k]; override {
			continue
		}
		if fv, inFile := file[k]; v == "" && inFile && fv != "" {
			continue
		}
		have[k] = true
		out = append(out, kv)
	}
	for _, k := range sortedKeys(file) {
		if _, override := set[k]; !have[k] && !override {
			out = append(out, k+"="+file[k])
		}
	}
	for _, k := range sortedKeys(set) {
		out = append(out, k+"="+set[k])
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// templateVars returns the values paths are expanded with for the node at
// 1-based index i (0 when unknown); now is taken once per command.
func templateVars(node string, i int, now time.Time) templating.Vars {
	host, _ := os.Hostname()
	return templating.Vars{Node: node, Hostname: host, Index: i, Time: now}
}

// expandFlag expands a path template given by flag, as a usage error (64)
// naming the flag when it does not expand.
func expandFlag(flag, tmpl string, v templating.Vars) (string, error) {
	p, err := templating.Expand(tmpl, v)
	if err != nil {
		return "", usageErrorf("--%s: %v", flag, err)
	}
	return p, nil
}

// checkNodeName refuses node names that cannot be used in paths: empty,
// with slashes, spaces or other characters outside letters, digits and
// . _ - :, or made of dots only.
func checkNodeName(name string) error {
	// The same rule as STEM_WORKER_NODE in worker run: no colon either.
	if !config.ValidName(name) || strings.Contains(name, ":") || strings.Trim(name, ".") == "" {
		return usageErrorf("invalid node name %q: use letters, digits and . _ - (no spaces, slashes or colons)", name)
	}
	return nil
}

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
// None of these commands needs the broker (diagnose --connect aside). They
// read the env file (--env-file, STEM_ENV_FILE) with config.LoadEnvFile,
// and a variable set in the process environment wins over the same
// variable in the file.
func addDaemonCommands(a *App, root, worker *cobra.Command) {
	root.AddCommand(newRoutingCmd(a))
	worker.AddCommand(newMultiCmd(a), newHealthcheckCmd(a), newDiagnoseCmd(a))
}

// daemonEnv is what a daemon command knows of the outside world: the
// lookup (flag > process environment > env file) and the env file itself.
type daemonEnv struct {
	lookup config.Lookup
	// file is the env file's path ("" when none) and vars its variables.
	file string
	vars map[string]string
}

// daemonEnv resolves the env file of cmd and loads it. A bad env file is a
// *stemerr.ConfigError (exit 78) naming the file and line.
func (a *App) daemonEnv(cmd *cobra.Command) (*daemonEnv, error) {
	l := config.Lookup{flagSource(cmd), config.EnvSource(a.lookupEnv)}
	e := &daemonEnv{}
	if path, _, ok := l.Get("STEM_ENV_FILE"); ok && path != "" {
		m, err := config.LoadEnvFile(path)
		if err != nil {
			return nil, err
		}
		e.file, e.vars = path, m
		l = append(l, config.MapSource("env file "+path, m))
	}
	e.lookup = l
	return e, nil
}

// get returns the winning value of key (flag, environment, env file). An
// empty value counts as unset, so an empty variable in the environment
// does not hide the env file's value.
func (e *daemonEnv) get(key string) (string, bool) {
	for _, s := range e.lookup {
		if s.Get == nil {
			continue
		}
		if v, ok := s.Get(key); ok && v != "" {
			return v, true
		}
	}
	return "", false
}

// stringFlagOrEnv returns the value of flag name when given, else key from
// the environment or env file. It serves flags that are not in config.Vars
// (so not bound with bindEnv) but still read a variable.
func (e *daemonEnv) stringFlagOrEnv(cmd *cobra.Command, name, key string) string {
	if f := cmd.Flags().Lookup(name); f != nil && f.Changed {
		return f.Value.String()
	}
	v, _ := e.get(key)
	return v
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

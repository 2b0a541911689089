package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/google/shlex"
	"github.com/spf13/cobra"

	"github.com/stemhq/stem/daemon"
	"github.com/stemhq/stem/routing"
	"github.com/stemhq/stem/stemerr"
	"github.com/stemhq/stem/templating"
)

// Default path templates of `worker multi`.
const (
	defaultPidfileTemplate = "/var/run/stem/%n.pid"
	defaultLogfileTemplate = "/var/log/stem/%n.log"
)

// multiOptions are the flags shared by every `worker multi` subcommand.
type multiOptions struct {
	pidfile     string
	logfile     string
	workdir     string
	commands    []string
	commandLine string
	queues      []string
	broadcasts  []string
	timeout     time.Duration
	noDetach    bool
	jsonOut     bool
}

func newMultiCmd(a *App) *cobra.Command {
	o := &multiOptions{}
	cmd := &cobra.Command{
		Use:   "multi",
		Short: "Start, stop and inspect named worker processes (no broker needed)",
		Long: `Manage one or many worker processes, one per named node, on this host.

Paths are templates: %n node, %N node upper-cased, %h host name, %i and %I
the node's 1-based index in the node list, %d the invocation's UTC timestamp,
%% a literal %. Use the same node list and templates for start, stop and
status.

The command run for each node is STEM_WORKER_COMMAND (environment first,
then the env file), by default this program's "worker run"; --command and
--command-line add arguments. Each node gets STEM_WORKER_NODE,
STEM_WORKER_PIDFILE, STEM_WORKER_LOGFILE (and STEM_WORKER_QUEUES,
STEM_WORKER_BROADCASTS with --queue, --broadcast) plus the env file's
variables; its stdout and stderr are appended to its logfile.

Pidfiles are created exclusively (mode 0640) and stay locked while the node
runs; they record the process's start time, the boot id and the program
started. Before any signal, the pidfile and its directory must belong to you
or root and not be writable by group or others, the PID must itself hold the
pidfile's lock, and its start time, boot and program must match the record;
otherwise nothing is signalled. Pidfiles and logfiles that are symbolic links
are refused.

Exit codes: 0 done; 1 a node failed (already running, did not stop); status
follows LSB (0 all running, 3 not running, 1 dead with a pidfile left); 64
bad node name, template or flag; 77 a pidfile, its directory or a logfile was
refused (unsafe, or not held by the process it names); 78 bad env file,
routing file, alias or STEM_WORKER_COMMAND.`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&o.pidfile, "pidfile", defaultPidfileTemplate, "pidfile path template")
	pf.StringVar(&o.logfile, "logfile", defaultLogfileTemplate, "logfile path template (stdout and stderr of the node)")
	cmd.AddCommand(newMultiStartCmd(a, o), newMultiStopCmd(a, o), newMultiRestartCmd(a, o), newMultiStatusCmd(a, o), newMultiKillCmd(a, o))
	return cmd
}

// addMultiStartFlags adds the flags that shape how a node is started.
func addMultiStartFlags(cmd *cobra.Command, o *multiOptions) {
	fs := cmd.Flags()
	fs.StringVar(&o.workdir, "workdir", "", "working directory of the nodes")
	fs.StringArrayVar(&o.commands, "command", nil, "add one argument to the worker command (repeatable)")
	fs.StringVar(&o.commandLine, "command-line", "", `add arguments to the worker command, split with shell-like quoting ("--concurrency 4 --tasks-file '/etc/stem/my tasks.yaml'")`)
	fs.StringArrayVar(&o.queues, "queue", nil, "queue or routing alias the nodes consume (repeatable; exported as STEM_WORKER_QUEUES)")
	fs.StringArrayVar(&o.broadcasts, "broadcast", nil, "broadcast channel or routing alias the nodes join (repeatable; exported as STEM_WORKER_BROADCASTS)")
	fs.String("routing-config", "", "routing file that resolves --queue and --broadcast aliases")
	bindEnv(fs, "routing-config", "STEM_ROUTING_CONFIG")
}

func addMultiTimeoutFlag(cmd *cobra.Command, o *multiOptions) {
	cmd.Flags().DurationVar(&o.timeout, "timeout", 30*time.Second, "how long to wait after SIGTERM before SIGKILL")
}

// nodeArgs checks the node names: at least one, valid, no duplicates.
func nodeArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return usageErrorf("%s needs at least one NODE name", cmd.CommandPath())
	}
	seen := map[string]bool{}
	for _, n := range args {
		if err := checkNodeName(n); err != nil {
			return err
		}
		if seen[n] {
			return usageErrorf("node %q is named twice", n)
		}
		seen[n] = true
	}
	return nil
}

// paths expands the pidfile and logfile templates of every node. Two nodes
// may not share a pidfile, and a pidfile may not use %d (stop and status
// could not find it again).
func (o *multiOptions) paths(names []string, now time.Time) ([]daemon.Node, error) {
	if templating.Uses(o.pidfile, 'd') {
		return nil, usageErrorf("--pidfile %q uses %%d: stop and status could not find the pidfile again; use %%n", o.pidfile)
	}
	nodes := make([]daemon.Node, len(names))
	byPidfile := map[string]string{}
	for i, name := range names {
		v := templateVars(name, i+1, now)
		pid, err := expandFlag("pidfile", o.pidfile, v)
		if err != nil {
			return nil, err
		}
		logf, err := expandFlag("logfile", o.logfile, v)
		if err != nil {
			return nil, err
		}
		if other, dup := byPidfile[pid]; dup {
			return nil, usageErrorf("nodes %s and %s would share pidfile %s: put %%n in --pidfile", other, name, pid)
		}
		byPidfile[pid] = name
		nodes[i] = daemon.Node{Name: name, Pidfile: pid, Logfile: logf}
	}
	return nodes, nil
}

// plan resolves everything a start needs: paths, directories, command,
// environment, queues. Nothing is started if any of it fails.
func (o *multiOptions) plan(a *App, cmd *cobra.Command, names []string) ([]daemon.Node, error) {
	nodes, err := o.paths(names, time.Now())
	if err != nil {
		return nil, err
	}
	env, err := a.env(cmd)
	if err != nil {
		return nil, err
	}
	argv, err := o.command(env)
	if err != nil {
		return nil, err
	}
	set := map[string]string{}
	if len(o.queues) > 0 || len(o.broadcasts) > 0 {
		qs, bs, err := o.resolveRouting(env)
		if err != nil {
			return nil, err
		}
		if len(qs) > 0 {
			set["STEM_WORKER_QUEUES"] = strings.Join(qs, ",")
		}
		if len(bs) > 0 {
			set["STEM_WORKER_BROADCASTS"] = strings.Join(bs, ",")
		}
	}
	if o.workdir != "" {
		if st, err := os.Stat(o.workdir); err != nil || !st.IsDir() {
			return nil, usageErrorf("--workdir %s is not a directory", o.workdir)
		}
	}
	for i := range nodes {
		n := &nodes[i]
		if err := daemon.MakeDirs(*n); err != nil {
			return nil, &stemerr.ConfigError{Msg: fmt.Sprintf("%s: %v (--pidfile %q, --logfile %q)", n.Name, err, o.pidfile, o.logfile)}
		}
		vars := map[string]string{
			"STEM_WORKER_NODE":    n.Name,
			"STEM_WORKER_PIDFILE": n.Pidfile,
		}
		if n.Logfile != "" {
			vars["STEM_WORKER_LOGFILE"] = n.Logfile
		}
		for k, v := range set {
			vars[k] = v
		}
		n.Argv = argv
		n.Dir = o.workdir
		n.Env = childEnviron(a.environ(), env.vars, vars)
	}
	return nodes, nil
}

// command builds the worker command: STEM_WORKER_COMMAND (or this
// program's "worker run"), then --command arguments, then --command-line.
func (o *multiOptions) command(env *cmdEnv) ([]string, error) {
	var argv []string
	if raw, ok := env.get("STEM_WORKER_COMMAND"); ok && strings.TrimSpace(raw) != "" {
		words, err := shlex.Split(raw)
		if err != nil {
			return nil, &stemerr.ConfigError{Key: "STEM_WORKER_COMMAND", Value: raw, Msg: "does not parse: " + err.Error()}
		}
		if len(words) == 0 {
			return nil, &stemerr.ConfigError{Key: "STEM_WORKER_COMMAND", Value: raw, Msg: "holds no command"}
		}
		argv = words
	} else {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("finding this program to run `worker run`: %w (set STEM_WORKER_COMMAND)", err)
		}
		argv = []string{exe, "worker", "run"}
	}
	argv = append(argv, o.commands...)
	if o.commandLine != "" {
		words, err := shlex.Split(o.commandLine)
		if err != nil {
			return nil, usageErrorf("--command-line %q does not parse: %v", o.commandLine, err)
		}
		argv = append(argv, words...)
	}
	return argv, nil
}

// resolveRouting resolves --queue and --broadcast through the routing file
// when there is one (routing.ResolveFile): an invalid name without one is a
// usage error (64), a bad file or alias a configuration error (78).
func (o *multiOptions) resolveRouting(env *cmdEnv) (queues, broadcasts []string, err error) {
	path, _ := env.get("STEM_ROUTING_CONFIG")
	queues, broadcasts, err = routing.ResolveFile(path, o.queues, o.broadcasts)
	var le *routing.ListError
	switch {
	case errors.As(err, &le) && le.Err == nil:
		return nil, nil, usageErrorf("--%v", err)
	case errors.As(err, &le):
		return nil, nil, withCode(ExitConfig, fmt.Errorf("--%w", err))
	case err != nil:
		return nil, nil, withCode(ExitConfig, err)
	}
	return queues, broadcasts, nil
}

// reportResults prints one line per node: successes on stdout, failures as
// "stem: ..." on stderr. It returns the command's error: nil when every
// node succeeded, exit 77 when a pidfile or logfile was refused, else exit
// 1 (the lines already say why).
func reportResults(out, errw io.Writer, results []daemon.Result) error {
	failed, refused := 0, false
	for _, r := range results {
		var re *daemon.RefusedError
		if errors.As(r.Err, &re) {
			refused = true
		}
		if r.Stale != "" && r.Err == nil {
			fmt.Fprintf(out, "%s: removed stale pidfile (%s)\n", r.Node, oneLine(r.Stale))
		}
		if r.Err != nil {
			failed++
			fmt.Fprintf(errw, "stem: %s\n", oneLine(r.Err.Error()))
			continue
		}
		line := r.Node + ": " + r.Msg
		if r.PID != 0 && (r.State == daemon.Running || strings.HasPrefix(r.Msg, "stopped") || strings.HasPrefix(r.Msg, "killed")) {
			line += fmt.Sprintf(" (pid %d)", r.PID)
		}
		fmt.Fprintln(out, line)
	}
	switch {
	case refused:
		return &ExitError{Code: ExitRefused}
	case failed > 0:
		return &ExitError{Code: ExitFailure}
	}
	return nil
}

// nodeError is the command's error for a node that failed outside
// reportResults (start --no-detach): exit 77 for a refusal, else 1.
func nodeError(err error) error {
	var re *daemon.RefusedError
	if errors.As(err, &re) {
		return withCode(ExitRefused, err)
	}
	return withCode(ExitFailure, err)
}

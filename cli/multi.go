package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/stemhq/stem/daemon"
	"github.com/stemhq/stem/routing"
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
	pf.StringVar(&o.pidfile, "pidfile", daemon.DefaultPidfileTemplate, "pidfile path template")
	pf.StringVar(&o.logfile, "logfile", daemon.DefaultLogfileTemplate, "logfile path template (stdout and stderr of the node)")
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
	addVarFlag(fs, "STEM_ROUTING_CONFIG", 's', "routing file that resolves --queue and --broadcast aliases")
}

func addMultiTimeoutFlag(cmd *cobra.Command, o *multiOptions) {
	cmd.Flags().DurationVar(&o.timeout, "timeout", 30*time.Second, "how long to wait after SIGTERM before SIGKILL")
}

// nodeArgs checks the node names: at least one, valid, no duplicates.
func nodeArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return usageErrorf("%s needs at least one NODE name", cmd.CommandPath())
	}
	return daemon.CheckNodeNames(args)
}

// act is the RunE of a command that acts on the named nodes (stop, kill)
// and reports each result.
func (o *multiOptions) act(f func(s daemon.Supervisor, nodes []daemon.Node) []daemon.Result) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		nodes, err := daemon.Paths(args, o.pidfile, o.logfile, time.Now())
		if err != nil {
			return err
		}
		return reportResults(cmd.OutOrStdout(), cmd.ErrOrStderr(), f(daemon.Supervisor{}, nodes))
	}
}

// plan resolves everything a start needs (daemon.StartPlan): nothing is
// started if any of it fails.
func (o *multiOptions) plan(a *App, cmd *cobra.Command, names []string) ([]daemon.Node, error) {
	env, err := a.env(cmd)
	if err != nil {
		return nil, err
	}
	p := daemon.StartPlan{Pidfile: o.pidfile, Logfile: o.logfile, Args: o.commands, CommandLine: o.commandLine,
		Dir: o.workdir, Environ: a.environ(), EnvFile: env.vars}
	p.Command, _ = env.get("STEM_WORKER_COMMAND")
	if len(o.queues) > 0 || len(o.broadcasts) > 0 {
		if p.Queues, p.Broadcasts, err = o.resolveRouting(env); err != nil {
			return nil, err
		}
	}
	return p.Nodes(names, time.Now())
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

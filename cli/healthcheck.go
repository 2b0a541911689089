package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/daemon"
	"github.com/stemhq/stem/healthcheck"
)

// codeBrokerUnavailable is the healthcheck error code of a --readiness
// check that could not reach the broker (exit 69).
const codeBrokerUnavailable = "broker-unavailable"

type healthcheckOptions struct {
	logfile   string
	jsonOut   bool
	quiet     bool
	readiness bool
}

func newHealthcheckCmd(a *App) *cobra.Command {
	o := &healthcheckOptions{}
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "Check that a worker's process runs (local, no broker, a few ms)",
		Long: `Check that the pidfile exists, is locked by the running node, and names a
live process that started no later than the pidfile was written. It reads
the pidfile and /proc only: no network call, a few milliseconds, fit for
systemd's ExecStartPost=, a container liveness probe or a script.

The pidfile and logfile may be templates (%n is --node, %h the host name).

--readiness also asks the broker's worker registry for a fresh heartbeat
from the pidfile's process on this host (a record whose TTL, three heartbeat
intervals, has not run out, in state "running"). That one needs the broker.

Exit codes (the same with --json and --quiet): 0 healthy; 3 no pidfile (not
running); 1 unhealthy: invalid-pid, process-not-running, pid-reused,
pidfile-unreadable, not-ready; 69 broker-unavailable (--readiness only); 77
pidfile-refused (the pidfile or its directory is unsafe, or its lock is not
held by the process it names, or that process runs another program).

--json prints {"status", "node", "pid", "pidfile", "logfile", "timestamp"
(process start, RFC 3339), "uptimeSeconds", "error" (code), "message"};
see docs/daemon.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			env, err := a.env(cmd)
			if err != nil {
				return err
			}
			pidfile, _ := env.get("STEM_WORKER_PIDFILE")
			if pidfile == "" {
				return usageErrorf("--pidfile is required (or STEM_WORKER_PIDFILE)")
			}
			node, _ := env.get("STEM_WORKER_NODE")
			v := daemon.TemplateVars(node, 0, time.Now())
			if pidfile, err = daemon.ExpandPath("pidfile", pidfile, v); err != nil {
				return err
			}
			logfile := o.logfile
			if logfile != "" {
				if logfile, err = daemon.ExpandPath("logfile", logfile, v); err != nil {
					return err
				}
			}
			var p healthcheck.Probe
			var readyErr error
			if o.readiness {
				check, err := a.readinessCheck(cmd)
				if err != nil {
					return err
				}
				p.Readiness = func(ctx context.Context, r healthcheck.Result) error {
					readyErr = check(ctx, r)
					return readyErr
				}
			}
			r := p.Check(cmd.Context(), healthcheck.Target{Node: node, Pidfile: pidfile, Logfile: logfile})
			if errors.Is(readyErr, stem.ErrUnavailable) {
				r.Error = codeBrokerUnavailable
			}
			return o.report(cmd, r)
		},
	}
	fs := cmd.Flags()
	addVarFlag(fs, "STEM_WORKER_PIDFILE", 's', "the node's pidfile (a template: %n is --node)")
	addVarFlag(fs, "STEM_WORKER_NODE", 's', "node name, reported and used for %n")
	fs.StringVar(&o.logfile, "logfile", "", "the node's logfile, reported")
	fs.BoolVar(&o.jsonOut, "json", false, "print the result as JSON")
	fs.BoolVar(&o.quiet, "quiet", false, "print nothing; the exit code says it all")
	fs.BoolVar(&o.readiness, "readiness", false, "also require a fresh heartbeat in the broker's worker registry (needs the broker)")
	addBrokerFlags(fs)
	return cmd
}

// readinessCheck resolves the broker configuration and returns the
// readiness check of --readiness: the registry must hold a live record of
// the pidfile's process on this host.
func (a *App) readinessCheck(cmd *cobra.Command) (func(context.Context, healthcheck.Result) error, error) {
	c, _, err := a.config(cmd)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	return func(ctx context.Context, r healthcheck.Result) error {
		eng, err := openEngine(ctx, c)
		if err != nil {
			return err
		}
		defer eng.Close()
		if eng.Registry == nil {
			return errors.New("the broker has no worker registry")
		}
		list, err := eng.Registry.List(ctx, c.Namespace)
		if err != nil {
			return fmt.Errorf("reading the worker registry: %w", err)
		}
		for _, w := range list {
			if w.PID != r.PID || (w.Host != "" && w.Host != host) {
				continue
			}
			if w.State != "running" {
				return fmt.Errorf("worker %s (PID %d) is %s", w.ID, w.PID, w.State)
			}
			return nil
		}
		return fmt.Errorf("no fresh heartbeat from PID %d on %s in namespace %q", r.PID, host, c.Namespace)
	}, nil
}

// healthcheckCode maps a result to its exit code.
func healthcheckCode(r healthcheck.Result) int {
	switch {
	case r.Healthy():
		return ExitOK
	case r.Error == healthcheck.CodePidfileMissing:
		return ExitNotRunning
	case r.Error == codeBrokerUnavailable:
		return ExitUnavailable
	case r.Error == healthcheck.CodePidfileRefused:
		return ExitRefused
	}
	return ExitFailure
}

func (o *healthcheckOptions) report(cmd *cobra.Command, r healthcheck.Result) error {
	code := healthcheckCode(r)
	out := cmd.OutOrStdout()
	switch {
	case o.quiet:
	case o.jsonOut:
		if err := writeJSON(out, r); err != nil {
			return err
		}
	case r.Healthy():
		fmt.Fprintf(out, "%s: healthy (pid %d, up %ds, since %s)\n", cmp.Or(r.Node, r.Pidfile), r.PID, *r.UptimeSeconds, r.Timestamp)
	default:
		return &ExitError{Code: code, Err: fmt.Errorf("unhealthy (%s): %s", r.Error, r.Message)}
	}
	if code != ExitOK {
		return &ExitError{Code: code}
	}
	return nil
}

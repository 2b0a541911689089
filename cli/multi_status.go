package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/stemhq/stem/daemon"
)

// multiStatusJSON is one element of `worker multi status --json` (a JSON
// array, one element per node, in the order given).
type multiStatusJSON struct {
	Node string `json:"node"`
	// Status is the daemon.State, hyphenated: running, not-running, dead,
	// pid-reused, invalid-pidfile, unknown or refused.
	Status  string `json:"status"`
	PID     int    `json:"pid,omitempty"`
	Pidfile string `json:"pidfile"`
	Logfile string `json:"logfile"`
	// Since is the process's start time (RFC 3339), when it runs.
	Since string `json:"since,omitempty"`
	// Message explains every status but running and not-running.
	Message string `json:"message,omitempty"`
}

func newMultiStatusCmd(a *App, o *multiOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status NODE...",
		Short: "Show whether worker nodes run (LSB exit codes)",
		Long: `Show each NODE's state from its pidfile and the process it names. Nothing is
changed: stale pidfiles are reported, not removed (start and stop remove
them).

Exit codes follow LSB: 0 every node runs; 1 some node is dead with its
pidfile left (the process is gone, the PID was reused, or the pidfile is
garbage or unreadable); otherwise 3, some node is not running. A pidfile
that is refused (unsafe, or locked by another process than the one it
names, or naming a process that runs another program) makes it exit 77.`,
		Args: nodeArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			nodes, err := daemon.Paths(args, o.pidfile, o.logfile, time.Now())
			if err != nil {
				return err
			}
			var s daemon.Supervisor
			out := cmd.OutOrStdout()
			code := ExitOK
			var js []multiStatusJSON
			for _, n := range nodes {
				r := s.Status(n)
				switch c := r.State.LSBCode(); {
				case r.State == daemon.Refused:
					code = ExitRefused
				case code == ExitRefused:
				case c == 0:
				case c == ExitNotRunning && code == ExitOK:
					code = ExitNotRunning
				case c != ExitNotRunning:
					code = ExitFailure
				}
				j := multiStatusJSON{Node: n.Name, Status: strings.ReplaceAll(r.State.String(), " ", "-"), PID: r.PID, Pidfile: n.Pidfile, Logfile: n.Logfile}
				if r.State == daemon.Running {
					j.Since = r.Since.UTC().Format(time.RFC3339)
				}
				if r.Err != nil {
					j.Message = r.Err.Error()
				}
				if o.jsonOut {
					js = append(js, j)
					continue
				}
				switch r.State {
				case daemon.Running:
					fmt.Fprintf(out, "%s: running (pid %d, since %s)\n", n.Name, r.PID, j.Since)
				case daemon.NotRunning:
					fmt.Fprintf(out, "%s: not running\n", n.Name)
				default:
					fmt.Fprintf(out, "%s: %s: %s\n", n.Name, r.State, oneLine(j.Message))
				}
			}
			if o.jsonOut {
				if err := writeJSON(out, js); err != nil {
					return err
				}
			}
			if code != ExitOK {
				return &ExitError{Code: code}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&o.jsonOut, "json", false, "print a JSON array, one object per node")
	return cmd
}

package cli

import (
	"github.com/spf13/cobra"

	"github.com/stemhq/stem/daemon"
)

func newMultiStartCmd(a *App, o *multiOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "start NODE...",
		Short: "Start worker nodes in the background (or one in the foreground with --no-detach)",
		Long: `Start each NODE detached: in its own session, stdin from /dev/null, stdout
and stderr appended to its logfile. The pidfile names the node's process and
stays locked while it runs. A stale pidfile (its node is gone) is reported
and replaced; a node that already runs is reported and exits 1.

With --no-detach, exactly one NODE runs in the foreground: stem replaces
itself with the worker command (exec), so the worker keeps stem's PID, gets
signals directly from the supervisor (systemd, runit, a container runtime)
and its exit code is the one the supervisor sees. Its output goes to the
logfile only when --logfile is given; otherwise it stays on stdout/stderr
(the journal, under systemd).`,
		Args: nodeArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.noDetach && len(args) != 1 {
				return usageErrorf("--no-detach runs exactly one node, got %d", len(args))
			}
			if o.noDetach && !cmd.Flags().Changed("logfile") {
				o.logfile = "" // output stays on stdout/stderr
			}
			nodes, err := o.plan(a, cmd, args)
			if err != nil {
				return err
			}
			var s daemon.Supervisor
			if o.noDetach {
				return nodeError(s.Exec(nodes[0]))
			}
			results := make([]daemon.Result, len(nodes))
			for i, n := range nodes {
				results[i] = s.Start(n)
			}
			return reportResults(cmd.OutOrStdout(), cmd.ErrOrStderr(), results)
		},
	}
	addMultiStartFlags(cmd, o)
	cmd.Flags().BoolVar(&o.noDetach, "no-detach", false, "run one node in the foreground (exec), for systemd or another supervisor")
	return cmd
}

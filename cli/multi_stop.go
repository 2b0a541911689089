package cli

import (
	"github.com/spf13/cobra"

	"github.com/stemhq/stem/daemon"
)

func newMultiStopCmd(a *App, o *multiOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stop NODE...",
		Short: "Stop worker nodes: SIGTERM (warm shutdown), then SIGKILL after --timeout",
		Long: `Stop each NODE: check that its pidfile names the node's own process (a
locked pidfile, a process that started before the pidfile was written), send
SIGTERM (a warm shutdown: in-flight tasks finish), wait up to --timeout, then
send SIGKILL. Nodes stop in parallel; each is reported.

A pidfile whose PID now belongs to another process is never signalled: it is
reported and removed, like any stale pidfile. Stopping a node that is not
running succeeds. Exit 1 when a node could not be stopped.`,
		Args: nodeArgs,
		RunE: o.act(func(s daemon.Supervisor, nodes []daemon.Node) []daemon.Result { return s.Stop(nodes, o.timeout) }),
	}
	addMultiTimeoutFlag(cmd, o)
	return cmd
}

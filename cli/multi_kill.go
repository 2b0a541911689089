package cli

import (
	"github.com/spf13/cobra"

	"github.com/stemhq/stem/daemon"
)

func newMultiKillCmd(a *App, o *multiOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "kill NODE...",
		Short: "Kill worker nodes with SIGKILL (no drain)",
		Long: `Send SIGKILL to each NODE, after the same identity check as stop: a reused
PID is never signalled. In-flight tasks are not finished; their leases expire
and the broker hands them out again. Exit 1 when a node could not be killed.`,
		Args: nodeArgs,
		RunE: o.act(func(s daemon.Supervisor, nodes []daemon.Node) []daemon.Result { return s.Kill(nodes) }),
	}
}

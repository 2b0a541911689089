package cli

import (
	"github.com/spf13/cobra"

	"github.com/stemhq/stem/daemon"
)

func newMultiRestartCmd(a *App, o *multiOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "restart NODE...",
		Short: "Stop then start worker nodes with the same arguments",
		Long: `Stop each NODE as stop does (SIGTERM, --timeout, SIGKILL), then start it as
start does. Everything start needs (command, env file, routing) is checked
before anything is stopped. Exit 1 when a node failed to stop or start.`,
		Args: nodeArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			nodes, err := o.plan(a, cmd, args)
			if err != nil {
				return err
			}
			var s daemon.Supervisor
			out, errw := cmd.OutOrStdout(), cmd.ErrOrStderr()
			stopErr := reportResults(out, errw, s.Stop(nodes, o.timeout))
			results := make([]daemon.Result, len(nodes))
			for i, n := range nodes {
				results[i] = s.Start(n)
			}
			if err := reportResults(out, errw, results); err != nil {
				return err
			}
			return stopErr
		},
	}
	addMultiStartFlags(cmd, o)
	addMultiTimeoutFlag(cmd, o)
	return cmd
}

package cli

import (
	"time"

	"github.com/spf13/cobra"
	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/worker"
)

type shutdownOptions struct {
	controlOptions
	mode string
}

func newWorkerShutdownCmd(a *App) *cobra.Command {
	o := &shutdownOptions{}
	cmd := &cobra.Command{
		Use:   "shutdown",
		Short: "Ask workers to shut down: warm, soft or hard",
		Long: `Ask workers to shut down, with the same semantics as the signals:

  warm  stop claiming, hand back prefetched tasks, let running tasks finish (SIGTERM)
  soft  cancel running tasks and hand them back, hard after the grace period (SIGINT)
  hard  hand running tasks back at once without counting an attempt (SIGQUIT)

Workers reply before they begin to stop.
` + controlTargetsHelp,
		Example: `  stem worker shutdown --worker alpha
  stem worker shutdown --mode soft`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := worker.ParseMode(o.mode); err != nil {
				return usageErrorf("--mode: %v", err)
			}
			return a.runSimple(cmd, &o.controlOptions, control.TypeShutdown, control.ShutdownArgs{Mode: o.mode}, "WORKER\tSTATE", func(r control.Reply, _ time.Duration) string {
				return r.Worker + "\tshutting down (" + o.mode + ")"
			})
		},
	}
	addControlFlags(cmd, &o.controlOptions)
	cmd.Flags().StringVar(&o.mode, "mode", "warm", "warm, soft or hard")
	return cmd
}

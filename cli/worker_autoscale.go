package cli

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/stemhq/stem/control"
)

type autoscaleOptions struct {
	controlOptions
	min, max int
}

func newWorkerAutoscaleCmd(a *App) *cobra.Command {
	o := &autoscaleOptions{}
	cmd := &cobra.Command{
		Use:   "autoscale --min N --max M",
		Short: "Change the autoscale bounds of running workers",
		Long: `Change the concurrency bounds of workers started with --autoscale, at run
time: the current concurrency is clamped into [min, max] at once and the
autoscaler moves within the new bounds from then on. Nothing restarts. A
worker without autoscaling replies with an error (exit 1).
` + controlTargetsHelp,
		Example: `  stem worker autoscale --min 2 --max 16
  stem worker autoscale --worker alpha --min 1 --max 4 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.min < 1 || o.max < 1 {
				return usageErrorf("--min and --max are required and must be at least 1")
			}
			if o.min > o.max {
				return usageErrorf("--min %d is greater than --max %d", o.min, o.max)
			}
			return a.runSimple(cmd, &o.controlOptions, control.TypeAutoscale, control.AutoscaleArgs{Min: o.min, Max: o.max},
				"WORKER\tCONCURRENCY\tMIN\tMAX", func(r control.Reply, _ time.Duration) string {
					var s control.StatsData
					_ = json.Unmarshal(r.Data, &s)
					return fmt.Sprintf("%s\t%d\t%d\t%d", r.Worker, s.ActiveConcurrency, s.MinConcurrency, s.MaxConcurrency)
				})
		},
	}
	addControlFlags(cmd, &o.controlOptions)
	cmd.Flags().IntVar(&o.min, "min", 0, "new lower bound")
	cmd.Flags().IntVar(&o.max, "max", 0, "new upper bound")
	return cmd
}

package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"github.com/stemhq/stem/control"
)

type inspectOptions struct {
	controlOptions
	includeRevoked bool
}

func newWorkerInspectCmd(a *App) *cobra.Command {
	o := &inspectOptions{}
	cmd := &cobra.Command{
		Use:   "inspect",
		Short: "List the tasks each worker holds (running and prefetched)",
		Long: `List the tasks each worker holds: id, name, queue, attempt, state (running
or prefetched), runtime, start and last checkpoint, progress. With
--include-revoked, also each worker's revoke cache.
` + controlTargetsHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runControl(cmd, &o.controlOptions, control.TypeInspect, control.InspectArgs{IncludeRevoked: o.includeRevoked}, func(out io.Writer, res control.Result) {
				tw := newTable(out)
				fmt.Fprintln(tw, "WORKER\tTASK ID\tNAME\tQUEUE\tATTEMPT\tSTATE\tRUNTIME\tPROGRESS\tLAST CHECKPOINT")
				for _, r := range res.Replies {
					if r.Error != "" {
						fmt.Fprintf(tw, "%s\tERROR: %s\n", r.Worker, r.Error)
						continue
					}
					var d control.InspectData
					_ = json.Unmarshal(r.Data, &d)
					if len(d.Tasks) == 0 {
						fmt.Fprintf(tw, "%s\t-\t(idle)\t\t\t\t\t\t\n", r.Worker)
					}
					for _, t := range d.Tasks {
						runtime, last := "-", "-"
						if t.State == "running" {
							runtime = (time.Duration(t.RuntimeSeconds*1000) * time.Millisecond).String()
							last = t.LastCheckpoint.Format(time.RFC3339)
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%.0f%%\t%s\n", r.Worker, t.ID, t.Name, t.Queue, t.Attempt, t.State, runtime, t.Progress*100, last)
					}
					for _, e := range d.Revoked {
						fmt.Fprintf(tw, "%s\t%s\t(revoked%s)\t\t\t\t\t\t%s\n", r.Worker, e.TaskID, map[bool]string{true: ", terminate"}[e.Terminate], e.Reason)
					}
				}
				tw.Flush()
			})
		},
	}
	addControlFlags(cmd, &o.controlOptions)
	cmd.Flags().BoolVar(&o.includeRevoked, "include-revoked", false, "also list each worker's revoke cache")
	return cmd
}

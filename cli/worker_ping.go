package cli

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/stemhq/stem/control"
)

const controlTargetsHelp = `
Without --worker the request is broadcast to every live worker of the
namespace; --worker alpha (node name) or --worker alpha@host (full id)
targets some (repeatable, comma-separated). The command returns as soon as
every expected worker answered, else after --timeout, naming who did not.
Exit: 0 all answered, 1 a worker replied with an error, 69 no worker
answered, 75 some did not; the same with --json.`

func newWorkerPingCmd(a *App) *cobra.Command {
	o := &controlOptions{}
	cmd := &cobra.Command{
		Use:   "ping",
		Short: "Ask workers whether they are alive, with each one's round-trip time",
		Long:  "Ask workers whether they are alive, with each one's round-trip time.\n" + controlTargetsHelp,
		Example: `  stem worker ping
  stem worker ping --worker alpha --worker beta --timeout 2s --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runSimple(cmd, o, control.TypePing, nil, "WORKER\tRTT\tSTATE\tUPTIME", func(r control.Reply, rtt time.Duration) string {
				var p control.PingData
				_ = json.Unmarshal(r.Data, &p)
				return fmt.Sprintf("%s\t%s\t%s\t%s", r.Worker, rtt.Round(10*time.Microsecond), p.State, (time.Duration(p.UptimeSeconds) * time.Second).String())
			})
		},
	}
	addControlFlags(cmd, o)
	return cmd
}

package cli

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/stemhq/stem/control"
)

func newWorkerStatsCmd(a *App) *cobra.Command {
	o := &controlOptions{}
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Show workers' counters, concurrency, prefetch and queue depths",
		Long: `Show each worker's in-flight and prefetched tasks, activeConcurrency and
its bounds (minConcurrency, maxConcurrency, autoscale), prefetch, the depth
of each queue it consumes, processed/failed/retried/revoked counters,
whether the broker is durable (BROKER: durable, NOT-DURABLE when a crash of
its server loses tasks, e.g. Redis without AOF; --json has the settings),
uptime, pid, host, queues (paused ones marked) and broadcast channels.
` + controlTargetsHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runSimple(cmd, o, control.TypeStats, nil, "WORKER\tIN-FLIGHT\tCONCURRENCY\tPREFETCH\tPROCESSED\tFAILED\tRETRIED\tREVOKED\tBROKER\tQUEUES", func(r control.Reply, _ time.Duration) string {
				var s control.StatsData
				_ = json.Unmarshal(r.Data, &s)
				qs := make([]string, 0, len(s.Queues))
				for _, q := range s.Queues {
					e := fmt.Sprintf("%s=%d", q, s.QueueDepth[q])
					if slices.Contains(s.Paused, q) {
						e += "(paused)"
					}
					qs = append(qs, e)
				}
				conc := fmt.Sprintf("%d", s.ActiveConcurrency)
				if s.Autoscale {
					conc = fmt.Sprintf("%d [%d..%d]", s.ActiveConcurrency, s.MinConcurrency, s.MaxConcurrency)
				}
				durable := "?"
				if d := s.BrokerDurability; d != nil {
					durable = map[bool]string{true: "durable", false: "NOT-DURABLE"}[d.Durable]
				}
				return fmt.Sprintf("%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s", r.Worker, s.InFlight, conc, s.Prefetch,
					s.Counters.Processed, s.Counters.Failed, s.Counters.Retried, s.Counters.Revoked, durable, strings.Join(qs, " "))
			})
		},
	}
	addControlFlags(cmd, o)
	return cmd
}

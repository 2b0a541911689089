package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/worker"
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
				paused := map[string]bool{}
				for _, p := range s.Paused {
					paused[p] = true
				}
				qs := make([]string, 0, len(s.Queues))
				for _, q := range s.Queues {
					e := fmt.Sprintf("%s=%d", q, s.QueueDepth[q])
					if paused[q] {
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
					durable = "durable"
					if !d.Durable {
						durable = "NOT-DURABLE"
					}
				}
				return fmt.Sprintf("%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s", r.Worker, s.InFlight, conc, s.Prefetch,
					s.Counters.Processed, s.Counters.Failed, s.Counters.Retried, s.Counters.Revoked, durable, strings.Join(qs, " "))
			})
		},
	}
	addControlFlags(cmd, o)
	return cmd
}

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
			s, err := a.openControl(cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			res, err := s.do(cmd.Context(), control.TypeInspect, control.InspectArgs{IncludeRevoked: o.includeRevoked}, &o.controlOptions)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if o.jsonOut {
				if err := writeJSON(out, toJSON(control.TypeInspect, s.cfg.ControlNamespace, res, nil)); err != nil {
					return err
				}
				return controlExit(control.TypeInspect, res)
			}
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
			printFooter(out, res)
			return controlExit(control.TypeInspect, res)
		},
	}
	addControlFlags(cmd, &o.controlOptions)
	cmd.Flags().BoolVar(&o.includeRevoked, "include-revoked", false, "also list each worker's revoke cache")
	return cmd
}

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

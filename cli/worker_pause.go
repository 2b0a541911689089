package cli

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/stemhq/stem/config"
	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/worker"
)

type pauseOptions struct {
	controlOptions
	queues []string
}

// newWorkerPauseCmd builds `worker pause` (pause=true) or `worker resume`.
func newWorkerPauseCmd(a *App, pause bool) *cobra.Command {
	o := &pauseOptions{}
	verb, typ, past := "resume", control.TypeResume, "resumed"
	if pause {
		verb, typ, past = "pause", control.TypePause, "paused"
	}
	cmd := &cobra.Command{
		Use:   verb + " --queue Q...",
		Short: strings.ToUpper(verb[:1]) + verb[1:] + " consuming queues, durably",
		Long: fmt.Sprintf(`%s consuming the given queues. The state is written to the broker's pause
store first (it survives worker restarts: a worker reads it at start and
every STEM_REVOKE_SYNC_INTERVAL), then live workers are told at once.
Tasks keep arriving in a paused queue; running tasks are not interrupted.
`, strings.ToUpper(verb[:1])+verb[1:]) + controlTargetsHelp,
		Example: fmt.Sprintf("  stem worker %s --queue reports --queue emails", verb),
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			qs := control.ParseTargets(o.queues)
			if len(qs) == 0 {
				return usageErrorf("worker %s needs at least one --queue", verb)
			}
			for _, q := range qs {
				if !config.ValidName(q) {
					return usageErrorf("--queue %q: may hold only letters, digits, '.', '_', '-' and ':'", q)
				}
			}
			s, err := a.openControl(cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			if s.eng.Pauses == nil {
				return withCode(ExitConfig, fmt.Errorf("this broker keeps no pause state"))
			}
			if err := s.eng.Pauses.SetPaused(cmd.Context(), s.cfg.ControlNamespace, qs, pause); err != nil {
				return err
			}
			res, err := s.do(cmd.Context(), typ, worker.QueuesArgs{Queues: qs}, &o.controlOptions)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if o.jsonOut {
				if err := writeJSON(out, toJSON(typ, s.cfg.ControlNamespace, res, map[string]any{"queues": qs, "paused": pause})); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(out, "%s (stored): %s\n", past, strings.Join(qs, ", "))
				if len(res.Replies) == 0 && len(res.Missing) == 0 && len(res.Unknown) == 0 {
					fmt.Fprintln(out, "no worker is running: workers read paused queues when they start")
				}
				tw := newTable(out)
				if len(res.Replies) > 0 {
					fmt.Fprintln(tw, "WORKER\tPAUSED QUEUES")
				}
				for _, r := range res.Replies {
					if r.Error != "" {
						fmt.Fprintf(tw, "%s\tERROR: %s\n", r.Worker, r.Error)
						continue
					}
					var st worker.StatsData
					_ = json.Unmarshal(r.Data, &st)
					fmt.Fprintf(tw, "%s\t%s\n", r.Worker, strings.Join(st.Paused, ","))
				}
				tw.Flush()
				printFooter(out, res)
			}
			return durableExit(typ, res)
		},
	}
	addControlFlags(cmd, &o.controlOptions)
	cmd.Flags().StringArrayVar(&o.queues, "queue", nil, "queue to "+verb+" (repeatable, comma-separated)")
	return cmd
}

// durableExit is controlExit for commands whose effect is stored before it
// is published (revoke, pause, resume): with no live worker the command
// still succeeded, since workers read the store when they start.
func durableExit(typ string, res control.Result) error {
	if len(res.Replies) == 0 && len(res.Missing) == 0 && len(res.Unknown) == 0 {
		return nil
	}
	return controlExit(typ, res)
}

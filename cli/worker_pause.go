package cli

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/stemhq/stem/client"
	"github.com/stemhq/stem/config"
	"github.com/stemhq/stem/control"
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
With --worker the stored pause is scoped to those workers (node name or
full id) and no other worker applies it; resume --worker removes only that
scope's pause, resume without --worker only the namespace-wide one. With
STEM_CONTROL_SIGNING_KEY the record is signed; workers with a key ignore
unsigned ones.
Tasks keep arriving in a paused queue; running tasks are not interrupted;
tasks a worker claimed ahead and has not started are handed back, not run.
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
			// The record's scope is each --worker target as given (a node
			// name or a full id), or every worker: a worker applies only
			// the pauses that designate it.
			op := client.Resume
			if pause {
				op = client.Pause
			}
			pr, err := op(cmd.Context(), s.eng.Pauses, s.req, client.PauseRequest{Queues: qs, Workers: control.ParseTargets(o.workers), Timeout: s.cfg.ControlTimeout})
			if err != nil {
				return publishExit(err)
			}
			res, scopes, key := pr.Replies, pr.Scopes, s.req.SigningKey
			// Pauses of these queues that still stand under other scopes.
			var remaining []string
			for _, p := range pr.StillPaused {
				remaining = append(remaining, fmt.Sprintf("%s (for %s)", p.Queue, scopeName(p.Worker)))
			}
			out := cmd.OutOrStdout()
			if o.jsonOut {
				if err := writeJSON(out, toJSON(typ, s.cfg.ControlNamespace, res, map[string]any{"queues": qs, "paused": pause, "scopes": scopes, "signed": len(key) > 0, "stillPaused": remaining})); err != nil {
					return err
				}
			} else {
				signed := "signed"
				if len(key) == 0 {
					signed = "unsigned: workers with a signing key ignore it"
				}
				fmt.Fprintf(out, "%s for %s (stored, %s): %s\n", past, scopeList(scopes), signed, strings.Join(qs, ", "))
				for _, r := range remaining {
					fmt.Fprintf(out, "still paused: %s; resume it with that --worker\n", r)
				}
				if len(res.Replies) == 0 && len(res.Missing) == 0 && len(res.Unknown) == 0 {
					fmt.Fprintln(out, "no worker is running: workers read paused queues when they start")
				}
				tw := newTable(out)
				if len(res.Replies) > 0 {
					fmt.Fprintln(tw, "WORKER\tPAUSED QUEUES")
				}
				for _, r := range res.Replies {
					if r.Error != "" {
						fmt.Fprintf(tw, "%s\t%s\n", r.Worker, replyErrorCell(r))
						continue
					}
					var st control.StatsData
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

// scopeName describes a pause scope.
func scopeName(scope string) string {
	return cmp.Or(scope, "every worker")
}

func scopeList(scopes []string) string {
	names := make([]string, len(scopes))
	for i, sc := range scopes {
		names[i] = scopeName(sc)
	}
	return strings.Join(names, ", ")
}

// replyErrorCell is the table cell of a reply that carries an error.
func replyErrorCell(r control.Reply) string {
	if r.Error == control.ErrBadSignature.Error() || r.Error == control.ErrOldVersion.Error() {
		return "REFUSED: " + r.Error
	}
	return "ERROR: " + r.Error
}

// publishExit maps the error of a durable operation: a message that could
// not be published is exit 69 (the record is stored).
func publishExit(err error) error {
	var pe *client.PublishError
	if errors.As(err, &pe) {
		return withCode(ExitUnavailable, pe)
	}
	return err
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

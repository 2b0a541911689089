package cli

import (
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/result"
)

type taskStatusOptions struct {
	jsonOut bool
}

func newTaskStatusCmd(a *App) *cobra.Command {
	o := &taskStatusOptions{}
	cmd := &cobra.Command{
		Use:   "status ID",
		Short: "Show a task's state, result or error",
		Long: `Show a task's state (queued, started, retried, succeeded, failed, revoked),
its result or error, progress and timestamps.

Exit 0 when the state was found (whatever it is), 1 when the task is unknown
(never enqueued, or its state expired after STEM_RESULT_TTL).`,
		Args: exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := a.config(cmd)
			if err != nil {
				return err
			}
			eng, err := openEngine(cmd.Context(), c)
			if err != nil {
				return err
			}
			defer eng.Close()
			st, err := eng.Results.Get(cmd.Context(), args[0])
			if errors.Is(err, result.ErrNotFound) {
				return withCode(ExitFailure, fmt.Errorf("task %s not found (never enqueued here, or expired after the result TTL)", args[0]))
			}
			if err != nil {
				return err
			}
			return printState(cmd.OutOrStdout(), st, o.jsonOut)
		},
	}
	addBrokerFlags(cmd.Flags())
	cmd.Flags().BoolVar(&o.jsonOut, "json", false, "print the state as JSON")
	return cmd
}

// printState prints a task state as aligned "key: value" lines or JSON.
// A task's error or reason that quotes a URL or connection string (a
// handler that failed to reach its database, say) is shown redacted.
func printState(w io.Writer, st result.TaskState, jsonOut bool) error {
	st.Error, st.Reason = stem.RedactText(st.Error), stem.RedactText(st.Reason)
	if jsonOut {
		return writeJSON(w, st)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339Nano)
	}
	row("id", st.ID)
	row("task", st.Name)
	row("queue", st.Queue)
	row("state", string(st.State))
	row("attempt", fmt.Sprint(st.Attempt))
	row("worker", st.Worker)
	if st.Progress > 0 {
		row("progress", fmt.Sprintf("%.0f%%", st.Progress*100))
	}
	row("result", string(st.Result))
	row("error", st.Error)
	row("reason", st.Reason)
	row("revoked by", st.RevokedBy)
	row("enqueued", ts(st.EnqueuedAt))
	row("started", ts(st.StartedAt))
	row("finished", ts(st.FinishedAt))
	row("next retry", ts(st.NextRetryAt))
	return tw.Flush()
}

// stateExit maps a final state to the command's exit: 0 succeeded, 1
// failed or revoked.
func stateExit(st result.TaskState) error {
	if st.State == result.Succeeded {
		return nil
	}
	return &ExitError{Code: ExitFailure}
}

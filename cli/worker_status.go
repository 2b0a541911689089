package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/stemhq/stem/registry"
)

type statusOptions struct {
	jsonOut bool
	follow  bool
}

// workerStatus is one row of `worker status`: the registry record plus
// whether its heartbeat is stale (older than two heartbeat intervals).
type workerStatus struct {
	registry.WorkerInfo
	Stale bool `json:"stale"`
	// AgeSeconds is how long ago the last heartbeat was written.
	AgeSeconds float64 `json:"ageSeconds"`
}

func newWorkerStatusCmd(a *App) *cobra.Command {
	o := &statusOptions{}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the worker registry: who is alive, with a stale flag",
		Long: `Show the heartbeat registry of the namespace: id, state, pid, queues,
concurrency, in-flight, start and last heartbeat. A record is stale when its
last heartbeat is older than two STEM_WORKER_HEARTBEAT intervals (the worker
may be hung or gone; the record expires after three).

It reads the registry only: no worker is asked anything. --follow prints the
snapshot, then one line per change (joined, left, state, in-flight, stale)
until interrupted; with --json each change is one JSON object per line.

Exit: 0 when at least one worker is registered, 69 when none is.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := a.openControl(cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			if o.follow {
				ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
				defer stop()
				return a.followStatus(ctx, cmd.OutOrStdout(), s, o)
			}
			rows, err := statusRows(cmd.Context(), s)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if o.jsonOut {
				if err := writeJSON(out, rows); err != nil {
					return err
				}
			} else {
				printStatus(out, rows)
			}
			if len(rows) == 0 {
				return withCode(ExitUnavailable, fmt.Errorf("no worker registered in namespace %s", s.cfg.ControlNamespace))
			}
			return nil
		},
	}
	fs := cmd.Flags()
	addVarFlag(fs, "STEM_BROKER_URL", 's', "broker URL")
	fs.String("namespace", "", "control namespace (default: the worker namespace, else stem)")
	bindEnv(fs, "namespace", "STEM_CONTROL_NAMESPACE")
	addVarFlag(fs, "STEM_WORKER_HEARTBEAT", 'd', "the workers' heartbeat interval, for the stale flag")
	fs.BoolVar(&o.jsonOut, "json", false, "print JSON")
	fs.BoolVar(&o.follow, "follow", false, "keep printing changes until interrupted")
	return cmd
}

func statusRows(ctx context.Context, s *controlSession) ([]workerStatus, error) {
	ws, err := s.eng.Registry.List(ctx, s.cfg.ControlNamespace)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	rows := make([]workerStatus, len(ws))
	for i, w := range ws {
		age := now.Sub(w.LastSeen)
		rows[i] = workerStatus{WorkerInfo: w, AgeSeconds: age.Seconds(), Stale: age > 2*s.cfg.Heartbeat}
	}
	return rows, nil
}

func printStatus(w io.Writer, rows []workerStatus) {
	if len(rows) == 0 {
		fmt.Fprintln(w, "no worker registered")
		return
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "WORKER\tSTATE\tPID\tQUEUES\tCONCURRENCY\tIN-FLIGHT\tSTARTED\tLAST SEEN\tSTALE")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%d\t%s\t%.1fs ago\t%s\n", r.ID, r.State, r.PID, strings.Join(r.Queues, ","), r.Concurrency, r.InFlight,
			r.StartedAt.UTC().Format(time.RFC3339), r.AgeSeconds, map[bool]string{true: "STALE"}[r.Stale])
	}
	tw.Flush()
}

func (a *App) followStatus(ctx context.Context, out io.Writer, s *controlSession, o *statusOptions) error {
	prev := map[string]workerStatus{}
	emit := func(ev string, r workerStatus) {
		if o.jsonOut {
			b, _ := json.Marshal(map[string]any{"event": ev, "worker": r}) // ev: joined, left, changed
			fmt.Fprintln(out, string(b))
			return
		}
		fmt.Fprintf(out, "%s %-7s %s state=%s in-flight=%d/%d stale=%t\n", time.Now().UTC().Format(time.RFC3339), ev, r.ID, r.State, r.InFlight, r.Concurrency, r.Stale)
	}
	interval := max(s.cfg.Heartbeat/2, 100*time.Millisecond)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		rows, err := statusRows(ctx, s)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		seen := map[string]bool{}
		for _, r := range rows {
			seen[r.ID] = true
			p, ok := prev[r.ID]
			switch {
			case !ok:
				emit("joined", r)
			case p.State != r.State || p.InFlight != r.InFlight || p.Stale != r.Stale || p.Concurrency != r.Concurrency:
				emit("changed", r)
			}
			prev[r.ID] = r
		}
		for id, p := range prev {
			if !seen[id] {
				emit("left", p)
				delete(prev, id)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

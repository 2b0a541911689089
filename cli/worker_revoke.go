package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/stemhq/stem/client"
	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/control/revoke"
)

type revokeOptions struct {
	controlOptions
	tasks     []string
	terminate bool
	expiresIn time.Duration
	reason    string
	requester string
}

func newWorkerRevokeCmd(a *App) *cobra.Command {
	o := &revokeOptions{}
	cmd := &cobra.Command{
		Use:   "revoke --task ID...",
		Short: "Revoke tasks durably; with --terminate, stop them if running",
		Long: `Revoke tasks: a revoked task is never executed and never retried; its state
becomes "revoked" with the reason and requester. The revoke is written to the
revoke store first (STEM_REVOKE_STORE_URL, else the result backend, else the
broker), then published to live workers, so it holds for workers that are
down or miss the message: they load the store when they start and re-read it
every STEM_REVOKE_SYNC_INTERVAL. With no worker running the command still
succeeds, and says so.

--terminate also stops a task that is running: its context is cancelled and
its checkpoints (Heartbeat, ExtendLease, Progress) return ErrTaskRevoked;
exec tasks get SIGTERM, then SIGKILL. The record expires (and is pruned)
after --expires-in, by default STEM_RESULT_TTL (24h): once a task's states
are gone it needs no revoke; --expires-in 0 keeps it until it is among the
oldest beyond the cap of 100,000 revokes per namespace. With
STEM_CONTROL_SIGNING_KEY the record is signed; workers with a key ignore
unsigned or mis-signed records, from the store as from messages.
` + controlTargetsHelp,
		Example: `  stem worker revoke --task 0193c1f0-7d2e-7000-8000-000000000001
  stem worker revoke --task ID1,ID2 --terminate --reason "runaway report" --expires-in 24h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.revoke(cmd, o) },
	}
	addControlFlags(cmd, &o.controlOptions)
	fs := cmd.Flags()
	fs.StringArrayVar(&o.tasks, "task", nil, "task id to revoke (repeatable, comma-separated)")
	fs.BoolVar(&o.terminate, "terminate", false, "also stop the task if it is running")
	fs.DurationVar(&o.expiresIn, "expires-in", 0, "let the record be pruned after this long (default: STEM_RESULT_TTL; 0: never)")
	fs.StringVar(&o.reason, "reason", "", "why, recorded with the task's state")
	fs.StringVar(&o.requester, "requester", "", "who asks (default: user@host)")
	addVarFlag(fs, "STEM_REVOKE_STORE_URL", 's', "durable revoke store (default: the result backend URL)")
	return cmd
}

func (a *App) revoke(cmd *cobra.Command, o *revokeOptions) error {
	ids := control.ParseTargets(o.tasks)
	if len(ids) == 0 {
		return usageErrorf("worker revoke needs at least one --task ID")
	}
	if o.expiresIn < 0 {
		return usageErrorf("--expires-in %s must not be negative", o.expiresIn)
	}
	s, err := a.openControl(cmd)
	if err != nil {
		return err
	}
	defer s.Close()
	log, err := a.logger(cmd, s.cfg)
	if err != nil {
		return err
	}
	store, err := openRevokeStore(cmd.Context(), s.cfg, s.lookup, log)
	if err != nil {
		return err
	}
	defer store.Close()
	expiresIn := o.expiresIn
	if !cmd.Flags().Changed("expires-in") {
		expiresIn = s.cfg.ResultTTL
	}
	now := time.Now().UTC()
	rv, err := client.Revoke(cmd.Context(), store, s.req, client.RevokeRequest{TaskIDs: ids, Terminate: o.terminate, Reason: o.reason,
		RequestedBy: o.requester, ExpiresIn: expiresIn, Workers: control.ParseTargets(o.workers), Timeout: s.cfg.ControlTimeout, Now: now})
	if err != nil {
		return publishExit(err)
	}
	stored, res, key := rv.Stored, rv.Replies, s.req.SigningKey
	out := cmd.OutOrStdout()
	if o.jsonOut {
		if err := writeJSON(out, toJSON(control.TypeRevoke, s.cfg.ControlNamespace, res, map[string][]revoke.Entry{"stored": stored})); err != nil {
			return err
		}
		return durableExit(control.TypeRevoke, res)
	}
	what := "revoked"
	if o.terminate {
		what = "revoked with terminate"
	}
	signed := "signed"
	if len(key) == 0 {
		signed = "unsigned: workers with a signing key ignore it"
	}
	expiry := "never expires"
	if expiresIn > 0 {
		expiry = "expires " + now.Add(expiresIn).Format(time.RFC3339)
	}
	fmt.Fprintf(out, "%s (stored, %s, %s): %s\n", what, signed, expiry, strings.Join(ids, ", "))
	for i, e := range stored {
		if e.Version != rv.Written[i].Version {
			fmt.Fprintf(out, "note: %s already had a newer revoke (by %s, %s); kept it\n", e.TaskID, e.RequestedBy, e.IssuedAt.Format(time.RFC3339))
		}
	}
	if len(res.Replies) == 0 && len(res.Missing) == 0 && len(res.Unknown) == 0 {
		fmt.Fprintln(out, "no worker is running: workers apply stored revokes when they start")
		return nil
	}
	tw := newTable(out)
	fmt.Fprintln(tw, "WORKER\tTERMINATED")
	for _, r := range res.Replies {
		if r.Error != "" {
			fmt.Fprintf(tw, "%s\t%s\n", r.Worker, replyErrorCell(r))
			continue
		}
		var d control.RevokeData
		_ = json.Unmarshal(r.Data, &d)
		term := "-"
		if len(d.Terminated) > 0 {
			term = strings.Join(d.Terminated, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\n", r.Worker, term)
	}
	tw.Flush()
	printFooter(out, res)
	if len(res.Missing) > 0 {
		fmt.Fprintf(out, "workers that did not answer apply the revoke within STEM_REVOKE_SYNC_INTERVAL (%s)\n", s.cfg.RevokeSync)
	}
	return durableExit(control.TypeRevoke, res)
}

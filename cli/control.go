package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/config"
	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/engine"
)

// controlOptions are the flags every control command shares.
type controlOptions struct {
	workers []string
	jsonOut bool
}

func addControlFlags(cmd *cobra.Command, o *controlOptions) {
	fs := cmd.Flags()
	addVarFlag(fs, "STEM_BROKER_URL", 's', "broker URL")
	fs.String("namespace", "", "control namespace of the workers to reach (default: the worker namespace, else stem)")
	bindEnv(fs, "namespace", "STEM_CONTROL_NAMESPACE")
	addVarFlag(fs, "STEM_CONTROL_TIMEOUT", 'd', "how long to wait for replies (returns as soon as every live worker answered)")
	fs.StringArrayVar(&o.workers, "worker", nil, "target worker by node name or full id (alpha, alpha@host); repeatable, comma-separated; default: every live worker")
	fs.BoolVar(&o.jsonOut, "json", false, "print JSON (same exit codes as text)")
}

// controlSession is what a control command needs: config, engine,
// requester.
type controlSession struct {
	cfg    config.Config
	lookup config.Lookup
	eng    *engine.Engine
	req    *control.Requester
}

func (s *controlSession) Close() {
	_ = s.req.Close()
	_ = s.eng.Close()
}

// openControl resolves config and opens the engine for a control command.
// Without STEM_WORKER_NAMESPACE, the key namespace follows the control
// namespace, so `--namespace prod` reaches workers run with
// STEM_WORKER_NAMESPACE=prod.
func (a *App) openControl(cmd *cobra.Command) (*controlSession, error) {
	c, l, err := a.config(cmd)
	if err != nil {
		return nil, err
	}
	if _, _, set := l.Get("STEM_WORKER_NAMESPACE"); !set {
		c.Namespace = c.ControlNamespace
	}
	eng, err := openEngine(cmd.Context(), c)
	if err != nil {
		return nil, err
	}
	if eng.Control == nil {
		eng.Close()
		return nil, withCode(ExitConfig, fmt.Errorf("broker %s has no control transport", stem.RedactURL(c.BrokerURL)))
	}
	return &controlSession{cfg: c, lookup: l, eng: eng, req: &control.Requester{
		Transport: eng.Control, Registry: eng.Registry, Namespace: c.ControlNamespace, SigningKey: []byte(c.SigningKey),
	}}, nil
}

// do sends one request to the targets of o.
func (s *controlSession) do(ctx context.Context, typ string, args any, o *controlOptions) (control.Result, error) {
	res, err := s.req.Do(ctx, typ, args, control.ParseTargets(o.workers), s.cfg.ControlTimeout)
	if err != nil {
		return res, withCode(ExitUnavailable, fmt.Errorf("%s: %w", typ, err))
	}
	return res, nil
}

// replyJSON is one reply in --json output.
type replyJSON struct {
	Worker string          `json:"worker"`
	RTTMs  float64         `json:"rttMs"`
	Error  string          `json:"error,omitempty"`
	Data   json.RawMessage `json:"data,omitempty"`
}

// resultJSON is the --json output of every control command: the stable
// schema documented in docs/control.md.
type resultJSON struct {
	Type      string      `json:"type"`
	RequestID string      `json:"requestId"`
	Namespace string      `json:"namespace"`
	ElapsedMs float64     `json:"elapsedMs"`
	Expected  int         `json:"expected"`
	Replies   []replyJSON `json:"replies"`
	Missing   []string    `json:"missing"`
	Unknown   []string    `json:"unknown"`
	// Forged names workers whose replies were ignored: with a signing
	// key, their signature was missing or invalid.
	Forged []string `json:"forged,omitempty"`
	// Extra carries command-specific facts (revoke: the stored entries).
	Extra any `json:"extra,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func toJSON(typ, ns string, res control.Result, extra any) resultJSON {
	out := resultJSON{Type: typ, RequestID: res.RequestID, Namespace: ns, ElapsedMs: ms(res.Elapsed), Expected: res.Expected,
		Replies: []replyJSON{}, Missing: nonNil(res.Missing), Unknown: nonNil(res.Unknown), Forged: res.Forged, Extra: extra}
	for _, r := range res.Replies {
		out.Replies = append(out.Replies, replyJSON{Worker: r.Worker, RTTMs: ms(res.RTT[r.Worker]), Error: r.Error, Data: r.Data})
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// controlExit maps a gathered result to the exit-code table: 69 nobody
// answered, 75 some targets did not answer, 1 a reply carried an error,
// 0 otherwise. The same in text and --json mode.
func controlExit(typ string, res control.Result) error {
	silent := append(append([]string{}, res.Missing...), res.Unknown...)
	switch {
	case len(res.Replies) == 0 && len(silent) == 0:
		return withCode(ExitUnavailable, fmt.Errorf("%s: no live worker in this namespace", typ))
	case len(res.Replies) == 0:
		return withCode(ExitUnavailable, fmt.Errorf("%s: no worker replied (%s)", typ, strings.Join(silent, ", ")))
	case len(silent) > 0:
		return withCode(ExitPartial, fmt.Errorf("%s: %d worker(s) replied, no reply from %s", typ, len(res.Replies), strings.Join(silent, ", ")))
	case len(refusedBySignature(res)) > 0:
		return withCode(ExitFailure, fmt.Errorf("%s: refused by %s: not signed with their signing key", typ, strings.Join(refusedBySignature(res), ", ")))
	case len(res.Errors()) > 0:
		e := res.Errors()[0]
		return withCode(ExitFailure, fmt.Errorf("%s: %s replied with an error: %s", typ, e.Worker, e.Error))
	}
	return nil
}

// printFooter prints who did not answer, under a text table.
func printFooter(w io.Writer, res control.Result) {
	fmt.Fprintf(w, "%d of %d worker(s) replied in %s\n", len(res.Replies), max(res.Expected, len(res.Replies)+len(res.Missing)), res.Elapsed.Round(10*time.Microsecond))
	for _, m := range res.Missing {
		fmt.Fprintf(w, "no reply: %s\n", m)
	}
	for _, u := range res.Unknown {
		fmt.Fprintf(w, "unknown: %s (no live worker by that node name or id)\n", u)
	}
	for _, f := range res.Forged {
		fmt.Fprintf(w, "ignored a reply claiming to be from %s: not signed with this signing key (forged, or that worker has another key or a stem too old to sign replies)\n", f)
	}
	if refused := refusedBySignature(res); len(refused) > 0 {
		fmt.Fprintf(w, "REFUSED by %s: the request is not signed with their key (set STEM_CONTROL_SIGNING_KEY to the workers' key); nothing was done there\n", strings.Join(refused, ", "))
	}
}

// refusedBySignature names the workers that refused a request for its
// signature (missing, invalid, or a v1 request while they sign).
func refusedBySignature(res control.Result) []string {
	var out []string
	for _, r := range res.Errors() {
		if r.Error == control.ErrBadSignature.Error() || r.Error == control.ErrOldVersion.Error() {
			out = append(out, r.Worker)
		}
	}
	return out
}

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

// runControl runs a control command: --json prints the result, else text
// writes it; the exit follows controlExit either way.
func (a *App) runControl(cmd *cobra.Command, o *controlOptions, typ string, args any, text func(w io.Writer, res control.Result)) error {
	s, err := a.openControl(cmd)
	if err != nil {
		return err
	}
	defer s.Close()
	res, err := s.do(cmd.Context(), typ, args, o)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if o.jsonOut {
		if err := writeJSON(out, toJSON(typ, s.cfg.ControlNamespace, res, nil)); err != nil {
			return err
		}
	} else {
		text(out, res)
		printFooter(out, res)
	}
	return controlExit(typ, res)
}

// runSimple runs a control command whose text output is one row per reply.
func (a *App) runSimple(cmd *cobra.Command, o *controlOptions, typ string, args any, header string, row func(r control.Reply, rtt time.Duration) string) error {
	return a.runControl(cmd, o, typ, args, func(out io.Writer, res control.Result) {
		if len(res.Replies) == 0 {
			return
		}
		tw := newTable(out)
		fmt.Fprintln(tw, header)
		for _, r := range res.Replies {
			if r.Error != "" {
				fmt.Fprintf(tw, "%s\tERROR: %s\n", r.Worker, r.Error)
				continue
			}
			fmt.Fprintln(tw, row(r, res.RTT[r.Worker]))
		}
		tw.Flush()
	})
}

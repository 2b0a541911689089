package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/stemhq/stem/client"
	"github.com/stemhq/stem/result"
	"github.com/stemhq/stem/tasks"
)

type enqueueOptions struct {
	args       string
	kv         []string
	queue      string
	countdown  time.Duration
	eta        string
	maxRetries int
	timeLimit  time.Duration
	wait       bool
	timeout    time.Duration
	jsonOut    bool
	count      int
}

func newEnqueueCmd(a *App) *cobra.Command {
	o := &enqueueOptions{}
	cmd := &cobra.Command{
		Use:   "enqueue TASK",
		Short: "Publish a task and print its id",
		Long: `Publish one task and print its id on stdout.

Arguments are a JSON value (--args '{"n": 3}') and/or key=value pairs
(--arg n=3 --arg name=report); a value that parses as JSON is kept as JSON
(3, true, [1,2]), anything else is a string. --arg pairs are merged into
the --args object. --args @FILE reads the JSON from FILE, --args - from
stdin (for arguments too big for a command line).

--count N publishes N copies in batches (smoke and load tests); with --wait
it prints how many ended in each state and exits 0 only if all succeeded.

The queue is --queue, else the task's queue in the tasks file, else
"default". --countdown or --eta delay the task.

With --wait the command waits for the final state and prints it with the
result or error: exit 0 when the task succeeded, 1 when it failed or was
revoked, 75 when --timeout passed first.`,
		Example: `  stem enqueue stem.echo --args '{"hello": "world"}'
  stem enqueue reports.build --arg month=2026-10 --queue reports --wait --timeout 2m
  stem enqueue stem.sleep --arg duration=5s --countdown 1m
  stem enqueue reports.build --args @/var/lib/reports/request.json
  produce-args | stem enqueue reports.build --args -`,
		Args: exactArgs(1, "TASK"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.enqueue(cmd, args[0], o)
		},
	}
	fs := cmd.Flags()
	addBrokerFlags(fs)
	fs.StringVar(&o.args, "args", "", "task arguments as JSON; @FILE reads them from FILE, - from stdin")
	fs.StringArrayVar(&o.kv, "arg", nil, "argument key=value (repeatable; JSON values kept as JSON)")
	fs.StringVar(&o.queue, "queue", "", "queue to publish to")
	fs.DurationVar(&o.countdown, "countdown", 0, "run no earlier than this long from now")
	fs.StringVar(&o.eta, "eta", "", "run no earlier than this time (RFC 3339)")
	fs.IntVar(&o.maxRetries, "max-retries", -1, "override the task's retry limit")
	fs.DurationVar(&o.timeLimit, "time-limit", 0, "override the task's time limit")
	fs.BoolVar(&o.wait, "wait", false, "wait for the final state and print it")
	fs.DurationVar(&o.timeout, "timeout", time.Minute, "how long --wait waits")
	fs.BoolVar(&o.jsonOut, "json", false, "print JSON")
	fs.IntVar(&o.count, "count", 1, "publish this many copies (in batches); ids are printed one per line, --wait prints a summary")
	addVarFlag(fs, "STEM_TASKS_FILE", 's', "tasks file (for the task's default queue)")
	addVarFlag(fs, "STEM_RESULT_TTL", 'd', "how long task states are kept")
	return cmd
}

// exactArgs is cobra.ExactArgs with a usage error (exit 64) that names the
// missing argument.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageErrorf("%s takes %d argument(s) (%s), got %d", cmd.CommandPath(), n, names, len(args))
		}
		return nil
	}
}

// readArgs resolves --args: @FILE is the content of FILE, - is stdin,
// anything else the JSON itself. from names the source for messages ("" for
// the flag's own value). A file that cannot be read, or an empty file or
// stdin, is a usage error (exit 64).
func readArgs(v string, stdin io.Reader) (raw, from string, err error) {
	switch {
	case v == "-":
		b, err := io.ReadAll(stdin)
		if err != nil {
			return "", "", usageErrorf("--args -: read stdin: %v", err)
		}
		if len(bytes.TrimSpace(b)) == 0 {
			return "", "", usageErrorf("--args -: stdin is empty; want a JSON value")
		}
		return string(b), "stdin", nil
	case strings.HasPrefix(v, "@"):
		path := v[1:]
		if path == "" {
			return "", "", usageErrorf("--args @: want a file name after @")
		}
		b, err := os.ReadFile(path)
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return "", "", usageErrorf("--args @%s: %v", path, err)
		}
		if len(bytes.TrimSpace(b)) == 0 {
			return "", "", usageErrorf("--args @%s: the file is empty; want a JSON value", path)
		}
		return string(b), path, nil
	}
	return v, "", nil
}

// buildArgs merges --args and --arg into one JSON value. from names where
// raw was read (a file, stdin), or is empty.
func buildArgs(raw, from string, kv []string) (json.RawMessage, error) {
	var obj map[string]json.RawMessage
	var out json.RawMessage
	of := ""
	if from != "" {
		of = " of " + from
	}
	if raw != "" {
		if err := json.Unmarshal([]byte(raw), &out); err != nil {
			var se *json.SyntaxError
			if errors.As(err, &se) {
				return nil, usageErrorf("--args is not valid JSON at byte %d%s: %v: %s", se.Offset, of, err, pointAt(raw, int(se.Offset)))
			}
			return nil, usageErrorf("--args is not valid JSON%s: %v", of, err)
		}
		if from != "" {
			// Kept as sent, but without a file's trailing newline.
			out = json.RawMessage(bytes.TrimSpace(out))
		}
		if len(kv) > 0 {
			if err := json.Unmarshal(out, &obj); err != nil {
				return nil, usageErrorf("--arg needs --args to be a JSON object, got %.80s", raw)
			}
		}
	}
	if len(kv) == 0 {
		return out, nil
	}
	if obj == nil {
		obj = map[string]json.RawMessage{}
	}
	for _, p := range kv {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, usageErrorf("--arg %q: want key=value", p)
		}
		if json.Valid([]byte(v)) && v != "" {
			obj[k] = json.RawMessage(v)
		} else {
			b, _ := json.Marshal(v)
			obj[k] = b
		}
	}
	return json.Marshal(obj)
}

// pointAt shows the text around offset with a marker.
func pointAt(s string, offset int) string {
	offset = max(1, min(offset, len(s)))
	lo := max(0, offset-20)
	hi := min(len(s), offset+10)
	return fmt.Sprintf("%s<<HERE>>%s", s[lo:offset-1], s[offset-1:hi])
}

// enqueueResult is the --json output of enqueue without --wait: id, or
// ids with --count N (N > 1).
type enqueueResult struct {
	ID    string    `json:"id,omitempty"`
	IDs   []string  `json:"ids,omitempty"`
	Task  string    `json:"task"`
	Queue string    `json:"queue"`
	ETA   time.Time `json:"eta,omitzero"`
}

func (a *App) enqueue(cmd *cobra.Command, task string, o *enqueueOptions) error {
	raw, from, err := readArgs(o.args, cmd.InOrStdin())
	if err != nil {
		return err
	}
	args, err := buildArgs(raw, from, o.kv)
	if err != nil {
		return err
	}
	t := client.Task{Name: task, Queue: o.queue, Args: args, Countdown: o.countdown, TimeLimit: o.timeLimit}
	if o.maxRetries != -1 {
		t.MaxRetries = &o.maxRetries
	}
	if o.countdown < 0 {
		return usageErrorf("--countdown %s must not be negative", o.countdown)
	}
	if o.countdown > 0 && o.eta != "" {
		return usageErrorf("--countdown and --eta exclude each other")
	}
	c, _, err := a.config(cmd)
	if err != nil {
		return err
	}
	opts := client.Options{}
	if o.queue == "" && c.TasksFile != "" {
		f, err := tasks.Load(c.TasksFile)
		if err != nil {
			return err
		}
		opts.Routes = map[string]string{}
		for _, d := range f.Tasks {
			opts.Routes[d.Name] = d.Queue
		}
	}
	if o.count < 1 {
		return usageErrorf("--count %d must be at least 1", o.count)
	}
	if o.eta != "" {
		if t.ETA, err = time.Parse(time.RFC3339, o.eta); err != nil {
			return usageErrorf("--eta %q is not an RFC 3339 time such as 2026-11-23T10:00:00Z", o.eta)
		}
	}
	// Validated before the broker is opened: a usage error needs none.
	proto, err := client.New(nil, nil, opts).Envelope(t, time.Now().UTC())
	if err != nil {
		return usageErrorf("%v", err)
	}
	ctx := cmd.Context()
	eng, err := openEngine(ctx, c)
	if err != nil {
		return err
	}
	defer eng.Close()
	cl := client.New(eng.Broker, eng.Results, opts)
	envs, err := cl.EnqueueMany(ctx, slices.Repeat([]client.Task{t}, o.count))
	if err != nil {
		return err
	}
	ids := make([]string, len(envs))
	for i, env := range envs {
		ids[i] = env.ID
	}
	out := cmd.OutOrStdout()
	if !o.wait {
		if o.jsonOut {
			r := enqueueResult{IDs: ids, Task: task, Queue: proto.Queue, ETA: envs[0].ETA}
			if o.count == 1 {
				r.ID, r.IDs = ids[0], nil
			}
			return writeJSON(out, r)
		}
		for _, id := range ids {
			if _, err := fmt.Fprintln(out, id); err != nil {
				return err
			}
		}
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	oc, err := cl.Wait(wctx, ids)
	if err != nil {
		return err
	}
	if o.count > 1 {
		return printSummary(out, oc, o)
	}
	st := oc.States[0]
	if err := printState(out, st, o.jsonOut); err != nil {
		return err
	}
	if !st.State.Final() {
		return withCode(ExitPartial, fmt.Errorf("task %s not finished after %s (state %s)", ids[0], o.timeout, st.State))
	}
	return stateExit(st)
}

// waitSummary is the output of enqueue --count N --wait.
type waitSummary struct {
	Total  int                  `json:"total"`
	States map[result.State]int `json:"states"`
	// Unfinished lists tasks not final when the timeout passed.
	Unfinished []string `json:"unfinished,omitempty"`
	// Failed lists tasks that failed or were revoked (at most 20).
	Failed []string `json:"failed,omitempty"`
}

// printSummary prints the outcome of enqueue --count N --wait: exit 0 all
// succeeded, 1 some failed, 75 some unfinished.
func printSummary(out io.Writer, oc client.Outcome, o *enqueueOptions) error {
	sum := waitSummary{Total: len(oc.States), States: map[result.State]int{}, Unfinished: oc.Pending}
	for _, st := range oc.States {
		if st.State.Final() {
			sum.States[st.State]++
			if st.State != result.Succeeded && len(sum.Failed) < 20 {
				sum.Failed = append(sum.Failed, st.ID)
			}
		}
	}
	if o.jsonOut {
		if err := writeJSON(out, sum); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(out, "total: %d\n", sum.Total)
		for _, s := range []result.State{result.Succeeded, result.Failed, result.Revoked} {
			fmt.Fprintf(out, "%s: %d\n", s, sum.States[s])
		}
		fmt.Fprintf(out, "unfinished: %d\n", len(oc.Pending))
	}
	switch {
	case len(oc.Pending) > 0:
		return withCode(ExitPartial, fmt.Errorf("%d of %d tasks not finished after %s", len(oc.Pending), sum.Total, o.timeout))
	case sum.States[result.Succeeded] != sum.Total:
		return &ExitError{Code: ExitFailure}
	}
	return nil
}

package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/result"
	"github.com/stemhq/stem/stemerr"
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
	fs.String("tasks-file", "", "tasks file (for the task's default queue)")
	bindEnv(fs, "tasks-file", "STEM_TASKS_FILE")
	fs.Duration("result-ttl", 0, "how long task states are kept")
	bindEnv(fs, "result-ttl", "STEM_RESULT_TTL")
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
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// pointAt shows the text around offset with a marker.
func pointAt(s string, offset int) string {
	if offset > len(s) {
		offset = len(s)
	}
	if offset < 1 {
		offset = 1
	}
	lo := max(0, offset-20)
	hi := min(len(s), offset+10)
	return fmt.Sprintf("%s<<HERE>>%s", s[lo:offset-1], s[offset-1:hi])
}

// enqueueResult is the --json output of enqueue (without --wait).
type enqueueResult struct {
	ID    string    `json:"id"`
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
	queue := o.queue
	if queue == "" && c.TasksFile != "" {
		if f, ferr := tasks.Load(c.TasksFile); ferr == nil {
			for _, d := range f.Tasks {
				if d.Name == task {
					queue = d.Queue
				}
			}
		} else {
			return ferr
		}
	}
	if queue == "" {
		queue = "default"
	}
	if o.count < 1 {
		return usageErrorf("--count %d must be at least 1", o.count)
	}
	now := time.Now().UTC()
	proto := broker.Envelope{
		Name: task, Queue: queue, Args: args, MaxRetries: o.maxRetries, TimeLimit: o.timeLimit, CreatedAt: now,
	}
	switch {
	case o.countdown > 0:
		proto.ETA = now.Add(o.countdown)
	case o.eta != "":
		t, perr := time.Parse(time.RFC3339, o.eta)
		if perr != nil {
			return usageErrorf("--eta %q is not an RFC 3339 time such as 2026-11-23T10:00:00Z", o.eta)
		}
		proto.ETA = t.UTC()
	}
	proto.ID = "validate"
	if err := proto.Validate(); err != nil {
		return usageErrorf("%v", err)
	}
	ctx := cmd.Context()
	eng, err := openEngine(ctx, c)
	if err != nil {
		return err
	}
	defer eng.Close()
	ids := make([]string, 0, o.count)
	const batch = 500
	for done := 0; done < o.count; done += batch {
		k := min(batch, o.count-done)
		envs := make([]broker.Envelope, k)
		states := make([]result.TaskState, k)
		for i := range envs {
			env := proto
			env.ID = uuid.Must(uuid.NewV7()).String()
			envs[i] = env
			states[i] = result.TaskState{ID: env.ID, Name: env.Name, Queue: env.Queue, State: result.Queued, EnqueuedAt: now, UpdatedAt: now}
			ids = append(ids, env.ID)
		}
		// The queued state is written before the publish, so a worker's
		// "started" can never be overwritten by it.
		if err := eng.Results.Set(ctx, states); err != nil {
			return fmt.Errorf("record task state: %w", err)
		}
		if err := eng.Broker.PublishBatch(ctx, envs); err != nil {
			return fmt.Errorf("publish %s: %w", task, err)
		}
	}
	out := cmd.OutOrStdout()
	if !o.wait {
		if o.jsonOut {
			if o.count == 1 {
				return writeJSON(out, enqueueResult{ID: ids[0], Task: task, Queue: queue, ETA: proto.ETA})
			}
			return writeJSON(out, enqueueResults{IDs: ids, Task: task, Queue: queue, ETA: proto.ETA})
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
	if o.count > 1 {
		return waitMany(wctx, out, eng.Results, ids, o)
	}
	st, err := result.Wait(wctx, eng.Results, ids[0])
	if err != nil && wctx.Err() == nil {
		return err
	}
	if err := printState(out, st, o.jsonOut); err != nil {
		return err
	}
	if !st.State.Final() {
		return withCode(ExitPartial, fmt.Errorf("task %s not finished after %s (state %s)", ids[0], o.timeout, st.State))
	}
	return stateExit(st)
}

// enqueueResults is the --json output of enqueue --count N (N > 1).
type enqueueResults struct {
	IDs   []string  `json:"ids"`
	Task  string    `json:"task"`
	Queue string    `json:"queue"`
	ETA   time.Time `json:"eta,omitzero"`
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

// waitMany waits until every task is final or ctx ends, then prints a
// summary: exit 0 all succeeded, 1 some failed, 75 some unfinished.
func waitMany(ctx context.Context, out io.Writer, b result.Backend, ids []string, o *enqueueOptions) error {
	final := map[string]result.State{}
	pending := append([]string(nil), ids...)
	delay := 10 * time.Millisecond
	for len(pending) > 0 && ctx.Err() == nil {
		next := pending[:0]
		for _, id := range pending {
			st, err := b.Get(ctx, id)
			if err == nil && st.State.Final() {
				final[id] = st.State
				continue
			}
			if err != nil && !errors.Is(err, result.ErrNotFound) && !errors.Is(err, stemerr.ErrUnavailable) && ctx.Err() == nil {
				return err
			}
			next = append(next, id)
		}
		pending = next
		if len(pending) == 0 {
			break
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		delay = min(2*delay, 250*time.Millisecond)
	}
	sum := waitSummary{Total: len(ids), States: map[result.State]int{}, Unfinished: pending}
	for _, id := range ids {
		if s, ok := final[id]; ok {
			sum.States[s]++
			if s != result.Succeeded && len(sum.Failed) < 20 {
				sum.Failed = append(sum.Failed, id)
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
		fmt.Fprintf(out, "unfinished: %d\n", len(pending))
	}
	switch {
	case len(pending) > 0:
		return withCode(ExitPartial, fmt.Errorf("%d of %d tasks not finished after %s", len(pending), len(ids), o.timeout))
	case sum.States[result.Succeeded] != len(ids):
		return &ExitError{Code: ExitFailure}
	}
	return nil
}

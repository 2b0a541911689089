package sqlite

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/control"
)

// splitEngine subscribes through one Engine and publishes through another
// on the same file, so messages cross connections.
type splitEngine struct {
	sub, pub *Engine
}

func (s splitEngine) SubscribeWorker(ctx context.Context, ns, id string) (broker.Subscription, error) {
	return s.sub.SubscribeWorker(ctx, ns, id)
}

func (s splitEngine) ListenReplies(ctx context.Context, ns, replyTo string) (broker.Subscription, error) {
	return s.sub.ListenReplies(ctx, ns, replyTo)
}

func (s splitEngine) Broadcast(ctx context.Context, ns string, msg []byte) (int, error) {
	return s.pub.Broadcast(ctx, ns, msg)
}

func (s splitEngine) Send(ctx context.Context, ns, id string, msg []byte) (int, error) {
	return s.pub.Send(ctx, ns, id, msg)
}

func (s splitEngine) Reply(ctx context.Context, ns, replyTo string, msg []byte) error {
	return s.pub.Reply(ctx, ns, replyTo, msg)
}

func (s splitEngine) Pause(ctx context.Context, ps []broker.Pause) error {
	return s.pub.Pause(ctx, ps)
}

func (s splitEngine) Resume(ctx context.Context, ns, worker string, queues []string) error {
	return s.pub.Resume(ctx, ns, worker, queues)
}

func (s splitEngine) Pauses(ctx context.Context, ns string) ([]broker.Pause, error) {
	return s.sub.Pauses(ctx, ns)
}

// TestControlEngineNamespacesApart checks that the engine namespace
// separates deployments on one file even with equal control namespaces.
func TestControlEngineNamespacesApart(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "stem.db")
	e := openTestEngine(t, path, Options{})
	other := openTestEngine(t, path, Options{Namespace: "other"})
	ctx := t.Context()
	spy, err := other.SubscribeWorker(ctx, "shared", "w@h")
	if err != nil {
		t.Fatal(err)
	}
	defer spy.Close()
	if n, err := e.Broadcast(ctx, "shared", []byte("x")); err != nil || n != 0 {
		t.Fatalf("Broadcast to another engine namespace reached %d (%v)", n, err)
	}
	if err := e.Pause(ctx, []broker.Pause{{Namespace: "shared", Queue: "q"}}); err != nil {
		t.Fatal(err)
	}
	if ps, err := other.Pauses(ctx, "shared"); err != nil || len(ps) != 0 {
		t.Fatalf("Pauses in another engine namespace = %v, %v; want none", ps, err)
	}
}

// TestControlMigratesVersion1 opens a database at schema version 1 (as the
// previous release left it, with a task in it): the control tables are
// added and the task is kept.
func TestControlMigratesVersion1(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "stem.db")
	e := openTestEngine(t, path, Options{})
	ctx := t.Context()
	if _, err := e.wdb.ExecContext(ctx, `INSERT INTO stem_tasks (ns, queue, task_id, payload, ready_at) VALUES ('stem', 'q', 't1', '{}', 0)`); err != nil {
		t.Fatal(err)
	}
	// Back to version 1: drop what migration 2 created.
	for _, stmt := range []string{
		`DROP TABLE stem_control`, `DROP TABLE stem_control_subscribers`, `DROP TABLE stem_paused_queues`,
		`DELETE FROM sqlite_sequence WHERE name = 'stem_control'`,
		`DELETE FROM stem_schema_version WHERE version >= 2`,
	} {
		if _, err := e.wdb.ExecContext(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	_ = e.Close()
	e = openTestEngine(t, path, Options{})
	var version int
	if err := e.rdb.QueryRowContext(ctx, `SELECT max(version) FROM stem_schema_version`).Scan(&version); err != nil || version != SchemaVersion || SchemaVersion < 2 {
		t.Fatalf("schema version %d (%v), want %d (>= 2)", version, err, SchemaVersion)
	}
	if n := rowCount(t, e.rdb, "stem_tasks"); n != 1 {
		t.Fatalf("the migration lost tasks: %d left", n)
	}
	if err := e.Pause(ctx, []broker.Pause{{Namespace: "ns", Queue: "q", Worker: "alpha"}}); err != nil {
		t.Fatal(err)
	}
}

// TestControlLeavesNothingBehind checks that closed subscriptions take their
// rows and their channels' messages with them, and that old messages and
// expired subscribers are pruned by the next publish.
func TestControlLeavesNothingBehind(t *testing.T) {
	t.Parallel()
	e := newTestEngine(t, Options{})
	ctx := t.Context()
	w, err := e.SubscribeWorker(ctx, "ns", "w@h")
	if err != nil {
		t.Fatal(err)
	}
	l, err := e.ListenReplies(ctx, "ns", "req")
	if err != nil {
		t.Fatal(err)
	}
	if n := rowCount(t, e.rdb, "stem_control_subscribers"); n != 3 {
		t.Fatalf("%d subscriber rows, want 3 (broadcast + worker + reply)", n)
	}
	if _, err := e.Send(ctx, "ns", "w@h", []byte("to w")); err != nil {
		t.Fatal(err)
	}
	if err := e.Reply(ctx, "ns", "req", []byte("pong")); err != nil {
		t.Fatal(err)
	}
	<-w.C()
	<-l.C()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := rowCount(t, e.rdb, "stem_control_subscribers"); n != 0 {
		t.Fatalf("%d subscriber rows left after Close", n)
	}
	if n := rowCount(t, e.rdb, "stem_control"); n != 0 {
		t.Fatalf("%d message rows left after the reply and worker subscriptions closed", n)
	}

	// A subscriber whose process died keeps counting until its rows
	// expire; an old broadcast is pruned by the next publish.
	dead, err := e.SubscribeWorker(ctx, "ns", "dead@h")
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	if n, err := e.Broadcast(ctx, "ns", []byte("old")); err != nil || n != 1 {
		t.Fatalf("Broadcast = %d, %v; want 1", n, err)
	}
	<-dead.C()
	old := nowMs() - ctlRetention.Milliseconds() - 1
	if _, err := e.wdb.ExecContext(ctx, `UPDATE stem_control SET created_at = ?`, old); err != nil {
		t.Fatal(err)
	}
	if _, err := e.wdb.ExecContext(ctx, `UPDATE stem_control_subscribers SET expires_at = ?`, nowMs()); err != nil {
		t.Fatal(err)
	}
	if n, err := e.Broadcast(ctx, "ns", []byte("new")); err != nil || n != 0 {
		t.Fatalf("Broadcast with only an expired subscriber = %d, %v; want 0", n, err)
	}
	if n := rowCount(t, e.rdb, "stem_control"); n != 0 {
		t.Fatalf("%d message rows left after pruning", n)
	}
	if n := rowCount(t, e.rdb, "stem_control_subscribers"); n != 0 {
		t.Fatalf("%d expired subscriber rows left", n)
	}
}

// TestControlRenewal checks that a live subscription whose rows expired
// (its process stalled past ctlSubTTL) is counted again once it renews
// them.
func TestControlRenewal(t *testing.T) {
	t.Parallel()
	e := newTestEngine(t, Options{})
	ctx := t.Context()
	sub, err := e.SubscribeWorker(ctx, "ns", "w@h")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := e.wdb.ExecContext(ctx, `UPDATE stem_control_subscribers SET expires_at = ?`, nowMs()); err != nil {
		t.Fatal(err)
	}
	if n, err := e.Broadcast(ctx, "ns", []byte("lost")); err != nil || n != 0 {
		t.Fatalf("Broadcast to an expired subscriber = %d, %v; want 0", n, err)
	}
	if err := sub.(*ctlSub).renewOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := e.Broadcast(ctx, "ns", []byte("found")); err != nil || n != 1 {
		t.Fatalf("Broadcast after the renewal = %d, %v; want 1", n, err)
	}
	if m := <-sub.C(); string(m) != "found" {
		t.Fatalf("got %q", m)
	}
}

// TestControlPollIsIndexed pins the query plan of a subscription's poll:
// the channel index, no table scan.
func TestControlPollIsIndexed(t *testing.T) {
	t.Parallel()
	e := newTestEngine(t, Options{})
	rows, err := e.rdb.QueryContext(t.Context(), `EXPLAIN QUERY PLAN `+sqlCtlPoll, "stem", "ns", "all", "w:x", 0, ctlBatch)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	joined := strings.Join(plan, "; ")
	t.Logf("poll plan: %s", joined)
	if !strings.Contains(joined, "SEARCH stem_control USING INDEX stem_control_channel (ns=? AND namespace=? AND channel=? AND id>?)") || strings.Contains(joined, "SCAN") {
		t.Fatalf("poll plan %q does not use stem_control_channel", joined)
	}
}

// Cross-process control: the test binary re-executed as a worker that
// answers control requests (TestControlHelperProcess, selected with
// -test.run and ctlHelperEnv).
const (
	ctlHelperEnv   = "STEM_SQLITE_CTL_HELPER" // the worker id
	ctlHelperNSEnv = "STEM_SQLITE_CTL_NS"
)

// TestControlHelperProcess is not a test: in a helper process it subscribes
// as the worker named by ctlHelperEnv on the database at helperPathEnv,
// prints "ready", and answers every request with a reply carrying its
// request id, until stdin is closed.
func TestControlHelperProcess(t *testing.T) {
	id := os.Getenv(ctlHelperEnv)
	if id == "" {
		t.Skip("helper process only")
	}
	e := openTestEngine(t, os.Getenv(helperPathEnv), Options{})
	ns := os.Getenv(ctlHelperNSEnv)
	ctx := t.Context()
	sub, err := e.SubscribeWorker(ctx, ns, id)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		_ = sub.Close()
	}()
	fmt.Println("ready")
	for msg := range sub.C() {
		req, err := control.Decode(msg)
		if err != nil {
			t.Errorf("helper: %v", err)
			continue
		}
		b, _ := json.Marshal(control.Reply{V: control.Version, Type: req.Type, RequestID: req.ID, Worker: id, SentAt: time.Now()})
		if err := e.Reply(ctx, ns, req.ReplyTo, b); err != nil {
			t.Errorf("helper: reply: %v", err)
		}
	}
}

// startControlHelper starts a worker process on path and waits until it
// is subscribed; closing the returned stdin stops it.
func startControlHelper(t *testing.T, path, ns, id string) (io.WriteCloser, *exec.Cmd) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestControlHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), ctlHelperEnv+"="+id, ctlHelperNSEnv+"="+ns, helperPathEnv+"="+path)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() || sc.Text() != "ready" {
		t.Fatalf("control helper %s did not start: %q; stderr: %s", id, sc.Text(), stderr.String())
	}
	go func() { // drain the rest (the test framework's PASS line)
		for sc.Scan() {
		}
	}()
	return stdin, cmd
}

// pingRounds sends rounds pings through a fresh Requester each (as one
// `stem worker ping` does: subscribe, broadcast, gather) and returns the
// elapsed times, sorted. Every ping must get want replies, as counted by
// Broadcast, well before the timeout.
func pingRounds(t *testing.T, tr broker.ControlTransport, ns string, rounds, want int) []time.Duration {
	t.Helper()
	var out []time.Duration
	for range rounds {
		// Let the workers' pollers go back to their idle pace (it shapes
		// the scenario: an operator's ping meets idle workers).
		pause(t, ctlFastFor+time.Duration(10+rand.IntN(40))*time.Millisecond)
		q := &control.Requester{Transport: tr, Namespace: ns}
		res, err := q.Do(t.Context(), control.TypePing, nil, nil, 5*time.Second)
		_ = q.Close()
		if err != nil {
			t.Fatal(err)
		}
		if res.Expected != want || len(res.Replies) != want {
			t.Fatalf("ping expected %d and got %d replies, want %d", res.Expected, len(res.Replies), want)
		}
		out = append(out, res.Elapsed)
	}
	slices.Sort(out)
	return out
}

// checkLatency logs the sorted round trips rtt and fails the test when the
// median is above 50 ms (without the race detector, which slows everything
// too much for a latency target; with it, only the slowest must stay far
// below the requester's timeout, proving it returned as soon as every
// worker answered).
func checkLatency(t *testing.T, what string, rtt []time.Duration) {
	t.Helper()
	p50, worst := rtt[len(rtt)/2], rtt[len(rtt)-1]
	t.Logf("%s: min %v, p50 %v, p90 %v, max %v (race detector: %v)", what, rtt[0], p50, rtt[len(rtt)*9/10], worst, raceEnabled)
	switch {
	case !raceEnabled && p50 > 50*time.Millisecond:
		t.Errorf("%s: median %v is above the 50 ms target (all: %v)", what, p50, rtt)
	case worst > time.Second:
		t.Errorf("%s: a ping took %v: the requester waited for its timeout (all: %v)", what, worst, rtt)
	}
}

// TestControlCrossProcessPing pings two worker processes on one file from
// this process: the requester must hear both (Broadcast counts them) and
// return as soon as they answered, with a median round trip under 50 ms.
func TestControlCrossProcessPing(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "stem.db")
	e := openTestEngine(t, path, Options{})
	const ns = "ctl"
	var cmds []*exec.Cmd
	var stdins []io.WriteCloser
	for i := range 2 {
		in, cmd := startControlHelper(t, path, ns, fmt.Sprintf("w%d@h", i))
		stdins = append(stdins, in)
		cmds = append(cmds, cmd)
	}
	rtt := pingRounds(t, e, ns, 15, 2)
	for i, in := range stdins {
		_ = in.Close()
		if err := cmds[i].Wait(); err != nil {
			t.Fatalf("control helper: %v", err)
		}
	}
	checkLatency(t, "cross-process ping of 2 worker processes (fresh requester each)", rtt)
	// The workers closed their subscriptions before they exited: nobody
	// is counted any more.
	if n, err := e.Broadcast(t.Context(), ns, []byte("anyone?")); err != nil || n != 0 {
		t.Fatalf("Broadcast after the workers exited reached %d (%v), want 0", n, err)
	}
}

// TestControlSameProcessPing pings two workers of this process, each on
// its own Engine of the file (the in-process wake-up path).
func TestControlSameProcessPing(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "stem.db")
	e := openTestEngine(t, path, Options{})
	const ns = "ctl"
	var wg sync.WaitGroup
	var subs []broker.Subscription
	defer func() {
		for _, s := range subs {
			_ = s.Close()
		}
		wg.Wait()
	}()
	for i := range 2 {
		w := openTestEngine(t, path, Options{})
		id := fmt.Sprintf("w%d@h", i)
		sub, err := w.SubscribeWorker(t.Context(), ns, id)
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, sub)
		wg.Go(func() {
			for msg := range sub.C() {
				req, err := control.Decode(msg)
				if err != nil {
					t.Error(err)
					continue
				}
				b, _ := json.Marshal(control.Reply{V: control.Version, Type: req.Type, RequestID: req.ID, Worker: id})
				if err := w.Reply(context.Background(), ns, req.ReplyTo, b); err != nil {
					t.Error(err)
				}
			}
		})
	}
	rtt := pingRounds(t, e, ns, 10, 2)
	checkLatency(t, "same-process ping of 2 workers on their own Engines (fresh requester each)", rtt)
}

// TestPausesMigrateFromVersion2: a pause stored by the previous release
// (schema version 2: no scope, no signature, ms times) survives the
// upgrade as a namespace-wide, unsigned pause at the same time.
func TestPausesMigrateFromVersion2(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "stem.db")
	e := openTestEngine(t, path, Options{})
	ctx := t.Context()
	at := time.Date(2026, 11, 30, 3, 0, 0, 123_000_000, time.UTC)
	for _, stmt := range []string{
		`DROP TABLE stem_paused_queues`,
		`CREATE TABLE stem_paused_queues (ns TEXT NOT NULL, namespace TEXT NOT NULL, queue TEXT NOT NULL, paused_at INTEGER NOT NULL, PRIMARY KEY (ns, namespace, queue)) WITHOUT ROWID`,
		fmt.Sprintf(`INSERT INTO stem_paused_queues VALUES ('stem', 'ctl', 'reports', %d)`, at.UnixMilli()),
		`DELETE FROM stem_schema_version WHERE version >= 3`,
	} {
		if _, err := e.wdb.ExecContext(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	_ = e.Close()
	e = openTestEngine(t, path, Options{})
	ps, err := e.Pauses(ctx, "ctl")
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Queue != "reports" || ps[0].Worker != "" || ps[0].Sig != "" || !ps[0].PausedAt.Equal(at) {
		t.Fatalf("pauses after the upgrade = %+v; want one namespace-wide unsigned pause of reports at %v", ps, at)
	}
}

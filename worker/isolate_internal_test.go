package worker

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/memory"
	"github.com/stemhq/stem/internal/testutil"
)

// TestPoolKillsChildAtOnceOnLeaseLoss: when a task's context ends with
// ErrLeaseLost, its isolation child and every process the handler started
// (iso.sleepers, served by the children of this test binary: see
// TestMain) are SIGKILLed at once, TerminateGrace notwithstanding.
func TestPoolKillsChildAtOnceOnLeaseLoss(t *testing.T) {
	eng := memory.New(memory.Options{})
	defer eng.Close()
	w, err := New(Config{Broker: eng, Results: eng, Node: "a", Hostname: "h", Concurrency: 1,
		Isolation: IsolationConfig{TerminateGrace: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.pool.close()
	dir := t.TempDir()
	args, _ := json.Marshal(map[string]string{"dir": dir})
	r := &run{d: broker.Delivery{Envelope: broker.Envelope{ID: "t1", Name: "iso.sleepers", Queue: "default", Args: args, MaxRetries: -1}}}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	outc := make(chan isolatedOutcome, 1)
	go func() { outc <- w.pool.run(ctx, r, 0) }()

	names := []string{"child", "a", "b", "c"}
	pids := make([]int, len(names))
	for i, n := range names {
		testutil.Eventually(t, 20*time.Second, func() bool {
			b, err := os.ReadFile(filepath.Join(dir, n))
			if err != nil || !strings.HasSuffix(string(b), "\n") {
				return false
			}
			pids[i], err = strconv.Atoi(strings.TrimSpace(string(b)))
			return err == nil
		}, "the task never wrote %s", n)
	}
	defer func() {
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	}()
	t0 := time.Now()
	cancel(ErrLeaseLost)
	var out isolatedOutcome
	select {
	case out = <-outc:
	case <-time.After(5 * time.Second):
		t.Fatal("the pool did not give the task up within 5s of its lease loss")
	}
	if !errors.Is(out.err, ErrLeaseLost) || out.revoked {
		t.Fatalf("outcome %+v, want an ErrLeaseLost error, not revoked", out)
	}
	for i, p := range pids {
		testutil.Eventually(t, time.Second, func() bool {
			b, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/stat")
			return err != nil || strings.Contains(string(b), ") Z ")
		}, "process %d (%s) survived the lease loss", p, names[i])
	}
	if took := time.Since(t0); took > time.Second {
		t.Fatalf("killing took %s; TerminateGrace (1h) must not apply on lease loss", took)
	}
	if n := w.pool.Recycles()[RecycleLeaseLost]; n != 1 {
		t.Fatalf("recycles %v, want one %s", w.pool.Recycles(), RecycleLeaseLost)
	}
}

// TestPoolKillsChildAtOnceOnLeaseLossDuringGrace: a task already stopping
// for another reason (a soft shutdown, a terminate revoke, a time limit)
// whose child ignores it sits in TerminateGrace; if its lease is lost
// meanwhile, the child is still killed at once: no other worker may
// claim the task while it runs.
func TestPoolKillsChildAtOnceOnLeaseLossDuringGrace(t *testing.T) {
	eng := memory.New(memory.Options{})
	defer eng.Close()
	w, err := New(Config{Broker: eng, Results: eng, Node: "a", Hostname: "h", Concurrency: 1,
		Isolation: IsolationConfig{TerminateGrace: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.pool.close()
	dir := t.TempDir()
	args, _ := json.Marshal(map[string]string{"dir": dir})
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	r := newRun(broker.Delivery{Envelope: broker.Envelope{ID: "t1", Name: "iso.sleepers", Queue: "default", Args: args, MaxRetries: -1}}, ctx, cancel)
	outc := make(chan isolatedOutcome, 1)
	go func() { outc <- w.pool.run(ctx, r, 0) }()
	var pid int
	testutil.Eventually(t, 20*time.Second, func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "child"))
		if err != nil || !strings.HasSuffix(string(b), "\n") {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	}, "the task never started")
	defer syscall.Kill(pid, syscall.SIGKILL)

	cancel(errShutdown) // soft shutdown: the child is asked to stop and ignores it
	w.fence(r, "test: no renewal confirmed")
	select {
	case out := <-outc:
		if !errors.Is(out.err, ErrLeaseLost) {
			t.Fatalf("outcome %+v, want an ErrLeaseLost error", out)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the lease was lost during the terminate grace (1h) and the child still runs 5s later")
	}
	testutil.Eventually(t, time.Second, func() bool {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		return err != nil || strings.Contains(string(b), ") Z ")
	}, "child %d survived the lease loss", pid)
}

// hangingRenewals is a broker whose ExtendLease hangs until its context
// ends (a partition), reporting each call on calls.
type hangingRenewals struct {
	broker.Broker
	calls chan struct{}
}

func (h *hangingRenewals) ExtendLease(ctx context.Context, _ []broker.Delivery, _ time.Duration) error {
	select {
	case h.calls <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return ctx.Err()
}

// TestPoolKillsChildAtOnceOnLeaseLossWhileExtending: an isolated task
// whose ExtendLease hangs (a partition) is still killed at once when its
// lease is fenced, not once that call times out: the fence falls only a
// tenth of the lease before the broker's deadline.
func TestPoolKillsChildAtOnceOnLeaseLossWhileExtending(t *testing.T) {
	eng := memory.New(memory.Options{})
	defer eng.Close()
	hb := &hangingRenewals{Broker: eng, calls: make(chan struct{}, 1)}
	w, err := New(Config{Broker: hb, Results: eng, Node: "a", Hostname: "h", Concurrency: 1,
		Isolation: IsolationConfig{TerminateGrace: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.pool.close()
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	r := newRun(broker.Delivery{Envelope: broker.Envelope{ID: "t1", Name: "iso.extend", Queue: "default", MaxRetries: -1}}, ctx, cancel)
	outc := make(chan isolatedOutcome, 1)
	go func() { outc <- w.pool.run(ctx, r, 0) }()
	select {
	case <-hb.calls:
	case <-time.After(20 * time.Second):
		t.Fatal("the isolated task never asked for a longer lease")
	}
	w.fence(r, "test: no renewal confirmed")
	select {
	case out := <-outc:
		if !errors.Is(out.err, ErrLeaseLost) {
			t.Fatalf("outcome %+v, want an ErrLeaseLost error", out)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the child was not killed within 2s of the fence: the pool waited for the hanging ExtendLease")
	}
}

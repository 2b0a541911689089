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

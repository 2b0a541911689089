package guarantees_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stemhq/stem/broker"
	stemredis "github.com/stemhq/stem/broker/redis"
	"github.com/stemhq/stem/internal/testutil"
	"github.com/stemhq/stem/result"
	"github.com/stemhq/stem/worker"
)

// TestPrefetchedTasksSurviveRedisDataLoss: a Redis without persistence is
// killed and restarted (empty) while a worker holds one running and four
// prefetched tasks. The worker's next renewal restores them from its
// copies, and all five still run, once each.
func TestPrefetchedTasksSurviveRedisDataLoss(t *testing.T) {
	testutil.EnvOrSkip(t, "STEM_TEST_REDIS_URL") // an integration test like the others
	t.Parallel()
	srv := testutil.StartRedis(t, "--appendonly", "no")
	ctx := t.Context()
	const ns = "loss"
	eng, err := stemredis.Open(ctx, srv.URL(), stemredis.Options{Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()

	release := make(chan struct{})
	runs := map[string]int{}
	ran := make(chan string, 16)
	reg := worker.NewRegistry()
	reg.MustRegister("slow", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		ran <- tc.ID()
		select {
		case <-release:
			return "slow done", nil
		case <-tc.Context().Done():
			return nil, tc.Heartbeat()
		}
	}, worker.TaskOptions{})
	reg.MustRegister("quick", func(tc worker.TaskContext, _ json.RawMessage) (any, error) {
		ran <- tc.ID()
		return "quick done", nil
	}, worker.TaskOptions{})
	w, err := worker.New(worker.Config{
		Broker: eng, Results: eng, Handlers: reg, Node: "a", Hostname: "h", Namespace: ns,
		Queues: []string{"q"}, Concurrency: 1, Prefetch: 4, Lease: 2 * time.Second, ClaimWait: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	envs := []broker.Envelope{{ID: "slow-1", Name: "slow", Queue: "q", MaxRetries: -1, CreatedAt: time.Now()}}
	for _, id := range []string{"quick-1", "quick-2", "quick-3", "quick-4"} {
		envs = append(envs, broker.Envelope{ID: id, Name: "quick", Queue: "q", MaxRetries: -1, CreatedAt: time.Now()})
	}
	if err := eng.PublishBatch(ctx, envs); err != nil {
		t.Fatal(err)
	}
	stop := run(t, w)
	if id := <-ran; id != "slow-1" {
		t.Fatalf("first task to run was %s, want slow-1", id)
	}
	runs["slow-1"]++
	testutil.Eventually(t, 10*time.Second, func() bool { return w.Stats().Outstanding == 5 }, "the worker does not hold all five tasks (%d)", w.Stats().Outstanding)

	srv.Kill()
	srv.WipeData()
	srv.Start()

	// The worker's next renewal (at half the 2s lease) puts its five
	// deliveries back into the restarted server, leased to it.
	c := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
	defer c.Close()
	testutil.Eventually(t, 10*time.Second, func() bool {
		n, err := c.ZCard(context.Background(), "{"+ns+":q}:leased").Result()
		return err == nil && n == 5
	}, "the restarted server did not get the worker's five leases back")

	close(release)
	for len(runs) < 5 {
		select {
		case id := <-ran:
			runs[id]++
		case <-time.After(20 * time.Second):
			t.Fatalf("only %v ran after the data loss", runs)
		}
	}
	stop()
	for id, n := range runs {
		if n != 1 {
			t.Errorf("task %s ran %d times", id, n)
		}
		st, err := eng.Get(context.Background(), id)
		if err != nil || st.State != result.Succeeded {
			t.Errorf("task %s: %+v, %v; want succeeded", id, st, err)
		}
	}
	if n := w.Counters().LeasesLost; n != 0 {
		t.Errorf("%d leases were fenced; the worker's copies should have been restored", n)
	}
	if n, _ := c.ZCard(context.Background(), "{"+ns+":q}:leased").Result(); n != 0 {
		t.Errorf("%d leases left in the server after every task was acked", n)
	}
}

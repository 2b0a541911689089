package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/memory"
	"github.com/stemhq/stem/client"
	"github.com/stemhq/stem/result"
)

// checkingBroker checks, at publish time, that every published task's
// "queued" state is already in the result backend.
type checkingBroker struct {
	broker.Broker
	results   result.Backend
	t         *testing.T
	published int
}

func (b *checkingBroker) PublishBatch(ctx context.Context, envs []broker.Envelope) error {
	for _, env := range envs {
		st, err := b.results.Get(ctx, env.ID)
		if err != nil || st.State != result.Queued {
			b.t.Errorf("publish %s: the queued state is not written yet (state %q, err %v)", env.ID, st.State, err)
			break
		}
	}
	b.published += len(envs)
	return b.Broker.PublishBatch(ctx, envs)
}

func TestQueuedStateIsWrittenBeforePublish(t *testing.T) {
	m := memory.New(memory.Options{})
	defer m.Close()
	b := &checkingBroker{Broker: m, results: m, t: t}
	c := client.New(b, m, client.Options{})
	if _, err := c.EnqueueMany(context.Background(), make([]client.Task, 2)); err == nil {
		t.Fatal("tasks without a name were enqueued")
	}
	ts := make([]client.Task, 1201) // three batches
	for i := range ts {
		ts[i] = client.Task{Name: "stem.echo"}
	}
	envs, err := c.EnqueueMany(context.Background(), ts)
	if err != nil {
		t.Fatal(err)
	}
	if b.published != len(ts) || len(envs) != len(ts) {
		t.Fatalf("published %d, returned %d; want %d", b.published, len(envs), len(ts))
	}
}

// failingResults refuses every write.
type failingResults struct{ result.Backend }

func (failingResults) Set(context.Context, []result.TaskState) error { return errors.New("down") }

func TestNothingIsPublishedWhenTheStateIsNotRecorded(t *testing.T) {
	m := memory.New(memory.Options{})
	defer m.Close()
	b := &checkingBroker{Broker: m, results: m, t: t}
	c := client.New(b, failingResults{m}, client.Options{})
	if _, err := c.Enqueue(context.Background(), client.Task{Name: "stem.echo"}); err == nil {
		t.Fatal("Enqueue succeeded without recording the state")
	}
	if b.published != 0 {
		t.Fatalf("published %d tasks whose state was not recorded", b.published)
	}
}

func TestRoutingAndEnvelope(t *testing.T) {
	m := memory.New(memory.Options{})
	defer m.Close()
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	c := client.New(m, m, client.Options{Routes: map[string]string{"reports.build": "reports"}, Now: func() time.Time { return now }})
	zero := 0
	for _, tc := range []struct {
		task  client.Task
		queue string
		eta   time.Time
		retry int
	}{
		{client.Task{Name: "reports.build"}, "reports", time.Time{}, -1},
		{client.Task{Name: "reports.build", Queue: "urgent"}, "urgent", time.Time{}, -1},
		{client.Task{Name: "stem.echo", Countdown: time.Minute, MaxRetries: &zero}, "default", now.Add(time.Minute), 0},
	} {
		env, err := c.Enqueue(context.Background(), tc.task)
		if err != nil {
			t.Fatal(err)
		}
		if env.Queue != tc.queue || !env.ETA.Equal(tc.eta) || env.MaxRetries != tc.retry || env.ID == "" {
			t.Errorf("%+v: got queue %q eta %v retries %d id %q; want %q %v %d", tc.task, env.Queue, env.ETA, env.MaxRetries, env.ID, tc.queue, tc.eta, tc.retry)
		}
		st, err := m.Get(context.Background(), env.ID)
		if err != nil || st.State != result.Queued || st.Queue != tc.queue {
			t.Errorf("%s: state %+v, %v", env.ID, st, err)
		}
	}
	if _, err := c.Enqueue(context.Background(), client.Task{Name: "x", Countdown: time.Second, ETA: now}); err == nil {
		t.Error("countdown and ETA together were accepted")
	}
	if _, err := c.Enqueue(context.Background(), client.Task{Name: "x", Queue: "a b"}); err == nil {
		t.Error("a queue with a space was accepted")
	}
}

// steppedResults runs step[n] after the n-th Get returns its answer.
type steppedResults struct {
	result.Backend
	gets int
	step map[int]func()
}

func (s *steppedResults) Get(ctx context.Context, id string) (result.TaskState, error) {
	st, err := s.Backend.Get(ctx, id)
	s.gets++
	if f := s.step[s.gets]; f != nil {
		f()
	}
	return st, err
}

func TestWait(t *testing.T) {
	m := memory.New(memory.Options{})
	defer m.Close()
	ctx := context.Background()
	c := client.New(m, m, client.Options{})
	envs, err := c.EnqueueMany(ctx, []client.Task{{Name: "a"}, {Name: "b"}, {Name: "c"}})
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{envs[0].ID, envs[1].ID, envs[2].ID, "never-enqueued"}
	now := time.Now().UTC()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Round one of Wait reads four unfinished tasks, after which two
	// finish; round two sees them final and the other two still not; then
	// the wait ends (its context), with those two pending.
	c = client.New(m, &steppedResults{Backend: m, step: map[int]func(){
		4: func() {
			_ = m.Set(ctx, []result.TaskState{
				{ID: ids[0], Name: "a", Queue: "default", State: result.Succeeded, UpdatedAt: now},
				{ID: ids[1], Name: "b", Queue: "default", State: result.Failed, UpdatedAt: now},
			})
		},
		8: cancel,
	}}, client.Options{})
	oc, err := c.Wait(wctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	got := []result.State{oc.States[0].State, oc.States[1].State, oc.States[2].State, oc.States[3].State}
	want := []result.State{result.Succeeded, result.Failed, result.Queued, ""}
	for i := range want {
		if got[i] != want[i] || oc.States[i].ID != ids[i] {
			t.Errorf("state %d: %q (%s); want %q (%s)", i, got[i], oc.States[i].ID, want[i], ids[i])
		}
	}
	if len(oc.Pending) != 2 || oc.Pending[0] != ids[2] || oc.Pending[1] != ids[3] {
		t.Errorf("pending %v; want %v", oc.Pending, ids[2:])
	}
}

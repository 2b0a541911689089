package client_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/memory"
	"github.com/stemhq/stem/client"
	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/control/revoke"
)

// watchingTransport runs check before every control message it carries.
type watchingTransport struct {
	broker.ControlTransport
	check func()
	sent  int
}

func (w *watchingTransport) Broadcast(ctx context.Context, ns string, msg []byte) (int, error) {
	w.check()
	w.sent++
	return w.ControlTransport.Broadcast(ctx, ns, msg)
}

func (w *watchingTransport) Send(ctx context.Context, ns, id string, msg []byte) (int, error) {
	w.check()
	w.sent++
	return w.ControlTransport.Send(ctx, ns, id, msg)
}

func requester(tr broker.ControlTransport, key string) *control.Requester {
	return &control.Requester{Transport: tr, Namespace: "ns", SigningKey: []byte(key)}
}

// failingRevokes refuses every write.
type failingRevokes struct{ revoke.Store }

func (failingRevokes) Upsert(context.Context, []revoke.Entry) ([]revoke.Entry, error) {
	return nil, errors.New("store down")
}

// A revoke is never visible without its durable record: the store holds
// the (signed) entry when the message goes out, and a store failure
// publishes nothing.
func TestRevokeIsStoredBeforeItIsPublished(t *testing.T) {
	ctx := context.Background()
	m := memory.New(memory.Options{})
	defer m.Close()
	store := revoke.NewMemory()
	tr := &watchingTransport{ControlTransport: m}
	tr.check = func() {
		es, err := store.List(ctx, "ns")
		if err != nil || len(es) != 2 {
			t.Errorf("revoke published while the store holds %d entries (%v); want 2", len(es), err)
		}
		for _, e := range es {
			if e.Verify([]byte("k")) != nil {
				t.Errorf("stored entry %s is not signed", e.TaskID)
			}
		}
	}
	req := requester(tr, "k")
	defer req.Close()
	rv, err := client.Revoke(ctx, store, req, client.RevokeRequest{TaskIDs: []string{"t1", "t2"}, Terminate: true, RequestedBy: "me", Timeout: 1})
	if err != nil {
		t.Fatal(err)
	}
	if tr.sent != 1 || len(rv.Stored) != 2 || rv.Stored[0].RequestedBy != "me" || !rv.Stored[0].Terminate {
		t.Fatalf("sent %d messages, stored %+v", tr.sent, rv.Stored)
	}

	tr.sent = 0
	_, err = client.Revoke(ctx, failingRevokes{store}, req, client.RevokeRequest{TaskIDs: []string{"t3"}, Timeout: 1})
	var pe *client.PublishError
	if err == nil || errors.As(err, &pe) {
		t.Fatalf("Revoke with a failing store: %v; want the store's error", err)
	}
	if tr.sent != 0 {
		t.Fatalf("a revoke the store refused was published (%d messages)", tr.sent)
	}
}

// failingPauses refuses every write.
type failingPauses struct{ broker.PauseStore }

func (failingPauses) Pause(context.Context, []broker.Pause) error { return errors.New("store down") }
func (failingPauses) Resume(context.Context, string, string, []string) error {
	return errors.New("store down")
}

func TestPauseAndResumeAreStoredBeforeTheyArePublished(t *testing.T) {
	ctx := context.Background()
	m := memory.New(memory.Options{})
	defer m.Close()
	var want int // how many pauses the store must hold at publish time
	tr := &watchingTransport{ControlTransport: m}
	tr.check = func() {
		ps, err := m.Pauses(ctx, "ns")
		if err != nil || len(ps) != want {
			t.Errorf("published while the store holds %d pauses (%v); want %d", len(ps), err, want)
		}
		for _, p := range ps {
			if p.Verify([]byte("k")) != nil {
				t.Errorf("stored pause %s is not signed", p.Queue)
			}
		}
	}
	req := requester(tr, "k")
	defer req.Close()
	want = 2
	pr, err := client.Pause(ctx, m, req, client.PauseRequest{Queues: []string{"a", "b"}, Timeout: 1})
	if err != nil || tr.sent != 1 || len(pr.Scopes) != 1 || pr.Scopes[0] != "" {
		t.Fatalf("Pause: %+v, %v; sent %d", pr, err, tr.sent)
	}
	want = 3
	if _, err := client.Pause(ctx, m, req, client.PauseRequest{Queues: []string{"a"}, Workers: []string{"alpha"}, Timeout: 1}); err != nil {
		t.Fatal(err)
	}
	want = 1
	pr, err = client.Resume(ctx, m, req, client.PauseRequest{Queues: []string{"a", "b"}, Timeout: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(pr.StillPaused) != 1 || pr.StillPaused[0].Worker != "alpha" {
		t.Fatalf("still paused: %+v; want a for alpha", pr.StillPaused)
	}

	tr.sent = 0
	if _, err := client.Pause(ctx, failingPauses{m}, req, client.PauseRequest{Queues: []string{"c"}, Timeout: 1}); err == nil {
		t.Fatal("Pause with a failing store succeeded")
	}
	if _, err := client.Resume(ctx, failingPauses{m}, req, client.PauseRequest{Queues: []string{"a"}, Workers: []string{"alpha"}, Timeout: 1}); err == nil {
		t.Fatal("Resume with a failing store succeeded")
	}
	if tr.sent != 0 {
		t.Fatalf("a pause or resume the store refused was published (%d messages)", tr.sent)
	}
}

package control_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stemhq/stem/broker/memory"
	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/registry"
)

// answer subscribes a fake worker that answers every request (or, with
// silent, receives requests and never answers: a worker dying mid-request).
func answer(t *testing.T, bus *memory.Engine, ns, id string, silent bool) {
	sub, err := bus.SubscribeWorker(context.Background(), ns, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	go func() {
		for b := range sub.C() {
			if silent {
				continue
			}
			req, err := control.Decode(b)
			if err != nil {
				continue
			}
			rep, _ := json.Marshal(control.Reply{V: 1, Type: req.Type, RequestID: req.ID, Worker: id})
			_ = bus.Reply(context.Background(), ns, req.ReplyTo, rep)
		}
	}()
}

func TestRequesterNamesWhoDidNotAnswer(t *testing.T) {
	bus := memory.New(memory.Options{})
	reg := memory.New(memory.Options{})
	defer reg.Close()
	ctx := context.Background()
	for _, id := range []string{"a@h", "b@h", "dead@h"} {
		reg.Heartbeat(ctx, registry.WorkerInfo{ID: id, Node: id[:len(id)-2], Namespace: "ns"}, time.Minute)
	}
	answer(t, bus, "ns", "a@h", false)
	answer(t, bus, "ns", "b@h", false)
	answer(t, bus, "ns", "dead@h", true)
	q := &control.Requester{Transport: bus, Registry: reg, Namespace: "ns"}
	defer q.Close()
	res, err := q.Do(ctx, control.TypePing, nil, nil, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Replies) != 2 || res.Expected != 3 || len(res.Missing) != 1 || res.Missing[0] != "dead@h" {
		t.Fatalf("result %+v", res)
	}
	if res.Elapsed < 200*time.Millisecond || res.Elapsed > 2*time.Second {
		t.Fatalf("returned after %s; want the 200ms timeout", res.Elapsed)
	}
	// A second request on the same requester reuses its reply channel and
	// ignores nothing it should not.
	res, err = q.Do(ctx, control.TypePing, nil, []string{"a", "b@h"}, time.Second)
	if err != nil || len(res.Replies) != 2 || len(res.Missing) != 0 || res.Elapsed > 500*time.Millisecond {
		t.Fatalf("targeted: %+v %v", res, err)
	}
}

func TestParseTargets(t *testing.T) {
	got := control.ParseTargets([]string{"a, b", "b", "", "c@h,"})
	if len(got) != 3 || got[0] != "a" || got[1] != "b" || got[2] != "c@h" {
		t.Fatalf("got %v", got)
	}
}

func TestSignVerify(t *testing.T) {
	r := control.Request{V: control.Version, Type: "ping", ID: "x", ReplyTo: "y", Namespace: "ns"}
	if err := r.Sign([]byte("k")); err != nil {
		t.Fatal(err)
	}
	if err := r.Verify([]byte("k")); err != nil {
		t.Fatal(err)
	}
	r.Type = "shutdown" // tampered
	if err := r.Verify([]byte("k")); err == nil {
		t.Fatal("tampered request verified")
	}
	if _, err := control.Decode([]byte(`{"v":3,"type":"ping","id":"x"}`)); err == nil {
		t.Fatal("version 3 accepted")
	}
	old := control.Request{V: 1, Type: "ping", ID: "x", ReplyTo: "y", Namespace: "ns"}
	if err := old.Verify([]byte("k")); !errors.Is(err, control.ErrOldVersion) {
		t.Fatalf("a version 1 request under a key: %v, want ErrOldVersion", err)
	}
	if _, err := control.Decode([]byte(`{nope`)); err == nil {
		t.Fatal("garbage accepted")
	}
}

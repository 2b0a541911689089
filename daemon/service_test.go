package daemon

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus/hooks/test"
)

type fakeService struct {
	ready, stopping chan struct{}
}

func (f *fakeService) Ready() <-chan struct{}    { return f.ready }
func (f *fakeService) Stopping() <-chan struct{} { return f.stopping }
func (f *fakeService) Alive() error              { return errors.New("stuck") }

// TestServiceNotifier: READY=1 with the first status once the service is
// ready, STATUS= lines while it runs, then STOPPING=1, draining status and
// EXTEND_TIMEOUT_USEC= once it stops.
func TestServiceNotifier(t *testing.T) {
	conn := listenNotify(t)
	f := &fakeService{ready: make(chan struct{}), stopping: make(chan struct{})}
	log, _ := test.NewNullLogger()
	s := &ServiceNotifier{N: NewNotifier(), Service: f, Log: log, StatusEvery: 10 * time.Millisecond,
		Status: func(prefix string) string { return prefix + ": 1/2 busy" }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	close(f.ready)
	if got := readMsg(t, conn); got != "READY=1\nSTATUS=ready: 1/2 busy" {
		t.Fatalf("first message %q", got)
	}
	if got := readMsg(t, conn); got != "STATUS=ready: 1/2 busy" {
		t.Fatalf("second message %q", got)
	}
	close(f.stopping)
	var msgs []string
	for !strings.HasPrefix(strings.Join(msgs, "|"), "STOPPING=1") || len(msgs) < 3 {
		msgs = append(msgs, readMsg(t, conn))
		if len(msgs) > 20 {
			t.Fatalf("no STOPPING=1, draining status and timeout extension: %q", msgs)
		}
		if msgs[0] != "STOPPING=1" {
			msgs = msgs[1:] // a status tick raced the stop
		}
	}
	if msgs[1] != "STATUS=draining: 1/2 busy" || !strings.HasPrefix(msgs[2], "EXTEND_TIMEOUT_USEC=") {
		t.Fatalf("after STOPPING=1: %q", msgs)
	}
	cancel()
	<-done
}

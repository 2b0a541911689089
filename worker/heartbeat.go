package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/stemhq/stem/registry"
)

// Info returns the worker's registry record.
func (w *Worker) Info() registry.WorkerInfo {
	held, limit := w.slots.stats()
	state := "running"
	if w.currentMode() != 0 {
		state = "draining"
	}
	return registry.WorkerInfo{
		ID: w.id, Node: w.cfg.Node, Host: w.cfg.Hostname, PID: os.Getpid(), Namespace: w.cfg.Namespace,
		Queues: w.cfg.Queues, Concurrency: limit, InFlight: held, StartedAt: w.startedAt,
		LastSeen: w.cfg.Now(), State: state, Version: w.cfg.Version,
	}
}

// heartbeat refreshes the registry record every Heartbeat until ctx ends.
func (w *Worker) heartbeat(ctx context.Context) {
	if w.cfg.Registry == nil {
		return
	}
	beat := func() {
		hctx, cancel := context.WithTimeout(ctx, w.cfg.Heartbeat)
		defer cancel()
		if err := w.cfg.Registry.Heartbeat(hctx, w.Info(), 3*w.cfg.Heartbeat); err != nil && ctx.Err() == nil {
			w.log.WithError(err).Warn("heartbeat failed")
		}
	}
	beat()
	every(ctx, w.cfg.Heartbeat, beat)
}

// every calls f every d until ctx ends.
func every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

// Alive reports whether the worker's main loop is making progress: its
// central lock (the outstanding set's) can be taken, and the fetcher is not
// stuck inside one claim for longer than ClaimWait plus 30 seconds (a claim
// that hangs past every timeout). A worker waiting for free slots is
// alive. It is what the systemd watchdog pings depend on.
func (w *Worker) Alive() error {
	locked := make(chan struct{})
	go func() { w.out.len(); close(locked) }() // taking the lock is the probe
	select {
	case <-locked:
	case <-time.After(5 * time.Second):
		return errors.New("the worker's central lock is held for over 5s")
	}
	if since := w.claimSince.Load(); since != 0 {
		if d := time.Since(time.Unix(0, since)); d > w.cfg.ClaimWait+30*time.Second {
			return fmt.Errorf("a claim has been running for %s", d.Round(time.Second))
		}
	}
	return nil
}

package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/logging"
)

// Mode is a shutdown mode.
type Mode int

// Shutdown modes, in order of strength.
const (
	// Warm stops fetching and lets in-flight tasks finish.
	Warm Mode = iota + 1
	// Soft cancels in-flight tasks and escalates to Hard after the grace
	// period.
	Soft
	// Hard hands in-flight deliveries back without counting an attempt.
	Hard
)

var modeNames = map[Mode]string{Warm: "warm", Soft: "soft", Hard: "hard"}

func (m Mode) String() string {
	if s, ok := modeNames[m]; ok {
		return s
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// ParseMode parses "warm", "soft" or "hard".
func ParseMode(s string) (Mode, error) {
	for m, name := range modeNames {
		if s == name {
			return m, nil
		}
	}
	return 0, fmt.Errorf("unknown shutdown mode %q (want warm, soft or hard)", s)
}

// Ready is closed once the worker consumes: its first claim succeeded (the
// broker answered) and its services run.
func (w *Worker) Ready() <-chan struct{} { return w.ready }

// Stopping is closed when a shutdown begins.
func (w *Worker) Stopping() <-chan struct{} { return w.stoppingCh }

// Shutdown asks the worker to stop in mode; a later call with a stronger
// mode escalates. It returns at once; Run returns when the worker stopped.
func (w *Worker) Shutdown(m Mode) {
	w.shutdownMu.Lock()
	defer w.shutdownMu.Unlock()
	if m <= w.mode {
		return
	}
	w.mode = m
	if m == Hard {
		close(w.hard) // cuts the completer's back-off short
	}
	select {
	case w.modeCh <- m:
	default:
	}
}

func (w *Worker) currentMode() Mode {
	w.shutdownMu.Lock()
	defer w.shutdownMu.Unlock()
	return w.mode
}

// Run consumes until ctx ends (a warm shutdown) or Shutdown is called, then
// stops in the order documented on the package. It returns nil after a clean
// stop. Run may be called once.
//
// Run owns every long-running component: each runs on a goroutine of the
// WaitGroup of its shutdown stage, and stops when that stage ends.
func (w *Worker) Run(ctx context.Context) error {
	if !w.started.CompareAndSwap(false, true) {
		return errors.New("worker: Run called twice")
	}
	w.log.WithFields(logrus.Fields{"queues": w.cfg.Queues, "concurrency": w.cfg.Concurrency, "prefetch": w.cfg.Prefetch}).Info("worker starting")

	fetchCtx, stopFetch := context.WithCancel(context.Background())
	bgCtx, stopBg := context.WithCancel(context.Background())
	defer stopBg()
	defer stopFetch()

	// Revokes and pauses are loaded, and control requests subscribed,
	// before the first claim: a revoke issued while no worker ran is
	// honoured from the first task on. Until the stores are read nothing
	// is claimed and Ready stays open; a shutdown meanwhile returns nil.
	if !w.loadControlState(ctx) {
		// Nothing was claimed, so there is nothing to hand back.
		close(w.stoppingCh)
		w.pool.close()
		w.log.Info("worker stopped before it consumed")
		return nil
	}
	var ctlSub broker.Subscription
	if w.cfg.Control != nil {
		var err error
		if ctlSub, err = w.cfg.Control.SubscribeWorker(ctx, w.cfg.Namespace, w.id); err != nil {
			return fmt.Errorf("subscribe to control requests: %w", err)
		}
	}

	var fetchWG, dispatchWG, completeWG, bgWG, ctlWG sync.WaitGroup
	fetchWG.Go(func() { w.fetch(fetchCtx) })
	dispatchWG.Go(w.dispatch)
	completeWG.Go(w.comp.run)
	bgWG.Go(func() { w.scaler.run(bgCtx) })
	bgWG.Go(func() { w.keepLeases(bgCtx) })
	bgWG.Go(func() { w.heartbeat(bgCtx) })
	bgWG.Go(func() { w.resyncControlState(bgCtx) })
	if ctlSub != nil {
		ctlWG.Go(func() { w.serveControl(ctlSub) })
	}

	// Wait for a shutdown request.
	var mode Mode
	select {
	case <-ctx.Done():
		w.Shutdown(Warm)
		mode = w.currentMode()
	case mode = <-w.modeCh:
	}
	w.log.WithField(logging.FieldMode, mode.String()).Info("shutdown requested")
	close(w.stoppingCh)

	// 1. Stop fetching.
	w.out.stop()
	stopFetch()
	w.slots.close() // a dispatcher waiting for a slot hands back instead
	fetchWG.Wait()
	close(w.queue) // the dispatcher hands back what is still queued (2.)
	dispatchWG.Wait()

	// 3. Running handlers.
	w.drainRunning(mode)

	// 4. Flush.
	w.comp.close()
	completeWG.Wait()

	// 5. Background services (control answers until here, so operators
	// can ping and inspect a draining worker), and isolation children.
	w.pool.close()
	stopBg()
	bgWG.Wait()
	if ctlSub != nil {
		_ = ctlSub.Close()
		ctlWG.Wait()
	}
	if w.cfg.Registry != nil {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := w.cfg.Registry.Remove(rctx, w.cfg.Namespace, w.id); err != nil {
			w.log.WithError(err).Warn("could not remove the registry record")
		}
		cancel()
	}
	c := w.Counters()
	w.log.WithFields(logrus.Fields{"processed": c.Processed, "failed": c.Failed, "retried": c.Retried}).Info("worker stopped")
	return nil
}

// drainRunning waits for running handlers according to mode, escalating as
// further Shutdown calls arrive.
func (w *Worker) drainRunning(mode Mode) {
	allDone := make(chan struct{})
	go func() { w.running.Wait(); close(allDone) }()
	var grace <-chan time.Time
	for {
		switch mode {
		case Soft:
			w.cancelRunning(errShutdown)
			if grace == nil {
				grace = time.After(w.cfg.ShutdownGrace)
			}
		case Hard:
			w.cancelRunning(errShutdown)
			select {
			case <-allDone:
			case <-time.After(w.cfg.HardWait):
				w.handBackRunning()
				w.pool.close() // kill isolated tasks' children now
			}
			return
		}
		select {
		case <-allDone:
			return
		case m := <-w.modeCh:
			w.log.WithField(logging.FieldMode, m.String()).Warn("shutdown escalated")
			mode = m
		case <-grace:
			w.log.WithField(logging.FieldDuration, w.cfg.ShutdownGrace.String()).Warn("soft shutdown grace period over; going hard")
			w.Shutdown(Hard)
			mode = Hard
		}
	}
}

func (w *Worker) cancelRunning(cause error) {
	w.out.each(func(r *run) {
		if r.state.Load() == runRunning {
			r.cancel(cause)
		}
	})
}

// handBackRunning requeues the deliveries of handlers that did not return
// in time. Their goroutines are abandoned: whatever they report later is
// ignored (state is already settled).
func (w *Worker) handBackRunning() {
	var rs []*run
	w.out.each(func(r *run) {
		if r.state.CompareAndSwap(runRunning, runSettled) {
			rs = append(rs, r)
		}
	})
	for _, r := range rs {
		w.taskLog(r.d.Envelope).Warn("handler did not stop in time; handing the task back")
		w.comp.send(finish{run: r, action: broker.Requeue, slotHeld: true})
	}
}

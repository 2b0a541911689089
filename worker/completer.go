package worker

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/logging"
	"github.com/stemhq/stem/result"
)

// finish is one event for the completer: a state to write and, unless
// startedOnly, a delivery to settle.
type finish struct {
	run         *run
	state       result.TaskState
	hasState    bool
	startedOnly bool
	action      broker.NackAction // 0 = ack
	retryEnv    broker.Envelope
	delay       time.Duration
	reason      string
	slotHeld    bool // the handler's slot is released after settling
}

// completer gathers finish events and settles them in batches: the states
// are written before the deliveries are acked (state-then-ack), and the
// capacity of a delivery is freed only once it is settled.
type completer struct {
	w  *Worker
	ch chan finish
	// mu guards closing ch against late senders (a handler that returns
	// just as a hard shutdown gives up on it).
	mu     sync.RWMutex
	closed bool
	// stop is closed when a hard shutdown begins: no back-off sleep of a
	// failing write outlives it.
	stop      <-chan struct{}
	base, max time.Duration // back-off of failing writes
}

// send queues f. Only the dispatcher and the lifecycle, which run before
// close, send this way; handlers use finishRun.
func (c *completer) send(f finish) { c.ch <- f }

// finishRun queues the outcome of a running task unless a hard shutdown
// handed it back already (then its slot is released when that hand-back
// settles, and the outcome is dropped).
func (c *completer) finishRun(f finish, s *slots) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if !c.closed && f.run.state.CompareAndSwap(runRunning, runSettled) {
		s.release()
		c.ch <- f
	}
}

// close ends run once it has flushed what was queued.
func (c *completer) close() {
	c.mu.Lock()
	c.closed = true
	close(c.ch)
	c.mu.Unlock()
}

// run gathers finish events and flushes them in batches until close.
func (c *completer) run() {
	maxBatch := c.w.cfg.MaxBatch
	batch := make([]finish, 0, maxBatch)
	for f := range c.ch {
		batch = append(batch[:0], f)
	gather:
		for len(batch) < 4*maxBatch {
			select {
			case g, ok := <-c.ch:
				if !ok {
					break gather
				}
				batch = append(batch, g)
			default:
				break gather
			}
		}
		c.flush(batch)
	}
}

// flush writes the batch's states (coalesced), then settles its
// deliveries, then frees their capacity. Errors are retried with backoff:
// a failure here must not lose a state or an ack. Only when the worker is
// hard-stopping does it give up (the leases then expire and the broker
// redelivers: at-least-once).
func (c *completer) flush(batch []finish) {
	w := c.w
	states := make([]result.TaskState, 0, len(batch))
	index := make(map[string]int, len(batch))
	var acks []broker.Delivery
	var nacks []broker.Nack
	var settled []finish
	for _, f := range batch {
		if f.hasState {
			if i, ok := index[f.state.ID]; ok {
				if result.Newer(f.state, states[i]) {
					states[i] = f.state
				}
			} else {
				index[f.state.ID] = len(states)
				states = append(states, f.state)
			}
		}
		if f.startedOnly {
			continue
		}
		settled = append(settled, f)
		switch f.action {
		case 0:
			acks = append(acks, f.run.d)
		default:
			nacks = append(nacks, broker.Nack{Delivery: f.run.d, Action: f.action, Envelope: f.retryEnv, Delay: f.delay, Reason: f.reason})
		}
	}
	if err := c.retrying("write task states", len(states), func(ctx context.Context) error {
		return w.cfg.Results.Set(ctx, states)
	}); err != nil {
		if w.currentMode() == Hard {
			// The states were not written (hard shutdown gave up): leave
			// the deliveries leased, so they are redelivered and run again
			// rather than acked with their outcome lost.
			acks, nacks = nil, nil
		} else {
			// The backend refuses this batch for good (a result it cannot
			// store, say): store what it takes, one by one, instead of
			// stalling every ack behind it.
			c.writeStatesOneByOne(states)
		}
	}
	_ = c.retrying("ack deliveries", len(acks), func(ctx context.Context) error { return w.cfg.Broker.Ack(ctx, acks) })
	_ = c.retrying("hand back deliveries", len(nacks), func(ctx context.Context) error { return w.cfg.Broker.Nack(ctx, nacks) })
	if len(settled) == 0 {
		return
	}
	w.out.settle(settled)
	for _, f := range settled {
		if f.slotHeld {
			w.slots.release()
		}
	}
}

// retrying runs op, a write of n items (none: nothing to do), until it
// succeeds, backing off between attempts. It gives up, returning the last
// error, after three failures during a hard shutdown (which also cuts a
// back-off short), or after three failures that are not the backend being
// unavailable (an error that retrying will not clear).
func (c *completer) retrying(what string, n int, op func(context.Context) error) error {
	if n == 0 {
		return nil
	}
	log := c.w.log
	b := &backoff{base: c.base, max: c.max}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := op(ctx)
		cancel()
		if err == nil {
			if b.failures > 0 {
				log.Infof("%s: succeeded after %d failed attempt(s)", what, b.failures)
			}
			return nil
		}
		if c.w.currentMode() == Hard && b.failures >= 3 {
			log.WithError(err).Errorf("%s: giving up during hard shutdown; leases will expire and the broker will redeliver", what)
			return err
		}
		if b.failures >= 3 && !errors.Is(err, stem.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
			log.WithError(err).Errorf("%s: the backend keeps refusing it; giving up on this batch", what)
			return err
		}
		d := b.next()
		log.WithError(err).WithField(logging.FieldDelay, d.String()).Warnf("%s failed; retrying", what)
		sleep(c.stop, d)
	}
}

// writeStatesOneByOne writes states singly after a batch was refused for
// good. A state the backend still refuses is written again without its
// result and progress data, with an error saying why; if even that fails,
// it is logged and skipped (the delivery is still settled).
func (c *completer) writeStatesOneByOne(states []result.TaskState) {
	w := c.w
	for _, st := range states {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := w.cfg.Results.Set(ctx, []result.TaskState{st})
		if err != nil {
			bare := st
			bare.Result, bare.ProgressData = nil, nil
			bare.Error = strings.TrimPrefix(st.Error+"; ", "; ") + "result not stored: " + err.Error()
			if err2 := w.cfg.Results.Set(ctx, []result.TaskState{bare}); err2 != nil {
				w.log.WithError(err2).WithField(logging.FieldTask, st.ID).Error("could not record the task's state")
			} else {
				w.log.WithError(err).WithField(logging.FieldTask, st.ID).Warn("the result backend refused the task's result; recorded the state without it")
			}
		}
		cancel()
	}
}

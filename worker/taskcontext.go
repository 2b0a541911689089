package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// revokedError is the cancel cause of a task terminated by a revoke.
type revokedError struct {
	reason, by string
}

func (e *revokedError) Error() string {
	msg := "task revoked"
	if e.reason != "" {
		msg += ": " + e.reason
	}
	return msg
}

func (e *revokedError) Is(target error) bool { return target == ErrTaskRevoked }

// taskContext is the TaskContext of an inline handler.
type taskContext struct {
	ctx context.Context
	run *run
	w   *Worker

	mu       sync.Mutex
	progress float64
	data     json.RawMessage
}

func (t *taskContext) Context() context.Context { return t.ctx }
func (t *taskContext) ID() string               { return t.run.d.Envelope.ID }
func (t *taskContext) Name() string             { return t.run.d.Envelope.Name }
func (t *taskContext) Queue() string            { return t.run.d.Envelope.Queue }
func (t *taskContext) Attempt() int             { return t.run.d.Envelope.Attempt }

// check returns ErrTaskRevoked (wrapped with the reason) once the task was
// terminated, or the shutdown/time-limit cause once its context ended.
func (t *taskContext) check() error {
	t.run.lastBeat.Store(t.w.cfg.Now().UnixNano())
	if t.ctx.Err() == nil {
		return nil
	}
	cause := context.Cause(t.ctx)
	var re *revokedError
	if errors.As(cause, &re) {
		return re
	}
	if errors.Is(cause, errShutdown) {
		return fmt.Errorf("%w: %v", ErrTaskRevoked, errShutdown)
	}
	return cause
}

// Heartbeat implements TaskContext.
func (t *taskContext) Heartbeat() error { return t.check() }

// ExtendLease implements TaskContext.
func (t *taskContext) ExtendLease(d time.Duration) error {
	if err := t.check(); err != nil {
		return err
	}
	if d <= 0 {
		return fmt.Errorf("extend lease: duration %s must be positive", d)
	}
	return t.w.extendLease(t.ctx, t.run, d)
}

// Progress implements TaskContext. It writes the progress through to the
// result backend at once (a later final state always wins over it).
func (t *taskContext) Progress(p float64, data any) error {
	if err := t.check(); err != nil {
		return err
	}
	if p < 0 || p > 1 {
		return fmt.Errorf("progress %v out of range [0, 1]", p)
	}
	var raw json.RawMessage
	if data != nil {
		b, err := json.Marshal(data)
		if err != nil {
			return fmt.Errorf("progress data is not JSON-marshalable: %w", err)
		}
		raw = b
	}
	t.mu.Lock()
	t.progress, t.data = p, raw
	t.mu.Unlock()
	if err := t.w.recordProgress(t.ctx, t.run, p, raw); err != nil {
		return fmt.Errorf("record progress of task %s: %w", t.ID(), err)
	}
	return nil
}

func (t *taskContext) lastProgress() (float64, json.RawMessage) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.progress, t.data
}

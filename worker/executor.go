package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"runtime/debug"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/logging"
	"github.com/stemhq/stem/result"
)

// errShutdown is the cancel cause of tasks cancelled by soft/hard shutdown:
// they are handed back, not recorded as revoked.
var errShutdown = errors.New("worker shutting down")

// execute runs r (started by the dispatcher, which holds its slot) and
// hands its outcome to the completer.
func (w *Worker) execute(r *run) {
	defer w.running.Done()
	if w.debug {
		w.taskLog(r.d.Envelope).WithField(logging.FieldAttempt, r.d.Envelope.Attempt).Debug("task started")
	}
	f := w.runHandler(r)
	// The slot is released before the delivery is settled, so the next
	// task starts while the completer batches this one's ack.
	w.comp.finishRun(f, w.slots)
}

// runHandler runs the handler and turns its outcome into a finish.
func (w *Worker) runHandler(r *run) finish {
	env, h := r.d.Envelope, r.h
	st := w.taskState(env, result.Started, r.startedAt)
	st.StartedAt = r.startedAt
	f := finish{run: r, hasState: true}
	limit := h.Options.TimeLimit
	if env.TimeLimit > 0 {
		limit = env.TimeLimit
	}
	ctx, cancel := withTimeLimit(r.ctx, limit)
	defer cancel()
	var value any
	var err error
	if h.Options.Isolated {
		out := w.pool.run(ctx, r, limit)
		if out.value != nil {
			value = json.RawMessage(out.value)
		}
		err = out.err
		if p := math.Float64frombits(r.progress.Load()); p != 0 {
			st.Progress = p
		}
	} else {
		tc := &taskContext{ctx: ctx, run: r, w: w}
		value, err = safeCall(h.Run, tc, env.Args)
		if p, data := tc.lastProgress(); p != 0 || data != nil {
			st.Progress, st.ProgressData = p, data
		}
	}
	finished := w.cfg.Now()
	st.FinishedAt, st.UpdatedAt = finished, finished
	w.metrics.observe(env.Name, finished.Sub(r.startedAt))
	w.counters.processed.Add(1)
	// Built only when a line is written: the success path logs at debug.
	logf := func() logrus.FieldLogger { return w.taskLog(env).WithField(logging.FieldAttempt, env.Attempt) }

	o := outcome{started: true, err: err, attempt: env.Attempt, maxRetries: h.Options.MaxRetries}
	if env.MaxRetries >= 0 {
		o.maxRetries = env.MaxRetries
	}
	// Cancelled by the worker (shutdown, a fence) or a terminate revoke?
	var re *revokedError
	if cause := context.Cause(r.ctx); cause != nil && r.ctx.Err() != nil {
		o.leaseLost = errors.Is(cause, ErrLeaseLost)
		o.shutdown = errors.Is(cause, errShutdown)
		o.terminated = errors.As(cause, &re)
	}
	if err == nil {
		st.Result, o.resultErr = marshalResult(value)
		err = o.resultErr
	}
	var e revoke.Entry
	if err != nil {
		e, o.revoked = w.revokedEntry(env.ID)
		if errors.Is(err, context.DeadlineExceeded) || (ctx.Err() != nil && r.ctx.Err() == nil) {
			err = withCause(ctx, err)
		}
	}
	switch decide(o) {
	case actHandBack:
		// No state is written: the task is queued again and the next
		// run's "started" replaces this one. Fenced (lease.go): handed
		// back in case the lease is still ours after all (the broker skips
		// it when another claim holds it).
		f.hasState = false
		f.action = broker.Requeue
		w.counters.processed.Add(-1)
		if o.leaseLost {
			logf().WithError(err).Warn("task stopped: its lease was lost; it runs again on whichever worker claims it")
		} else {
			logf().Warn("task interrupted by shutdown; handed back without counting an attempt")
		}
	case actSucceed:
		st.State = result.Succeeded
		w.counters.succeeded.Add(1)
		if w.debug {
			logf().WithField(logging.FieldDuration, finished.Sub(r.startedAt).String()).Debug("task succeeded")
		}
	case actRevoke:
		st.State = result.Revoked
		w.counters.revoked.Add(1)
		if o.terminated && o.err != nil {
			st.Reason, st.RevokedBy = re.reason, re.by
			logf().Info("task terminated by revoke")
		} else {
			st.Error, st.Reason, st.RevokedBy = err.Error(), e.Reason, e.RequestedBy
			logf().WithError(err).Info("task failed after it was revoked; not retried")
		}
	case actRetry:
		delay := Backoff(env.Attempt, h.Options.RetryBackoff, h.Options.RetryBackoffMax)
		next := env
		next.Attempt++
		// This worker knows the name: an unknown-task TTL started by an
		// older worker no longer applies (unknown.go).
		next.Headers = withoutUnknownHeaders(env.Headers)
		st.State, st.Error, st.NextRetryAt = result.Retried, err.Error(), finished.Add(delay)
		f.action, f.retryEnv, f.delay = broker.Retry, next, delay
		w.counters.retried.Add(1)
		logf().WithError(err).WithField(logging.FieldDelay, delay.String()).Warn("task failed; will retry")
	default: // actDeadLetter
		st.State, st.Error = result.Failed, err.Error()
		f.action, f.reason = broker.DeadLetter, st.Error
		w.counters.failed.Add(1)
		logf().WithError(err).Error("task failed")
	}
	f.state = st
	return f
}

// taskState is env's state record on this worker, at now.
func (w *Worker) taskState(env broker.Envelope, state result.State, now time.Time) result.TaskState {
	return result.TaskState{ID: env.ID, Name: env.Name, Queue: env.Queue, State: state, Attempt: env.Attempt,
		Worker: w.id, EnqueuedAt: env.CreatedAt, UpdatedAt: now}
}

// taskLog is the logger of lines about env.
func (w *Worker) taskLog(env broker.Envelope) logrus.FieldLogger {
	return w.log.WithFields(logrus.Fields{logging.FieldTask: env.ID, logging.FieldTaskName: env.Name})
}

// withTimeLimit returns ctx ending after limit (if positive), with a
// cause that says so.
func withTimeLimit(ctx context.Context, limit time.Duration) (context.Context, context.CancelFunc) {
	if limit <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeoutCause(ctx, limit, fmt.Errorf("time limit %s exceeded", limit))
}

// withCause prefixes err with why ctx ended (a time limit), unless err
// says so already.
func withCause(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(err, c) {
		return fmt.Errorf("%w: %v", c, err)
	}
	return err
}

// progressData checks the arguments of a Progress call and marshals its
// data.
func progressData(p float64, data any) (json.RawMessage, error) {
	if p < 0 || p > 1 {
		return nil, fmt.Errorf("progress %v out of range [0, 1]", p)
	}
	if data == nil {
		return nil, nil
	}
	b, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("progress data is not JSON-marshalable: %w", err)
	}
	return b, nil
}

func safeCall(fn HandlerFunc, tc TaskContext, args json.RawMessage) (v any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("handler panicked: %v\n%s", p, debug.Stack())
		}
	}()
	return fn(tc, args)
}

func marshalResult(v any) (json.RawMessage, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		if len(x) == 0 {
			return nil, nil
		}
		if !json.Valid(x) {
			return nil, errors.New("handler returned a json.RawMessage that is not valid JSON")
		}
		return x, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("result is not JSON-marshalable: %w", err)
	}
	return b, nil
}

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
	raw, err := progressData(p, data)
	if err != nil {
		return err
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

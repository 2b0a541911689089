package worker

import (
	"errors"
	"math/rand/v2"
	"time"
)

// action is what to do with a delivery: decide's answer.
type action int

const (
	actRun             action = iota + 1 // start the handler (before the start only)
	actSucceed                           // record it succeeded, ack
	actRevoke                            // record it revoked, ack: a revoked task never runs (again)
	actRetry                             // record it retried, nack to run again after a backoff, one attempt more
	actDeadLetter                        // record it failed, dead-letter it with the error as reason
	actHandBack                          // no state, requeue at once without counting an attempt
	actHandBackUnknown                   // no state, hand back after a backoff for a worker that knows the name (unknown.go)
)

// outcome is what decide needs to know about a delivery, either before its
// handler starts (started false) or after the handler returned.
type outcome struct {
	started bool

	leaseLost bool // the lease was fenced (lease.go)
	revoked   bool // the revoke cache holds the task

	// Before the start.
	holdBack   bool          // the worker is shutting down, or the task's queue is paused
	unknown    bool          // no handler here knows the task's name
	unknownFor time.Duration // since a worker first found the name unknown
	unknownTTL time.Duration // Config.UnknownTaskTTL

	// After the run.
	err        error // the handler's error
	resultErr  error // the handler succeeded but its result is not JSON
	shutdown   bool  // a soft or hard shutdown cancelled the task's context
	terminated bool  // a terminate revoke cancelled the task's context
	attempt    int
	maxRetries int
}

// decide returns what to do with a delivery. It does no I/O.
func decide(o outcome) action {
	if !o.started {
		switch {
		case o.leaseLost: // redelivered elsewhere: running it would run it twice
			return actHandBack
		case o.revoked:
			return actRevoke
		case o.unknown && o.unknownFor >= o.unknownTTL:
			return actDeadLetter
		case o.unknown:
			return actHandBackUnknown
		case o.holdBack:
			return actHandBack
		}
		return actRun
	}
	failure := o.err
	switch {
	case o.err != nil && (o.leaseLost || o.shutdown):
		// Stopped by the worker: the task runs again, no attempt counted.
		// A handler that still succeeded keeps its result.
		return actHandBack
	case o.err != nil && o.terminated:
		return actRevoke
	case o.err == nil && o.resultErr == nil:
		return actSucceed
	case o.err == nil:
		failure = o.resultErr
	}
	switch {
	case o.revoked: // failed after it was revoked: not retried
		return actRevoke
	case o.attempt < o.maxRetries && !errors.Is(failure, ErrNoRetry):
		return actRetry
	}
	return actDeadLetter
}

// ErrNoRetry marks a handler error as permanent: the task fails at once,
// whatever its retry budget. Wrap it: fmt.Errorf("bad input: %w", worker.ErrNoRetry).
var ErrNoRetry = errors.New("permanent failure")

// Backoff returns the delay before retry number attempt+1: base*2^attempt
// capped at max, with "equal jitter" (half fixed, half random) so retries
// of a burst spread out.
func Backoff(attempt int, base, max time.Duration) time.Duration {
	if attempt > 30 {
		attempt = 30
	}
	d := base << uint(attempt)
	if d <= 0 || d > max {
		d = max
	}
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(half)+1))
}

package worker

import (
	"fmt"
	"maps"
	"strconv"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/logging"
	"github.com/stemhq/stem/result"
)

// Tasks whose name this worker has no handler for
//
// During a rolling deploy a task of a new name can reach a worker that
// still runs the old code. Such a task is not this worker's to fail: it is
// handed back (a Retry nack that keeps the attempt count) with an
// exponential backoff from 1s to 1m, so a worker that knows the name
// claims it, and it is dead-lettered with the reason "unknown task" only
// once Config.UnknownTaskTTL has passed since a worker first saw it
// unknown. The envelope carries that moment and the number of hand-backs
// in two headers, so the TTL holds across workers. A worker that knows
// the name drops both headers when it retries the task, so the TTL of a
// later attempt starts when a worker first finds that attempt unknown.

// Envelope headers of a task handed back as unknown.
const (
	// HeaderUnknownSince is when a worker first found no handler for the
	// task (RFC 3339, UTC).
	HeaderUnknownSince = "stem-unknown-since"
	// HeaderUnknownHandbacks counts hand-backs for an unknown name.
	HeaderUnknownHandbacks = "stem-unknown-handbacks"
)

// ReasonUnknownTask is the dead-letter reason of a task no worker knew
// within Config.UnknownTaskTTL.
const ReasonUnknownTask = "unknown task"

// unknownLogEvery bounds how often the hand-back of one task name is
// logged (a deploy can hand back thousands of tasks a second).
const unknownLogEvery = 10 * time.Second

// unknownSince returns when a worker first found env's name unknown (now
// if none did yet) and how many times it was handed back since.
func unknownSince(env broker.Envelope, now time.Time) (since time.Time, handbacks int) {
	since = now
	if t, err := time.Parse(time.RFC3339Nano, env.Headers[HeaderUnknownSince]); err == nil && !t.After(now) {
		since = t
	}
	handbacks, _ = strconv.Atoi(env.Headers[HeaderUnknownHandbacks])
	return since, handbacks
}

// settleUnknown hands back, or dead-letters once its TTL passed (decide
// says which), a queued run whose task name no handler here knows.
func (w *Worker) settleUnknown(r *run, deadLetter bool) {
	if !r.state.CompareAndSwap(runQueued, runSettled) {
		return
	}
	env := r.d.Envelope
	now := w.cfg.Now()
	since, handbacks := unknownSince(env, now)
	if deadLetter {
		msg := fmt.Sprintf("%s: no worker had a handler for task %q within %s (first seen unknown at %s; last on worker %s)",
			ReasonUnknownTask, env.Name, w.cfg.UnknownTaskTTL, since.UTC().Format(time.RFC3339), w.id)
		st := w.taskState(env, result.Failed, now)
		st.Error, st.FinishedAt = msg, now
		w.counters.processed.Add(1)
		w.counters.failed.Add(1)
		w.taskLog(env).Error(msg)
		w.comp.send(finish{run: r, hasState: true, state: st, action: broker.DeadLetter, reason: msg})
		return
	}
	next := env
	next.Headers = make(map[string]string, len(env.Headers)+2)
	maps.Copy(next.Headers, env.Headers)
	next.Headers[HeaderUnknownSince] = since.UTC().Format(time.RFC3339Nano)
	next.Headers[HeaderUnknownHandbacks] = strconv.Itoa(handbacks + 1)
	delay := Backoff(handbacks, time.Second, time.Minute)
	if w.shouldLogUnknown(env.Name, now) {
		w.taskLog(env).WithField(logging.FieldDelay, delay.String()).
			Warnf("no handler for task %q on this worker; handed back for a worker that knows it (no attempt counted; dead-lettered %s after it was first seen unknown)", env.Name, w.cfg.UnknownTaskTTL)
	}
	w.comp.send(finish{run: r, action: broker.Retry, retryEnv: next, delay: delay})
}

// withoutUnknownHeaders returns h without the unknown-task headers (a
// copy when it had them): a worker that knows the task retries it, so a
// later attempt that reaches an old worker starts a new TTL.
func withoutUnknownHeaders(h map[string]string) map[string]string {
	_, a := h[HeaderUnknownSince]
	_, b := h[HeaderUnknownHandbacks]
	if !a && !b {
		return h
	}
	h = maps.Clone(h)
	delete(h, HeaderUnknownSince)
	delete(h, HeaderUnknownHandbacks)
	if len(h) == 0 {
		return nil
	}
	return h
}

// shouldLogUnknown reports whether a hand-back of name is to be logged
// now: at most once per unknownLogEvery per name.
func (w *Worker) shouldLogUnknown(name string, now time.Time) bool {
	w.unknownMu.Lock()
	defer w.unknownMu.Unlock()
	if last, ok := w.unknownLogged[name]; ok && now.Sub(last) < unknownLogEvery {
		return false
	}
	w.unknownLogged[name] = now
	return true
}

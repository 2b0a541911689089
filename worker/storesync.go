package worker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/logging"
)

// syncControlState reads the revoke store (pruning expired entries and
// trimming it to the cap) and the pause store. It returns the first read
// that failed; the periodic resync logs it and retries at the next tick.
func (w *Worker) syncControlState(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var errRevokes, errPauses error
	if w.cfg.Revokes != nil {
		errRevokes = w.syncRevokes(ctx)
	}
	if w.cfg.Pauses != nil {
		errPauses = w.syncPauses(ctx)
	}
	return errors.Join(errRevokes, errPauses)
}

func (w *Worker) syncRevokes(ctx context.Context) error {
	s, ns := w.cfg.Revokes, w.cfg.Namespace
	if _, err := s.Prune(ctx, ns, w.cfg.Now()); err != nil {
		w.log.WithError(err).Warn("could not prune expired revokes")
	}
	if n, err := s.Trim(ctx, ns, w.cfg.RevokeMaxEntries); err != nil {
		w.log.WithError(err).Warn("could not trim the revoke store to its cap")
	} else if n > 0 {
		w.log.WithFields(logrus.Fields{"dropped": n, "cap": w.cfg.RevokeMaxEntries}).Warn("revoke store over its cap: the oldest revokes were dropped")
	}
	entries, err := s.List(ctx, ns)
	if err != nil {
		return fmt.Errorf("read the revoke store %s: %w", shownURL(w.cfg.RevokeStoreURL), err)
	}
	w.applyRevokes(entries, true)
	return nil
}

// syncPauses reads the pause store and applies the pauses whose scope
// designates this worker (and, with a signing key, that verify).
func (w *Worker) syncPauses(ctx context.Context) error {
	ps, err := w.cfg.Pauses.Pauses(ctx, w.cfg.Namespace)
	if err != nil {
		return fmt.Errorf("read the pause store %s: %w", shownURL(w.cfg.PauseStoreURL), err)
	}
	key := w.cfg.SigningKey
	m := map[string]bool{}
	var status []control.PauseStatus
	for _, p := range ps {
		if !p.AppliesTo(w.id, w.cfg.Node) {
			continue
		}
		st := control.PauseStatus{Queue: p.Queue, Scope: p.Worker, PausedAt: p.PausedAt, RequestedBy: p.RequestedBy}
		switch {
		case len(key) > 0 && p.Verify(key) != nil:
			st.Why = "ignored: " + whyIgnored("pauses", p.Sig)
			w.noteIgnored("pause|"+p.Worker+"|"+p.Queue+"|"+p.Sig,
				logrus.Fields{"queue": p.Queue, "scope": p.Worker, "requestedBy": p.RequestedBy, "why": st.Why},
				"ignoring a pause record")
		case p.Worker == "":
			st.Applied, st.Why = true, "paused for every worker of the namespace"
			m[p.Queue] = true
		default:
			st.Applied, st.Why = true, "paused for this worker ("+p.Worker+")"
			m[p.Queue] = true
		}
		status = append(status, st)
	}
	w.pauses.mu.Lock()
	w.pauses.status = status
	w.pauses.mu.Unlock()
	old := *w.pauses.queues.Load()
	if !maps.Equal(old, m) {
		w.pauses.queues.Store(&m)
		w.log.WithField("paused", slices.Sorted(maps.Keys(m))).Info("paused queues loaded")
	}
	return nil
}

// shownURL is a store URL for a log line: the password redacted, or a
// placeholder when the caller did not say.
func shownURL(u string) string {
	if u == "" {
		return "(URL not configured)"
	}
	return stem.RedactURL(u)
}

// loadControlState reads the revoke and pause stores before the first
// claim, retrying with backoff (ControlRetry, doubling up to 10s) and
// logging each failure, until both were read. It returns false when a
// shutdown (ctx done or Shutdown) came first.
func (w *Worker) loadControlState(ctx context.Context) bool {
	backoff := w.cfg.ControlRetry
	for attempt := 1; ; attempt++ {
		err := w.syncControlState(ctx)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		w.log.WithError(err).WithFields(logrus.Fields{"attempt": attempt, "retryIn": backoff.String()}).
			Warn("cannot read the control stores; not claiming tasks until they are read")
		select {
		case <-ctx.Done():
			return false
		case m := <-w.modeCh:
			w.log.WithField(logging.FieldMode, m.String()).Info("shutdown requested before the control stores were read")
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// resyncControlState re-reads revokes and pauses every RevokeSync, so a
// missed broadcast heals.
func (w *Worker) resyncControlState(ctx context.Context) {
	if w.cfg.Revokes == nil && w.cfg.Pauses == nil {
		return
	}
	every(ctx, w.cfg.RevokeSync, func() {
		if err := w.syncControlState(ctx); err != nil {
			w.log.WithError(err).Warn("could not re-read the control stores; will retry")
		}
	})
}

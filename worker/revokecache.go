package worker

import (
	"cmp"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/logging"
)

// revokeCache is the worker's copy of the revokes of its namespace, and the
// revoke records it refused.
type revokeCache struct {
	mu      sync.Mutex
	entries map[string]revoke.Entry // by task id
	// ignored: revoke records refused, by task id.
	ignored map[string]control.IgnoredRevoke
	// logged: records (revokes and pauses) already reported as ignored
	// (each is logged once).
	logged map[string]bool
}

// noteIgnored reports a refused record once per record and per worker
// (key identifies the record, signature included).
func (w *Worker) noteIgnored(key string, fields logrus.Fields, msg string) {
	c := &w.revokes
	c.mu.Lock()
	first := !c.logged[key]
	if first {
		if len(c.logged) >= 2*w.cfg.RevokeMaxEntries {
			clear(c.logged) // bounded: at worst a record is reported again
		}
		c.logged[key] = true
	}
	c.mu.Unlock()
	if first {
		w.log.WithFields(fields).Warn(msg)
	}
}

// ApplyRevokes adds entries of this worker's namespace to the revoke cache
// (a higher version replaces a lower one) and terminates running tasks
// whose entry asks for it. With a signing key, entries whose signature is
// missing or invalid are not applied: they are logged once and listed by
// IgnoredRevokes. The cache keeps at most the revoke cap (newest kept).
// The log line at INFO carries counts; the task ids are at DEBUG.
func (w *Worker) ApplyRevokes(entries []revoke.Entry) control.RevokeData {
	return w.applyRevokes(entries, false)
}

func (w *Worker) applyRevokes(entries []revoke.Entry, fromSync bool) control.RevokeData {
	var out control.RevokeData
	now := w.cfg.Now()
	terminate := map[string]revoke.Entry{}
	key := w.cfg.SigningKey
	var ignored []control.IgnoredRevoke
	added := 0
	w.revokes.mu.Lock()
	for _, e := range entries {
		if e.Namespace != w.cfg.Namespace || e.Expired(now) {
			continue
		}
		if len(key) > 0 {
			if err := e.Verify(key); err != nil {
				ignored = append(ignored, control.IgnoredRevoke{Entry: e, Why: whyIgnored("revokes", e.Sig)})
				continue
			}
		}
		if old, ok := w.revokes.entries[e.TaskID]; ok && old.Version >= e.Version {
			e = old
		} else {
			w.revokes.entries[e.TaskID] = e
			added++
		}
		out.Revoked = append(out.Revoked, e.TaskID)
		if e.Terminate {
			terminate[e.TaskID] = e
		}
	}
	trimmed := w.trimRevokeCacheLocked(now)
	cached := len(w.revokes.entries)
	w.revokes.mu.Unlock()
	w.recordIgnored(ignored, fromSync)
	if len(terminate) > 0 {
		w.out.each(func(r *run) {
			if e, ok := terminate[r.d.Envelope.ID]; ok && r.state.Load() == runRunning {
				r.cancel(&revokedError{reason: e.Reason, by: e.RequestedBy})
				out.Terminated = append(out.Terminated, e.TaskID)
			}
		})
	}
	sort.Strings(out.Revoked)
	sort.Strings(out.Terminated)
	fields := logrus.Fields{"new": added, "cached": cached, "terminated": len(out.Terminated), "ignored": len(ignored), "dropped": trimmed}
	if added > 0 || len(out.Terminated) > 0 || trimmed > 0 {
		w.log.WithFields(fields).Info("revokes applied")
	}
	w.log.WithFields(fields).WithFields(logrus.Fields{"tasks": out.Revoked, "terminatedTasks": out.Terminated}).Debug("revokes applied (ids)")
	return out
}

// trimRevokeCacheLocked drops expired entries and, past the cap, the
// oldest versions. w.revokes.mu is held. It returns how many it dropped.
func (w *Worker) trimRevokeCacheLocked(now time.Time) int {
	n := 0
	capN := w.cfg.RevokeMaxEntries
	m := w.revokes.entries
	if len(m) <= capN {
		return 0
	}
	all := make([]revoke.Entry, 0, len(m))
	for id, e := range m {
		if e.Expired(now) {
			delete(m, id)
			n++
			continue
		}
		all = append(all, e)
	}
	if len(all) > capN {
		slices.SortFunc(all, byVersion)
		for _, e := range all[:len(all)-capN] {
			delete(m, e.TaskID)
			n++
		}
	}
	return n
}

// recordIgnored remembers refused revoke records for inspect and logs each
// once. A sync replaces the set (the store is the source); a message adds.
func (w *Worker) recordIgnored(ignored []control.IgnoredRevoke, replace bool) {
	for _, ig := range ignored {
		e := ig.Entry
		w.noteIgnored("revoke|"+e.TaskID+"|"+strconv.FormatInt(e.Version, 10)+"|"+e.Sig,
			logrus.Fields{logging.FieldTask: e.TaskID, "version": e.Version, "requestedBy": e.RequestedBy, "why": ig.Why},
			"ignoring a revoke record: "+ig.Why)
	}
	c := &w.revokes
	c.mu.Lock()
	defer c.mu.Unlock()
	if replace || c.ignored == nil {
		c.ignored = map[string]control.IgnoredRevoke{}
	}
	for _, ig := range ignored {
		if len(c.ignored) >= w.cfg.RevokeMaxEntries {
			break
		}
		c.ignored[ig.Entry.TaskID] = ig
	}
}

// whyIgnored says why a record of kind ("revokes", "pauses") with
// signature sig was refused by a worker with a signing key.
func whyIgnored(kind, sig string) string {
	if sig != "" {
		return "signature invalid (another key, or the record was altered)"
	}
	return "unsigned (workers with STEM_CONTROL_SIGNING_KEY apply signed " + kind + " only)"
}

// IgnoredRevokes returns the revoke records this worker refused (unsigned
// or mis-signed while it has a signing key), sorted by task id.
func (w *Worker) IgnoredRevokes() []control.IgnoredRevoke {
	c := &w.revokes
	c.mu.Lock()
	out := slices.AppendSeq([]control.IgnoredRevoke{}, maps.Values(c.ignored))
	c.mu.Unlock()
	slices.SortFunc(out, func(a, b control.IgnoredRevoke) int { return strings.Compare(a.Entry.TaskID, b.Entry.TaskID) })
	return out
}

// RevokedEntries returns the revoke cache sorted by version.
func (w *Worker) RevokedEntries() []revoke.Entry {
	w.revokes.mu.Lock()
	out := slices.AppendSeq([]revoke.Entry{}, maps.Values(w.revokes.entries))
	w.revokes.mu.Unlock()
	slices.SortFunc(out, byVersion)
	return out
}

// byVersion orders revoke entries oldest first (by version, then task id).
func byVersion(a, b revoke.Entry) int {
	return cmp.Or(cmp.Compare(a.Version, b.Version), strings.Compare(a.TaskID, b.TaskID))
}

func (w *Worker) revokedEntry(id string) (revoke.Entry, bool) {
	w.revokes.mu.Lock()
	defer w.revokes.mu.Unlock()
	e, ok := w.revokes.entries[id]
	if ok && e.Expired(w.cfg.Now()) {
		delete(w.revokes.entries, id)
		return revoke.Entry{}, false
	}
	return e, ok
}

package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/logging"
	"github.com/stemhq/stem/result"
	"github.com/stemhq/stem/stemerr"
)

func (w *Worker) serveControl(sub broker.Subscription) {
	for msg := range sub.C() {
		w.handleControl(msg)
	}
}

func (w *Worker) handleControl(msg []byte) {
	req, err := control.Decode(msg)
	if err != nil {
		w.log.WithError(err).Warn("ignoring a malformed control request")
		if req.ReplyTo == "" {
			return
		}
	}
	rep := control.Reply{V: control.Version, Type: req.Type, RequestID: req.ID, Worker: w.id, Namespace: w.cfg.Namespace}
	var after func()
	if err == nil {
		err = w.admit(req)
		if err != nil {
			w.log.WithError(err).WithFields(logrus.Fields{"type": req.Type, "request": req.ID}).Warn("refused a control request")
		}
	}
	if err != nil {
		rep.Error = err.Error()
	} else {
		var data any
		data, after, err = w.control(req)
		if err != nil {
			rep.Error = err.Error()
		} else if data != nil {
			rep.Data, _ = json.Marshal(data)
		}
	}
	rep.SentAt = w.cfg.Now().UTC()
	if len(w.cfg.SigningKey) > 0 {
		rep.Sign(w.cfg.SigningKey)
	}
	b, _ := json.Marshal(rep)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if err := w.cfg.Control.Reply(ctx, w.cfg.Namespace, req.ReplyTo, b); err != nil {
		w.log.WithError(err).WithField("type", req.Type).Debug("control reply not delivered")
	}
	cancel()
	if after != nil {
		after()
	}
}

// maxSeenRequests bounds the replay window's memory: past it, signed
// requests are refused (ErrBusy) until older ids age out. Only requests
// that verified enter it, so only a holder of the key can fill it.
const maxSeenRequests = 10000

// admit decides whether a decoded request may run. Always: it must be for
// this namespace and, if targeted, for this worker. With a signing key
// also: a version 2 signature over the whole request, a sent time within
// MaxAge of now either way, and an id not accepted before within that
// window.
func (w *Worker) admit(req control.Request) error {
	if req.Namespace != "" && req.Namespace != w.cfg.Namespace {
		return fmt.Errorf("%w: %q, this worker serves %q", control.ErrWrongNamespace, req.Namespace, w.cfg.Namespace)
	}
	if req.Target != "" && req.Target != w.id {
		return fmt.Errorf("%w: %q", control.ErrWrongTarget, req.Target)
	}
	key := w.cfg.SigningKey
	if len(key) == 0 {
		return nil
	}
	if err := req.Verify(key); err != nil {
		return err
	}
	if req.Namespace == "" {
		return control.ErrWrongNamespace
	}
	maxAge := w.maxAge()
	now := w.cfg.Now()
	if d := now.Sub(req.SentAt); d > maxAge || d < -maxAge {
		return fmt.Errorf("%w: sent %s, now %s", control.ErrStale, req.SentAt.UTC().Format(time.RFC3339Nano), now.UTC().Format(time.RFC3339Nano))
	}
	c := &w.ctl
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = map[string]time.Time{}
	}
	if _, dup := c.seen[req.ID]; dup {
		return control.ErrReplayed
	}
	if len(c.seen) >= maxSeenRequests {
		for id, until := range c.seen {
			if now.After(until) {
				delete(c.seen, id)
			}
		}
		if len(c.seen) >= maxSeenRequests {
			return control.ErrBusy
		}
	}
	// Remembered until the request could no longer pass the age check.
	c.seen[req.ID] = req.SentAt.Add(maxAge)
	return nil
}

func (w *Worker) maxAge() time.Duration {
	if w.cfg.MaxAge > 0 {
		return w.cfg.MaxAge
	}
	return control.DefaultMaxAge
}

func (w *Worker) revokeCap() int {
	if w.cfg.RevokeMaxEntries > 0 {
		return w.cfg.RevokeMaxEntries
	}
	return revoke.DefaultMaxEntries
}

// controlState is the worker's control-plane memory besides the revoke
// cache: the replay window, the records it ignores, why queues are
// paused. It lives in Worker.ctl; its maps are made on first use.
type controlState struct {
	mu sync.Mutex
	// seen: ids of accepted signed requests, until when to remember them.
	seen map[string]time.Time
	// ignored: revoke records refused, by task id.
	ignored map[string]control.IgnoredRevoke
	// logged: records already reported as ignored (each is logged once).
	logged map[string]bool
	// pauses: the last pause-store read, as StatsData shows it.
	pauses []control.PauseStatus
}

// noteIgnored reports a refused record once per record and per worker
// (key identifies the record, signature included).
func (w *Worker) noteIgnored(key string, fields logrus.Fields, msg string) {
	c := &w.ctl
	c.mu.Lock()
	if c.logged == nil {
		c.logged = map[string]bool{}
	}
	first := !c.logged[key]
	if first {
		if len(c.logged) >= 2*w.revokeCap() {
			clear(c.logged) // bounded: at worst a record is reported again
		}
		c.logged[key] = true
	}
	c.mu.Unlock()
	if first {
		w.log.WithFields(fields).Warn(msg)
	}
}

// control executes one request. after, if set, runs once the reply is
// sent (a shutdown replies first).
func (w *Worker) control(req control.Request) (data any, after func(), err error) {
	switch req.Type {
	case control.TypePing:
		return control.PingData{State: w.Info().State, UptimeSeconds: w.uptime()}, nil, nil
	case control.TypeInspect:
		var a control.InspectArgs
		if err := decodeArgs(req, &a); err != nil {
			return nil, nil, err
		}
		return w.inspect(a.IncludeRevoked), nil, nil
	case control.TypeStats:
		return w.controlStats(), nil, nil
	case control.TypeRevoke:
		var a control.RevokeArgs
		if err := decodeArgs(req, &a); err != nil {
			return nil, nil, err
		}
		return w.ApplyRevokes(a.Entries), nil, nil
	case control.TypeShutdown:
		var a control.ShutdownArgs
		if err := decodeArgs(req, &a); err != nil {
			return nil, nil, err
		}
		m, err := ParseMode(a.Mode)
		if err != nil {
			return nil, nil, err
		}
		w.log.WithField(logging.FieldMode, m.String()).Info("shutdown requested over the control plane")
		return control.PingData{State: "draining", UptimeSeconds: w.uptime()}, func() { w.Shutdown(m) }, nil
	case control.TypeAutoscale:
		var a control.AutoscaleArgs
		if err := decodeArgs(req, &a); err != nil {
			return nil, nil, err
		}
		if !w.scaler.config().Enabled {
			return nil, nil, fmt.Errorf("autoscaling is off on this worker (start it with --autoscale)")
		}
		if err := w.scaler.setBounds(a.Min, a.Max); err != nil {
			return nil, nil, err
		}
		return w.controlStats(), nil, nil
	case control.TypePause, control.TypeResume:
		var a control.QueuesArgs
		if err := decodeArgs(req, &a); err != nil {
			return nil, nil, err
		}
		if w.cfg.Pauses != nil {
			// The CLI stored the pause (with its scope and signature)
			// first: the store says what applies to this worker.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := w.syncPauses(ctx)
			cancel()
			if err != nil {
				return nil, nil, fmt.Errorf("%s: read the pause store: %v", req.Type, err)
			}
		} else {
			w.setPaused(a.Queues, req.Type == control.TypePause)
		}
		return w.controlStats(), nil, nil
	}
	return nil, nil, fmt.Errorf("unknown control request type %q", req.Type)
}

func decodeArgs(req control.Request, v any) error {
	if len(req.Args) == 0 {
		return nil
	}
	if err := json.Unmarshal(req.Args, v); err != nil {
		return fmt.Errorf("%s: bad arguments: %v", req.Type, err)
	}
	return nil
}

func (w *Worker) uptime() float64 {
	if w.startedAt.IsZero() {
		return 0
	}
	return w.cfg.Now().Sub(w.startedAt).Seconds()
}

func (w *Worker) inspect(includeRevoked bool) control.InspectData {
	now := w.cfg.Now()
	w.mu.Lock()
	tasks := make([]control.InFlightTask, 0, len(w.outstanding))
	for _, r := range w.outstanding {
		env := r.d.Envelope
		t := control.InFlightTask{ID: env.ID, Name: env.Name, Queue: env.Queue, Attempt: env.Attempt, State: "prefetched"}
		switch r.state.Load() {
		case runRunning:
			t.State = "running"
			t.StartedAt = r.startedAt
			t.RuntimeSeconds = now.Sub(r.startedAt).Seconds()
			t.LastCheckpoint = time.Unix(0, r.lastBeat.Load()).UTC()
			t.Progress = math.Float64frombits(r.progress.Load())
		case runSettled:
			continue
		}
		tasks = append(tasks, t)
	}
	w.mu.Unlock()
	sort.Slice(tasks, func(i, j int) bool {
		if tasks[i].State != tasks[j].State {
			return tasks[i].State == "running"
		}
		return tasks[i].ID < tasks[j].ID
	})
	out := control.InspectData{Tasks: tasks}
	if includeRevoked {
		out.Revoked = w.RevokedEntries()
		out.Ignored = w.IgnoredRevokes()
	}
	return out
}

func (w *Worker) controlStats() control.StatsData {
	st := w.Stats()
	depth := map[string]int64{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, q := range w.cfg.Queues {
		if n, err := w.cfg.Broker.PendingCount(ctx, q); err == nil {
			depth[q] = n
		} else {
			depth[q] = -1
		}
	}
	var durability *broker.Durability
	if dr, ok := w.cfg.Broker.(broker.DurabilityReporter); ok {
		if d, err := dr.Durability(ctx); err == nil {
			durability = &d
		}
	}
	broadcasts := append([]string{}, w.cfg.Broadcasts...)
	minC, maxC := w.bounds()
	return control.StatsData{
		Worker: w.id, Node: w.cfg.Node, Host: w.cfg.Hostname, PID: os.Getpid(), Version: w.cfg.Version,
		Queues: w.cfg.Queues, Paused: w.PausedQueues(), Pauses: w.pauseStatus(), Broadcasts: broadcasts,
		InFlight: st.InFlight, Prefetched: st.Outstanding - st.InFlight,
		ActiveConcurrency: st.ActiveConcurrency, MinConcurrency: minC, MaxConcurrency: maxC,
		Autoscale: w.scaler.config().Enabled, Prefetch: st.Prefetch, QueueDepth: depth, Counters: st.Counters,
		ChildRecycles: w.pool.Recycles(), BrokerDurability: durability,
		StartedAt: st.StartedAt, UptimeSeconds: w.uptime(),
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
	w.rmu.Lock()
	for _, e := range entries {
		if e.Namespace != w.cfg.Namespace || e.Expired(now) {
			continue
		}
		if len(key) > 0 {
			if err := e.Verify(key); err != nil {
				why := "unsigned (workers with STEM_CONTROL_SIGNING_KEY apply signed revokes only)"
				if e.Sig != "" {
					why = "signature invalid (another key, or the record was altered)"
				}
				ignored = append(ignored, control.IgnoredRevoke{Entry: e, Why: why})
				continue
			}
		}
		if old, ok := w.revokes[e.TaskID]; ok && old.Version >= e.Version {
			e = old
		} else {
			w.revokes[e.TaskID] = e
			added++
		}
		out.Revoked = append(out.Revoked, e.TaskID)
		if e.Terminate {
			terminate[e.TaskID] = e
		}
	}
	trimmed := w.trimRevokeCacheLocked(now)
	w.rmu.Unlock()
	w.recordIgnored(ignored, fromSync)
	if len(terminate) > 0 {
		w.mu.Lock()
		for _, r := range w.outstanding {
			if e, ok := terminate[r.d.Envelope.ID]; ok && r.state.Load() == runRunning {
				r.cancel(&revokedError{reason: e.Reason, by: e.RequestedBy})
				out.Terminated = append(out.Terminated, e.TaskID)
			}
		}
		w.mu.Unlock()
	}
	sort.Strings(out.Revoked)
	sort.Strings(out.Terminated)
	fields := logrus.Fields{"new": added, "cached": w.revokeCount(), "terminated": len(out.Terminated), "ignored": len(ignored), "dropped": trimmed}
	if added > 0 || len(out.Terminated) > 0 || trimmed > 0 {
		w.log.WithFields(fields).Info("revokes applied")
	}
	w.log.WithFields(fields).WithFields(logrus.Fields{"tasks": out.Revoked, "terminatedTasks": out.Terminated}).Debug("revokes applied (ids)")
	return out
}

// trimRevokeCacheLocked drops expired entries and, past the cap, the
// oldest versions. w.rmu is held. It returns how many it dropped.
func (w *Worker) trimRevokeCacheLocked(now time.Time) int {
	n := 0
	capN := w.revokeCap()
	if len(w.revokes) <= capN {
		return 0
	}
	all := make([]revoke.Entry, 0, len(w.revokes))
	for id, e := range w.revokes {
		if e.Expired(now) {
			delete(w.revokes, id)
			n++
			continue
		}
		all = append(all, e)
	}
	if len(all) > capN {
		sort.Slice(all, func(i, j int) bool {
			if all[i].Version != all[j].Version {
				return all[i].Version < all[j].Version
			}
			return all[i].TaskID < all[j].TaskID
		})
		for _, e := range all[:len(all)-capN] {
			delete(w.revokes, e.TaskID)
			n++
		}
	}
	return n
}

func (w *Worker) revokeCount() int {
	w.rmu.Lock()
	defer w.rmu.Unlock()
	return len(w.revokes)
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
	c := &w.ctl
	c.mu.Lock()
	defer c.mu.Unlock()
	if replace || c.ignored == nil {
		c.ignored = map[string]control.IgnoredRevoke{}
	}
	for _, ig := range ignored {
		if len(c.ignored) >= w.revokeCap() {
			break
		}
		c.ignored[ig.Entry.TaskID] = ig
	}
}

// IgnoredRevokes returns the revoke records this worker refused (unsigned
// or mis-signed while it has a signing key), sorted by task id.
func (w *Worker) IgnoredRevokes() []control.IgnoredRevoke {
	c := &w.ctl
	c.mu.Lock()
	out := make([]control.IgnoredRevoke, 0, len(c.ignored))
	for _, ig := range c.ignored {
		out = append(out, ig)
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Entry.TaskID < out[j].Entry.TaskID })
	return out
}

// RevokedEntries returns the revoke cache sorted by version.
func (w *Worker) RevokedEntries() []revoke.Entry {
	w.rmu.Lock()
	out := make([]revoke.Entry, 0, len(w.revokes))
	for _, e := range w.revokes {
		out = append(out, e)
	}
	w.rmu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Version != out[j].Version {
			return out[i].Version < out[j].Version
		}
		return out[i].TaskID < out[j].TaskID
	})
	return out
}

func (w *Worker) revokedEntry(id string) (revoke.Entry, bool) {
	w.rmu.Lock()
	defer w.rmu.Unlock()
	if len(w.revokes) == 0 {
		return revoke.Entry{}, false
	}
	e, ok := w.revokes[id]
	if ok && e.Expired(w.cfg.Now()) {
		delete(w.revokes, id)
		return revoke.Entry{}, false
	}
	return e, ok
}

// settleRevoked records a claimed but never started task as revoked and
// acks it: a revoked task never runs.
func (w *Worker) settleRevoked(r *run, e revoke.Entry) {
	if !r.state.CompareAndSwap(runQueued, runSettled) {
		return
	}
	env := r.d.Envelope
	now := w.cfg.Now()
	w.counters.revoked.Add(1)
	w.log.WithFields(logrus.Fields{logging.FieldTask: env.ID, logging.FieldTaskName: env.Name}).Info("task revoked; not run")
	w.done <- finish{run: r, hasState: true, state: result.TaskState{
		ID: env.ID, Name: env.Name, Queue: env.Queue, State: result.Revoked, Attempt: env.Attempt,
		Worker: w.id, EnqueuedAt: env.CreatedAt, FinishedAt: now, UpdatedAt: now,
		Reason: e.Reason, RevokedBy: e.RequestedBy,
	}}
}

// PausedQueues returns the paused queues this worker consumes, sorted.
func (w *Worker) PausedQueues() []string {
	m := *w.paused.Load()
	out := []string{}
	for _, q := range w.cfg.Queues {
		if m[q] {
			out = append(out, q)
		}
	}
	sort.Strings(out)
	return out
}

func (w *Worker) setPaused(queues []string, paused bool) {
	old := *w.paused.Load()
	m := make(map[string]bool, len(old)+len(queues))
	for k, v := range old {
		m[k] = v
	}
	for _, q := range queues {
		if paused {
			m[q] = true
		} else {
			delete(m, q)
		}
	}
	w.paused.Store(&m)
	verb := "resumed"
	if paused {
		verb = "paused"
	}
	w.log.WithField("queues", queues).Info("queues " + verb)
}

// activeQueues are the consumed queues that are not paused, in priority
// order.
// queuePaused reports whether this worker has queue paused now.
func (w *Worker) queuePaused(queue string) bool {
	m := *w.paused.Load()
	return len(m) > 0 && m[queue]
}

func (w *Worker) activeQueues() []string {
	m := *w.paused.Load()
	if len(m) == 0 {
		return w.cfg.Queues
	}
	out := make([]string, 0, len(w.cfg.Queues))
	for _, q := range w.cfg.Queues {
		if !m[q] {
			out = append(out, q)
		}
	}
	return out
}

// syncControlState reads the revoke store (pruning expired entries and
// trimming it to the cap) and the pause store. It returns the first read
// that failed; the periodic resync logs it and retries at the next tick.
func (w *Worker) syncControlState(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var errs []error
	if w.cfg.Revokes != nil {
		if err := w.syncRevokes(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if w.cfg.Pauses != nil {
		if err := w.syncPauses(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (w *Worker) syncRevokes(ctx context.Context) error {
	s, ns := w.cfg.Revokes, w.cfg.Namespace
	if _, err := s.Prune(ctx, ns, w.cfg.Now()); err != nil {
		w.log.WithError(err).Warn("could not prune expired revokes")
	}
	if n, err := s.Trim(ctx, ns, w.revokeCap()); err != nil {
		w.log.WithError(err).Warn("could not trim the revoke store to its cap")
	} else if n > 0 {
		w.log.WithFields(logrus.Fields{"dropped": n, "cap": w.revokeCap()}).Warn("revoke store over its cap: the oldest revokes were dropped")
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
			st.Why = "ignored: unsigned (workers with STEM_CONTROL_SIGNING_KEY apply signed pauses only)"
			if p.Sig != "" {
				st.Why = "ignored: signature invalid (another key, or the record was altered)"
			}
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
	c := &w.ctl
	c.mu.Lock()
	c.pauses = status
	c.mu.Unlock()
	old := *w.paused.Load()
	if !sameSet(old, m) {
		w.paused.Store(&m)
		qs := make([]string, 0, len(m))
		for q := range m {
			qs = append(qs, q)
		}
		sort.Strings(qs)
		w.log.WithField("paused", qs).Info("paused queues loaded")
	}
	return nil
}

func (w *Worker) pauseStatus() []control.PauseStatus {
	c := &w.ctl
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]control.PauseStatus(nil), c.pauses...)
}

// shownURL is a store URL for a log line: the password redacted, or a
// placeholder when the caller did not say.
func shownURL(u string) string {
	if u == "" {
		return "(URL not configured)"
	}
	return stemerr.RedactURL(u)
}

// loadControlState reads the revoke and pause stores before the first
// claim, retrying with backoff (ControlRetry, doubling up to 10s) and
// logging each failure, until both were read. It returns false when a
// shutdown (ctx done or Shutdown) came first.
func (w *Worker) loadControlState(ctx context.Context) bool {
	backoff := w.cfg.ControlRetry
	if backoff <= 0 {
		backoff = 100 * time.Millisecond
	}
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
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case m := <-w.modeCh:
			t.Stop()
			w.log.WithField(logging.FieldMode, m.String()).Info("shutdown requested before the control stores were read")
			return false
		case <-t.C:
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// stopBeforeStart ends a Run that stopped before consuming: nothing was
// claimed, so there is nothing to hand back.
func (w *Worker) stopBeforeStart() error {
	close(w.stoppingCh)
	w.pool.close()
	w.log.Info("worker stopped before it consumed")
	return nil
}

func sameSet(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// resyncControlState re-reads revokes and pauses every RevokeSync, so a
// missed broadcast heals.
func (w *Worker) resyncControlState(ctx context.Context) {
	if w.cfg.Revokes == nil && w.cfg.Pauses == nil {
		return
	}
	t := time.NewTicker(w.cfg.RevokeSync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := w.syncControlState(ctx); err != nil {
				w.log.WithError(err).Warn("could not re-read the control stores; will retry")
			}
		}
	}
}

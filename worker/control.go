package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/logging"
	"github.com/stemhq/stem/result"
)

// Control request arguments and reply data. These are the documented,
// stable JSON schemas of `stem worker ... --json` (see docs/control.md).

// InspectArgs are the arguments of an inspect request.
type InspectArgs struct {
	IncludeRevoked bool `json:"includeRevoked"`
}

// InFlightTask is one task a worker holds.
type InFlightTask struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Queue   string `json:"queue"`
	Attempt int    `json:"attempt"`
	// State is "running" or "prefetched" (claimed, waiting for a slot).
	State          string    `json:"state"`
	StartedAt      time.Time `json:"startedAt,omitzero"`
	RuntimeSeconds float64   `json:"runtimeSeconds"`
	// LastCheckpoint is the last Heartbeat/ExtendLease/Progress call.
	LastCheckpoint time.Time `json:"lastCheckpoint,omitzero"`
	Progress       float64   `json:"progress"`
}

// InspectData is a worker's inspect reply.
type InspectData struct {
	Tasks   []InFlightTask `json:"tasks"`
	Revoked []revoke.Entry `json:"revoked,omitempty"`
}

// StatsData is a worker's stats reply.
type StatsData struct {
	Worker            string           `json:"worker"`
	Node              string           `json:"node"`
	Host              string           `json:"host"`
	PID               int              `json:"pid"`
	Version           string           `json:"version,omitempty"`
	Queues            []string         `json:"queues"`
	Paused            []string         `json:"paused"`
	Broadcasts        []string         `json:"broadcasts"`
	InFlight          int              `json:"inFlight"`
	Prefetched        int              `json:"prefetched"`
	ActiveConcurrency int              `json:"activeConcurrency"`
	MinConcurrency    int              `json:"minConcurrency"`
	MaxConcurrency    int              `json:"maxConcurrency"`
	Autoscale         bool             `json:"autoscale"`
	Prefetch          int              `json:"prefetch"`
	QueueDepth        map[string]int64 `json:"queueDepth"`
	// ChildRecycles counts isolation children replaced, by reason.
	ChildRecycles map[string]int64 `json:"childRecycles"`
	Counters      Counters         `json:"counters"`
	StartedAt     time.Time        `json:"startedAt"`
	UptimeSeconds float64          `json:"uptimeSeconds"`
}

// RevokeArgs are the arguments of a revoke request.
type RevokeArgs struct {
	Entries []revoke.Entry `json:"entries"`
}

// RevokeData is a worker's revoke reply.
type RevokeData struct {
	// Revoked are the task ids now in the worker's revoke cache.
	Revoked []string `json:"revoked"`
	// Terminated are the running tasks the worker cancelled.
	Terminated []string `json:"terminated,omitempty"`
}

// AutoscaleArgs are the arguments of an autoscale request: new bounds.
type AutoscaleArgs struct {
	Min int `json:"min"`
	Max int `json:"max"`
}

// ShutdownArgs are the arguments of a shutdown request.
type ShutdownArgs struct {
	Mode string `json:"mode"`
}

// QueuesArgs are the arguments of pause and resume.
type QueuesArgs struct {
	Queues []string `json:"queues"`
}

// PingData is a worker's ping reply.
type PingData struct {
	State         string  `json:"state"`
	UptimeSeconds float64 `json:"uptimeSeconds"`
}

// serveControl answers control requests until sub is closed.
func (w *Worker) serveControl(sub control.Subscription) {
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
	rep := control.Reply{V: control.Version, Type: req.Type, RequestID: req.ID, Worker: w.id}
	var after func()
	switch {
	case err != nil:
		rep.Error = err.Error()
	case len(w.cfg.SigningKey) > 0 && req.Verify(w.cfg.SigningKey) != nil:
		rep.Error = control.ErrBadSignature.Error()
		w.log.WithField("type", req.Type).Warn("refused a control request with a missing or invalid signature")
	default:
		var data any
		data, after, err = w.control(req)
		if err != nil {
			rep.Error = err.Error()
		} else if data != nil {
			rep.Data, _ = json.Marshal(data)
		}
	}
	rep.SentAt = w.cfg.Now().UTC()
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

// control executes one request. after, if set, runs once the reply is
// sent (a shutdown replies first).
func (w *Worker) control(req control.Request) (data any, after func(), err error) {
	switch req.Type {
	case control.TypePing:
		return PingData{State: w.Info().State, UptimeSeconds: w.uptime()}, nil, nil
	case control.TypeInspect:
		var a InspectArgs
		if err := decodeArgs(req, &a); err != nil {
			return nil, nil, err
		}
		return w.inspect(a.IncludeRevoked), nil, nil
	case control.TypeStats:
		return w.controlStats(), nil, nil
	case control.TypeRevoke:
		var a RevokeArgs
		if err := decodeArgs(req, &a); err != nil {
			return nil, nil, err
		}
		return w.ApplyRevokes(a.Entries), nil, nil
	case control.TypeShutdown:
		var a ShutdownArgs
		if err := decodeArgs(req, &a); err != nil {
			return nil, nil, err
		}
		m, err := ParseMode(a.Mode)
		if err != nil {
			return nil, nil, err
		}
		w.log.WithField(logging.FieldMode, m.String()).Info("shutdown requested over the control plane")
		return PingData{State: "draining", UptimeSeconds: w.uptime()}, func() { w.Shutdown(m) }, nil
	case control.TypeAutoscale:
		var a AutoscaleArgs
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
		var a QueuesArgs
		if err := decodeArgs(req, &a); err != nil {
			return nil, nil, err
		}
		w.setPaused(a.Queues, req.Type == control.TypePause)
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

func (w *Worker) inspect(includeRevoked bool) InspectData {
	now := w.cfg.Now()
	w.mu.Lock()
	tasks := make([]InFlightTask, 0, len(w.outstanding))
	for _, r := range w.outstanding {
		env := r.d.Envelope
		t := InFlightTask{ID: env.ID, Name: env.Name, Queue: env.Queue, Attempt: env.Attempt, State: "prefetched"}
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
	out := InspectData{Tasks: tasks}
	if includeRevoked {
		out.Revoked = w.RevokedEntries()
	}
	return out
}

func (w *Worker) controlStats() StatsData {
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
	broadcasts := append([]string{}, w.cfg.Broadcasts...)
	minC, maxC := w.bounds()
	return StatsData{
		Worker: w.id, Node: w.cfg.Node, Host: w.cfg.Hostname, PID: os.Getpid(), Version: w.cfg.Version,
		Queues: w.cfg.Queues, Paused: w.PausedQueues(), Broadcasts: broadcasts,
		InFlight: st.InFlight, Prefetched: st.Outstanding - st.InFlight,
		ActiveConcurrency: st.ActiveConcurrency, MinConcurrency: minC, MaxConcurrency: maxC,
		Autoscale: w.scaler.config().Enabled, Prefetch: st.Prefetch, QueueDepth: depth, Counters: st.Counters,
		ChildRecycles: w.pool.Recycles(),
		StartedAt:     st.StartedAt, UptimeSeconds: w.uptime(),
	}
}

// ApplyRevokes adds entries of this worker's namespace to the revoke cache
// (a higher version replaces a lower one) and terminates running tasks
// whose entry asks for it.
func (w *Worker) ApplyRevokes(entries []revoke.Entry) RevokeData {
	var out RevokeData
	now := w.cfg.Now()
	terminate := map[string]revoke.Entry{}
	w.rmu.Lock()
	for _, e := range entries {
		if e.Namespace != w.cfg.Namespace || e.Expired(now) {
			continue
		}
		if old, ok := w.revokes[e.TaskID]; ok && old.Version >= e.Version {
			e = old
		} else {
			w.revokes[e.TaskID] = e
		}
		out.Revoked = append(out.Revoked, e.TaskID)
		if e.Terminate {
			terminate[e.TaskID] = e
		}
	}
	w.rmu.Unlock()
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
	if len(out.Revoked) > 0 {
		w.log.WithFields(logrus.Fields{"tasks": out.Revoked, "terminated": out.Terminated}).Info("revokes applied")
	}
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

// syncControlState reads the revoke store (pruning expired entries) and the
// pause store. Failures are logged; the next sync retries.
func (w *Worker) syncControlState(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if w.cfg.Revokes != nil {
		if _, err := w.cfg.Revokes.Prune(ctx, w.cfg.Namespace, w.cfg.Now()); err != nil {
			w.log.WithError(err).Warn("could not prune expired revokes")
		}
		entries, err := w.cfg.Revokes.List(ctx, w.cfg.Namespace)
		if err != nil {
			w.log.WithError(err).Warn("could not read the revoke store; will retry")
		} else {
			w.ApplyRevokes(entries)
		}
	}
	if w.cfg.Pauses != nil {
		qs, err := w.cfg.Pauses.Paused(ctx, w.cfg.Namespace)
		if err != nil {
			w.log.WithError(err).Warn("could not read paused queues; will retry")
			return
		}
		m := map[string]bool{}
		for _, q := range qs {
			m[q] = true
		}
		old := *w.paused.Load()
		if !sameSet(old, m) {
			w.paused.Store(&m)
			w.log.WithField("paused", qs).Info("paused queues loaded")
		}
	}
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
			w.syncControlState(ctx)
		}
	}
}

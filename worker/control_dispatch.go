package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/logging"
)

// replayWindow remembers the ids of accepted signed requests, until
// when to remember each (see admit).
type replayWindow struct {
	mu   sync.Mutex
	seen map[string]time.Time
}

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
	if err == nil {
		if err = w.admit(req); err != nil {
			w.log.WithError(err).WithFields(logrus.Fields{"type": req.Type, "request": req.ID}).Warn("refused a control request")
		}
	}
	var data any
	var after func()
	if err == nil {
		data, after, err = w.control(req)
	}
	if err != nil {
		rep.Error = err.Error()
	} else if data != nil {
		rep.Data, _ = json.Marshal(data)
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
	maxAge := w.cfg.MaxAge
	now := w.cfg.Now()
	if d := now.Sub(req.SentAt); d > maxAge || d < -maxAge {
		return fmt.Errorf("%w: sent %s, now %s", control.ErrStale, req.SentAt.UTC().Format(time.RFC3339Nano), now.UTC().Format(time.RFC3339Nano))
	}
	c := &w.replay
	c.mu.Lock()
	defer c.mu.Unlock()
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

// control executes one request. after, if set, runs once the reply is
// sent (a shutdown replies first).
func (w *Worker) control(req control.Request) (data any, after func(), err error) {
	var a struct {
		inspect   control.InspectArgs
		revoke    control.RevokeArgs
		shutdown  control.ShutdownArgs
		autoscale control.AutoscaleArgs
		queues    control.QueuesArgs
	}
	args := map[string]any{control.TypeInspect: &a.inspect, control.TypeRevoke: &a.revoke, control.TypeShutdown: &a.shutdown,
		control.TypeAutoscale: &a.autoscale, control.TypePause: &a.queues, control.TypeResume: &a.queues}
	if v, ok := args[req.Type]; ok && len(req.Args) > 0 {
		if err := json.Unmarshal(req.Args, v); err != nil {
			return nil, nil, fmt.Errorf("%s: bad arguments: %v", req.Type, err)
		}
	}
	switch req.Type {
	case control.TypePing:
		return control.PingData{State: w.Info().State, UptimeSeconds: w.uptime()}, nil, nil
	case control.TypeInspect:
		return w.inspect(a.inspect.IncludeRevoked), nil, nil
	case control.TypeStats:
		return w.controlStats(), nil, nil
	case control.TypeRevoke:
		return w.ApplyRevokes(a.revoke.Entries), nil, nil
	case control.TypeShutdown:
		m, err := ParseMode(a.shutdown.Mode)
		if err != nil {
			return nil, nil, err
		}
		w.log.WithField(logging.FieldMode, m.String()).Info("shutdown requested over the control plane")
		return control.PingData{State: "draining", UptimeSeconds: w.uptime()}, func() { w.Shutdown(m) }, nil
	case control.TypeAutoscale:
		if !w.scaler.config().Enabled {
			return nil, nil, fmt.Errorf("autoscaling is off on this worker (start it with --autoscale)")
		}
		if err := w.scaler.setBounds(a.autoscale.Min, a.autoscale.Max); err != nil {
			return nil, nil, err
		}
		return w.controlStats(), nil, nil
	case control.TypePause, control.TypeResume:
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
			w.setPaused(a.queues.Queues, req.Type == control.TypePause)
		}
		return w.controlStats(), nil, nil
	}
	return nil, nil, fmt.Errorf("unknown control request type %q", req.Type)
}

func (w *Worker) uptime() float64 {
	return w.cfg.Now().Sub(w.startedAt).Seconds()
}

func (w *Worker) inspect(includeRevoked bool) control.InspectData {
	now := w.cfg.Now()
	tasks := []control.InFlightTask{}
	w.out.each(func(r *run) {
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
			return
		}
		tasks = append(tasks, t)
	})
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
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	depth := w.queueDepths(ctx)
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

// queueDepths returns the ready tasks of each consumed queue, -1 for a
// queue the broker did not count.
func (w *Worker) queueDepths(ctx context.Context) map[string]int64 {
	depth := make(map[string]int64, len(w.cfg.Queues))
	for _, q := range w.cfg.Queues {
		if n, err := w.cfg.Broker.PendingCount(ctx, q); err == nil {
			depth[q] = n
		} else {
			depth[q] = -1
		}
	}
	return depth
}

package memory

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/stemhq/stem/registry"
	"github.com/stemhq/stem/result"
)

// storedState is a result state and when it expires.
type storedState struct {
	state   result.TaskState
	expires time.Time
}

// storedWorker is a heartbeat record and when it expires.
type storedWorker struct {
	info    registry.WorkerInfo
	expires time.Time
}

// Set writes states with the engine's result TTL. A state that is not
// result.Newer than the stored one is ignored. A state without an id
// rejects the whole call.
func (e *Engine) Set(ctx context.Context, states []result.TaskState) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for i, st := range states {
		if st.ID == "" {
			return fmt.Errorf("memory result backend: set: state %d (%s) has an empty task id", i, st.State)
		}
	}
	if err := e.lock(); err != nil {
		return err
	}
	defer e.mu.Unlock()
	now := e.opts.Now()
	for _, st := range states {
		if cur, ok := e.results[st.ID]; ok && now.Before(cur.expires) && !result.Newer(st, cur.state) {
			continue
		}
		e.results[st.ID] = storedState{state: cloneState(st), expires: now.Add(e.opts.ResultTTL)}
	}
	e.resultOps++
	if e.resultOps >= sweepEvery {
		e.resultOps = 0
		maps.DeleteFunc(e.results, func(_ string, s storedState) bool { return !now.Before(s.expires) })
	}
	return nil
}

// Get returns one task's state or result.ErrNotFound.
func (e *Engine) Get(ctx context.Context, id string) (result.TaskState, error) {
	if err := ctx.Err(); err != nil {
		return result.TaskState{}, err
	}
	if err := e.lock(); err != nil {
		return result.TaskState{}, err
	}
	defer e.mu.Unlock()
	cur, ok := e.results[id]
	if !ok || !e.opts.Now().Before(cur.expires) {
		delete(e.results, id)
		return result.TaskState{}, fmt.Errorf("memory result backend: task %s: %w", id, result.ErrNotFound)
	}
	return cloneState(cur.state), nil
}

func cloneState(st result.TaskState) result.TaskState {
	st.Result = slices.Clone(st.Result)
	st.ProgressData = slices.Clone(st.ProgressData)
	return st
}

// Heartbeat upserts info under (info.Namespace, info.ID), valid for ttl.
func (e *Engine) Heartbeat(ctx context.Context, info registry.WorkerInfo, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := registry.ValidateHeartbeat(info, ttl); err != nil {
		return fmt.Errorf("memory registry: %w", err)
	}
	if err := e.lock(); err != nil {
		return err
	}
	defer e.mu.Unlock()
	ws := e.workers[info.Namespace]
	if ws == nil {
		ws = map[string]storedWorker{}
		e.workers[info.Namespace] = ws
	}
	info.Queues = slices.Clone(info.Queues)
	info.Broadcasts = slices.Clone(info.Broadcasts)
	ws[info.ID] = storedWorker{info: info, expires: e.opts.Now().Add(ttl)}
	return nil
}

// Remove deletes a worker's record; removing an unknown worker is not an
// error.
func (e *Engine) Remove(ctx context.Context, namespace, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := e.lock(); err != nil {
		return err
	}
	defer e.mu.Unlock()
	delete(e.workers[namespace], id)
	return nil
}

// List returns the live records of namespace sorted by ID, pruning expired
// ones.
func (e *Engine) List(ctx context.Context, namespace string) ([]registry.WorkerInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := e.lock(); err != nil {
		return nil, err
	}
	defer e.mu.Unlock()
	now := e.opts.Now()
	ws := e.workers[namespace]
	out := make([]registry.WorkerInfo, 0, len(ws))
	for id, w := range ws {
		if !now.Before(w.expires) {
			delete(ws, id)
			continue
		}
		info := w.info
		info.Queues = slices.Clone(info.Queues)
		info.Broadcasts = slices.Clone(info.Broadcasts)
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b registry.WorkerInfo) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stemhq/stem/registry"
	"github.com/stemhq/stem/result"
)

// sweepInterval is how often (at most) an Engine deletes expired results
// and heartbeats, in the same round trip as a Set.
const sweepInterval = time.Minute

// sweepDue reports whether this Engine should sweep now, and if so marks
// the sweep as done.
func (e *Engine) sweepDue() bool {
	now := time.Now().UnixMilli()
	last := e.lastSweep.Load()
	return now-last >= sweepInterval.Milliseconds() && e.lastSweep.CompareAndSwap(last, now)
}

// Set writes states in one statement, each with the engine's result TTL.
// A state that is not result.Newer than the stored one is ignored: the
// upsert compares attempt and rank in SQL, and states of one task within
// the call are folded first in the same way (Postgres cannot upsert a row
// twice in one statement). A state without an id rejects the whole call
// before anything is written.
func (e *Engine) Set(ctx context.Context, states []result.TaskState) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	winners := make(map[string]int, len(states))
	for i, st := range states {
		if st.ID == "" {
			return fmt.Errorf("postgres result backend: set: state %d (%s) has an empty task id", i, st.State)
		}
		if j, ok := winners[st.ID]; !ok || result.Newer(st, states[j]) {
			winners[st.ID] = i
		}
	}
	if len(states) == 0 {
		return nil
	}
	order := make([]int, 0, len(winners))
	for _, i := range winners {
		order = append(order, i)
	}
	// Task id order: concurrent Sets lock rows in the same order, so they
	// cannot deadlock.
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(states[a].ID, states[b].ID) })
	ids := make([]string, len(order))
	attempts := make([]int32, len(order))
	ranks := make([]int32, len(order))
	js := make([][]byte, len(order))
	for k, i := range order {
		st := states[i]
		b, err := json.Marshal(st)
		if err != nil {
			return fmt.Errorf("postgres result backend: set: encode state of task %s: %w", st.ID, err)
		}
		ids[k], attempts[k], ranks[k], js[k] = st.ID, int32(st.Attempt), int32(st.State.Rank()), b
	}
	b := &pgx.Batch{}
	b.Queue(e.q.setResults, ids, attempts, ranks, js, max(e.opts.ResultTTL.Milliseconds(), 1))
	if e.sweepDue() {
		b.Queue(e.q.sweepResults)
		b.Queue(e.q.sweepWorkers)
	}
	return e.fail(fmt.Sprintf("set %d task state(s)", len(states)), e.pool.SendBatch(ctx, b).Close())
}

// Get returns one task's state or result.ErrNotFound.
func (e *Engine) Get(ctx context.Context, id string) (result.TaskState, error) {
	if err := e.checkOpen(); err != nil {
		return result.TaskState{}, err
	}
	var raw []byte
	err := e.pool.QueryRow(ctx, e.q.getResult, id).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return result.TaskState{}, fmt.Errorf("postgres result backend: task %s: %w", id, result.ErrNotFound)
	}
	if err != nil {
		return result.TaskState{}, e.fail("get state of task "+id, err)
	}
	var st result.TaskState
	if err := json.Unmarshal(raw, &st); err != nil {
		return result.TaskState{}, fmt.Errorf("postgres result backend at %s: state of task %s is not valid JSON: %w", e.url, id, err)
	}
	return st, nil
}

// Heartbeat upserts info, valid for ttl (by the server's clock).
func (e *Engine) Heartbeat(ctx context.Context, info registry.WorkerInfo, ttl time.Duration) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	if err := registry.ValidateHeartbeat(info, ttl); err != nil {
		return fmt.Errorf("postgres registry: %w", err)
	}
	js, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("postgres registry: encode heartbeat of worker %s: %w", info.ID, err)
	}
	_, err = e.pool.Exec(ctx, e.q.heartbeat, info.Namespace, info.ID, js, ttl.Milliseconds())
	return e.fail(fmt.Sprintf("heartbeat of worker %s/%s", info.Namespace, info.ID), err)
}

// Remove deletes a worker's record; removing an unknown worker is not an
// error.
func (e *Engine) Remove(ctx context.Context, namespace, id string) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	_, err := e.pool.Exec(ctx, e.q.removeWorker, namespace, id)
	return e.fail(fmt.Sprintf("remove worker %s/%s", namespace, id), err)
}

// List returns the live records of namespace sorted by ID (byte order,
// whatever the database's collation).
func (e *Engine) List(ctx context.Context, namespace string) ([]registry.WorkerInfo, error) {
	if err := e.checkOpen(); err != nil {
		return nil, err
	}
	op := "list workers of namespace " + namespace
	rows, err := e.pool.Query(ctx, e.q.listWorkers, namespace)
	if err != nil {
		return nil, e.fail(op, err)
	}
	defer rows.Close()
	var out []registry.WorkerInfo
	for rows.Next() {
		var raw []byte
		if err := rows.Scan(&raw); err != nil {
			return nil, e.fail(op, err)
		}
		var info registry.WorkerInfo
		if err := json.Unmarshal(raw, &info); err != nil {
			return nil, fmt.Errorf("postgres registry at %s: a record of namespace %s is not valid JSON: %w", e.url, namespace, err)
		}
		out = append(out, info)
	}
	if err := rows.Err(); err != nil {
		return nil, e.fail(op, err)
	}
	slices.SortFunc(out, func(a, b registry.WorkerInfo) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

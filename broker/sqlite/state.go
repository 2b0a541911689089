package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/stemhq/stem/registry"
	"github.com/stemhq/stem/result"
)

// Every SQL statement of the result backend and the registry, with its
// parameters and result.
const (
	// sqlSetResult upserts one state, keeping the stored one unless the new
	// one is result.Newer (a later attempt, or the same attempt and an
	// equal or higher rank) or the stored one has expired.
	// Params: ns, task id, attempt, rank, state JSON, expires_at (ms), now (ms).
	sqlSetResult = `INSERT INTO stem_results (ns, task_id, attempt, state_rank, state, expires_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT (ns, task_id) DO UPDATE SET
    attempt = excluded.attempt, state_rank = excluded.state_rank,
    state = excluded.state, expires_at = excluded.expires_at
WHERE excluded.attempt > stem_results.attempt
   OR (excluded.attempt = stem_results.attempt AND excluded.state_rank >= stem_results.state_rank)
   OR stem_results.expires_at <= ?7`

	// sqlGetResult reads one unexpired state.
	// Params: ns, task id, now (ms).
	// Returns: the state JSON.
	sqlGetResult = `SELECT state FROM stem_results WHERE ns = ? AND task_id = ? AND expires_at > ?`

	// sqlSweepResults deletes up to 1000 expired states (of any namespace).
	// Params: now (ms).
	sqlSweepResults = `DELETE FROM stem_results WHERE rowid IN (
    SELECT rowid FROM stem_results WHERE expires_at <= ? LIMIT 1000)`

	// sqlSweepWorkers deletes expired heartbeats (of any namespace).
	// Params: now (ms).
	sqlSweepWorkers = `DELETE FROM stem_workers WHERE expires_at <= ?`

	// sqlHeartbeat upserts a worker's record.
	// Params: ns, registry namespace, worker id, info JSON, expires_at (ms).
	sqlHeartbeat = `INSERT INTO stem_workers (ns, namespace, id, info, expires_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (ns, namespace, id) DO UPDATE SET info = excluded.info, expires_at = excluded.expires_at`

	// sqlRemoveWorker deletes a worker's record.
	// Params: ns, registry namespace, worker id.
	sqlRemoveWorker = `DELETE FROM stem_workers WHERE ns = ? AND namespace = ? AND id = ?`

	// sqlListWorkers lists the live records of a registry namespace in id
	// order (BINARY collation: byte order, as Go sorts strings).
	// Params: ns, registry namespace, now (ms).
	// Returns: info JSON.
	sqlListWorkers = `SELECT info FROM stem_workers WHERE ns = ? AND namespace = ? AND expires_at > ? ORDER BY id`
)

// sweepInterval is how often (at most) an Engine deletes expired results
// and heartbeats, as part of a Set or Heartbeat transaction.
const sweepInterval = time.Minute

// sweepDue reports whether this Engine should sweep now, and if so marks
// the sweep as done.
func (e *Engine) sweepDue(now int64) bool {
	last := e.lastSweep.Load()
	return now-last >= sweepInterval.Milliseconds() && e.lastSweep.CompareAndSwap(last, now)
}

// Set writes states in one write transaction, each with the engine's
// result TTL. A state that is not result.Newer than the stored one is
// ignored (the upsert compares attempt and rank in SQL), so out-of-order
// flushes are harmless. A state without an id rejects the whole call
// before anything is written.
func (e *Engine) Set(ctx context.Context, states []result.TaskState) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	js := make([][]byte, len(states))
	for i, st := range states {
		if st.ID == "" {
			return fmt.Errorf("sqlite result backend: set: state %d (%s) has an empty task id", i, st.State)
		}
		b, err := json.Marshal(st)
		if err != nil {
			return fmt.Errorf("sqlite result backend: set: encode state of task %s: %w", st.ID, err)
		}
		js[i] = b
	}
	if len(states) == 0 {
		return nil
	}
	now := nowMs()
	expires := now + max(e.opts.ResultTTL.Milliseconds(), 1)
	err := e.write(ctx, func(tx *sql.Tx) error {
		st, err := tx.PrepareContext(ctx, sqlSetResult)
		if err != nil {
			return err
		}
		defer st.Close()
		for i, s := range states {
			if _, err := st.ExecContext(ctx, e.ns, s.ID, s.Attempt, s.State.Rank(), js[i], expires, now); err != nil {
				return err
			}
		}
		if e.sweepDue(now) {
			if _, err := tx.ExecContext(ctx, sqlSweepResults, now); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, sqlSweepWorkers, now); err != nil {
				return err
			}
		}
		return nil
	})
	return e.fail(fmt.Sprintf("set %d task state(s)", len(states)), err)
}

// Get returns one task's state or result.ErrNotFound.
func (e *Engine) Get(ctx context.Context, id string) (result.TaskState, error) {
	if err := e.checkOpen(); err != nil {
		return result.TaskState{}, err
	}
	var raw []byte
	err := e.rdb.QueryRowContext(ctx, sqlGetResult, e.ns, id, nowMs()).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		return result.TaskState{}, fmt.Errorf("sqlite result backend: task %s: %w", id, result.ErrNotFound)
	}
	if err != nil {
		return result.TaskState{}, e.fail("get state of task "+id, err)
	}
	var st result.TaskState
	if err := json.Unmarshal(raw, &st); err != nil {
		return result.TaskState{}, fmt.Errorf("sqlite result backend at %s: state of task %s is not valid JSON: %w", e.path, id, err)
	}
	return st, nil
}

// Heartbeat upserts info, valid for ttl, in one write transaction.
func (e *Engine) Heartbeat(ctx context.Context, info registry.WorkerInfo, ttl time.Duration) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	if err := registry.ValidateHeartbeat(info, ttl); err != nil {
		return fmt.Errorf("sqlite registry: %w", err)
	}
	js, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("sqlite registry: encode heartbeat of worker %s: %w", info.ID, err)
	}
	now := nowMs()
	err = e.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, sqlHeartbeat, e.ns, info.Namespace, info.ID, js, now+ttl.Milliseconds())
		return err
	})
	return e.fail(fmt.Sprintf("heartbeat of worker %s/%s", info.Namespace, info.ID), err)
}

// Remove deletes a worker's record; removing an unknown worker is not an
// error.
func (e *Engine) Remove(ctx context.Context, namespace, id string) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	err := e.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, sqlRemoveWorker, e.ns, namespace, id)
		return err
	})
	return e.fail(fmt.Sprintf("remove worker %s/%s", namespace, id), err)
}

// List returns the live records of namespace sorted by ID.
func (e *Engine) List(ctx context.Context, namespace string) ([]registry.WorkerInfo, error) {
	if err := e.checkOpen(); err != nil {
		return nil, err
	}
	op := "list workers of namespace " + namespace
	rows, err := e.rdb.QueryContext(ctx, sqlListWorkers, e.ns, namespace, nowMs())
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
			return nil, fmt.Errorf("sqlite registry at %s: a record of namespace %s is not valid JSON: %w", e.path, namespace, err)
		}
		out = append(out, info)
	}
	if err := rows.Err(); err != nil {
		return nil, e.fail(op, err)
	}
	return out, nil
}

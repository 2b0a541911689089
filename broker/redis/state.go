package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stemhq/stem/registry"
	"github.com/stemhq/stem/result"
)

// setChunk is the most states written by one setResultsScript call.
const setChunk = 500

// Set writes states, each with the engine's result TTL, in one script call
// per 500 states. A state that is not result.Newer than the stored one is
// ignored, atomically on the server. A state without an id rejects the
// whole call before anything is written.
func (e *Engine) Set(ctx context.Context, states []result.TaskState) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	for i, st := range states {
		if st.ID == "" {
			return fmt.Errorf("redis result backend: set: state %d (%s) has an empty task id", i, st.State)
		}
	}
	ttl := max(e.opts.ResultTTL.Milliseconds(), 1)
	for start := 0; start < len(states); start += setChunk {
		chunk := states[start:min(start+setChunk, len(states))]
		keys := make([]string, len(chunk))
		args := make([]any, 0, 1+3*len(chunk))
		args = append(args, ttl)
		for i, st := range chunk {
			js, err := json.Marshal(st)
			if err != nil {
				return fmt.Errorf("redis result backend: set: encode state of task %s: %w", st.ID, err)
			}
			rank := st.State.Rank()
			value := strconv.Itoa(st.Attempt) + "," + strconv.Itoa(rank) + "|" + string(js)
			keys[i] = e.keys.result(st.ID)
			args = append(args, st.Attempt, rank, value)
		}
		if err := setResultsScript.Run(ctx, e.client, keys, args...).Err(); err != nil {
			return e.fail(fmt.Sprintf("set %d task state(s)", len(chunk)), err)
		}
	}
	return nil
}

// Get returns one task's state or result.ErrNotFound.
func (e *Engine) Get(ctx context.Context, id string) (result.TaskState, error) {
	if err := e.checkOpen(); err != nil {
		return result.TaskState{}, err
	}
	raw, err := e.client.Get(ctx, e.keys.result(id)).Result()
	if errors.Is(err, goredis.Nil) {
		return result.TaskState{}, fmt.Errorf("redis result backend: task %s: %w", id, result.ErrNotFound)
	}
	if err != nil {
		return result.TaskState{}, e.fail("get state of task "+id, err)
	}
	var st result.TaskState
	if err := json.Unmarshal([]byte(payloadOf(raw)), &st); err != nil {
		return result.TaskState{}, fmt.Errorf("redis result backend at %s: state of task %s is not valid JSON: %w", e.url, id, err)
	}
	return st, nil
}

// Heartbeat upserts info, valid for ttl: the worker's record with that TTL
// and its id in the namespace's index, in one MULTI/EXEC round trip.
func (e *Engine) Heartbeat(ctx context.Context, info registry.WorkerInfo, ttl time.Duration) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	if err := registry.ValidateHeartbeat(info, ttl); err != nil {
		return fmt.Errorf("redis registry: %w", err)
	}
	js, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("redis registry: encode heartbeat of worker %s: %w", info.ID, err)
	}
	ns := info.Namespace
	_, err = e.client.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		p.Set(ctx, e.keys.worker(ns, info.ID), js, ttl)
		p.ZAdd(ctx, e.keys.workerIndex(ns), goredis.Z{Score: float64(time.Now().UnixMilli()), Member: info.ID})
		return nil
	})
	return e.fail(fmt.Sprintf("heartbeat of worker %s/%s", ns, info.ID), err)
}

// Remove deletes a worker's record and index entry; removing an unknown
// worker is not an error.
func (e *Engine) Remove(ctx context.Context, namespace, id string) error {
	if err := e.checkOpen(); err != nil {
		return err
	}
	_, err := e.client.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		p.Del(ctx, e.keys.worker(namespace, id))
		p.ZRem(ctx, e.keys.workerIndex(namespace), id)
		return nil
	})
	return e.fail(fmt.Sprintf("remove worker %s/%s", namespace, id), err)
}

// List returns the live records of namespace sorted by ID: the index
// (ZRANGE), then the records (MGET); index entries whose record expired are
// pruned on the way (pruneWorkersScript, only when there are some).
func (e *Engine) List(ctx context.Context, namespace string) ([]registry.WorkerInfo, error) {
	if err := e.checkOpen(); err != nil {
		return nil, err
	}
	op := "list workers of namespace " + namespace
	ids, err := e.client.ZRange(ctx, e.keys.workerIndex(namespace), 0, -1).Result()
	if err != nil {
		return nil, e.fail(op, err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = e.keys.worker(namespace, id)
	}
	vals, err := e.client.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, e.fail(op, err)
	}
	out := make([]registry.WorkerInfo, 0, len(ids))
	var gone []any
	for i, v := range vals {
		s, ok := v.(string)
		if !ok {
			gone = append(gone, ids[i])
			continue
		}
		var info registry.WorkerInfo
		if err := json.Unmarshal([]byte(s), &info); err != nil {
			return nil, fmt.Errorf("redis registry at %s: record of worker %s/%s is not valid JSON: %w", e.url, namespace, ids[i], err)
		}
		out = append(out, info)
	}
	if len(gone) > 0 {
		pruneKeys := make([]string, 0, 1+len(gone))
		pruneKeys = append(pruneKeys, e.keys.workerIndex(namespace))
		for _, id := range gone {
			pruneKeys = append(pruneKeys, e.keys.worker(namespace, id.(string)))
		}
		if err := pruneWorkersScript.Run(ctx, e.client, pruneKeys, gone...).Err(); err != nil {
			return nil, e.fail(op, err)
		}
	}
	slices.SortFunc(out, func(a, b registry.WorkerInfo) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

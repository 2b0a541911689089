// Package client is stem's producer side for Go programs: enqueue tasks,
// wait for their outcomes, and the durable control operations (revoke,
// pause, resume) that write their record before they publish. The stem
// CLI's enqueue, worker revoke, pause and resume commands are thin layers
// over it.
package client

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/result"
)

// DefaultQueue is the queue of a task that names none and has no route.
const DefaultQueue = "default"

// Options configure a Client.
type Options struct {
	// Routes maps a task name to the queue a task without a Queue is
	// published to (the tasks file's queue: of each task). A task with
	// no route goes to DefaultQueue.
	Routes map[string]string
	// Now returns the current time (tests); time.Now when nil.
	Now func() time.Time
}

// Client publishes tasks to a broker and records their states in a result
// backend. The broker and backend carry the deployment's namespace (they
// are opened with it).
type Client struct {
	broker  broker.Broker
	results result.Backend
	opts    Options
}

// New returns a Client over b and r.
func New(b broker.Broker, r result.Backend, o Options) *Client {
	return &Client{broker: b, results: r, opts: o}
}

// Task is one task to enqueue.
type Task struct {
	Name string
	// Queue is where the task goes; "" routes it (Options.Routes, else
	// DefaultQueue).
	Queue string
	// Args is the task's arguments as a JSON value.
	Args json.RawMessage
	// ETA, or else Countdown from now, delays the task.
	ETA       time.Time
	Countdown time.Duration
	// MaxRetries, when set, overrides the handler's retry limit.
	MaxRetries *int
	// TimeLimit, when > 0, overrides the handler's time limit.
	TimeLimit time.Duration
}

// Queue is the queue t is published to: t.Queue, else its route, else
// DefaultQueue.
func (c *Client) Queue(t Task) string {
	return cmp.Or(t.Queue, c.opts.Routes[t.Name], DefaultQueue)
}

func (c *Client) now() time.Time {
	if c.opts.Now != nil {
		return c.opts.Now().UTC()
	}
	return time.Now().UTC()
}

// Envelope builds t's envelope (without an id) as enqueued at now, and
// validates it: an error is the caller's mistake, not the broker's.
func (c *Client) Envelope(t Task, now time.Time) (broker.Envelope, error) {
	env := broker.Envelope{Name: t.Name, Queue: c.Queue(t), Args: t.Args, MaxRetries: -1, TimeLimit: t.TimeLimit, CreatedAt: now, ETA: t.ETA}
	if t.MaxRetries != nil {
		env.MaxRetries = *t.MaxRetries
	}
	switch {
	case t.Countdown < 0:
		return env, fmt.Errorf("countdown %s must not be negative", t.Countdown)
	case t.Countdown > 0 && !t.ETA.IsZero():
		return env, errors.New("countdown and ETA exclude each other")
	case t.Countdown > 0:
		env.ETA = now.Add(t.Countdown)
	}
	if !env.ETA.IsZero() {
		env.ETA = env.ETA.UTC()
	}
	probe := env
	probe.ID = "validate"
	return env, probe.Validate()
}

// Enqueue publishes one task and returns its envelope (with its id).
func (c *Client) Enqueue(ctx context.Context, t Task) (broker.Envelope, error) {
	envs, err := c.EnqueueMany(ctx, []Task{t})
	if err != nil {
		return broker.Envelope{}, err
	}
	return envs[0], nil
}

// batch is how many tasks one round trip writes.
const batch = 500

// EnqueueMany publishes tasks in batches and returns their envelopes in
// order. Each task's "queued" state is written to the result backend
// before the task is published, so a fast worker's "started" (or final)
// state is never overwritten by it. On an error, the tasks of earlier
// batches are published.
func (c *Client) EnqueueMany(ctx context.Context, ts []Task) ([]broker.Envelope, error) {
	now := c.now()
	envs := make([]broker.Envelope, len(ts))
	for i, t := range ts {
		env, err := c.Envelope(t, now)
		if err != nil {
			return nil, err
		}
		env.ID = uuid.Must(uuid.NewV7()).String()
		envs[i] = env
	}
	for lo := 0; lo < len(envs); lo += batch {
		part := envs[lo:min(lo+batch, len(envs))]
		states := make([]result.TaskState, len(part))
		for i, env := range part {
			states[i] = result.TaskState{ID: env.ID, Name: env.Name, Queue: env.Queue, State: result.Queued, EnqueuedAt: now, UpdatedAt: now}
		}
		if err := c.results.Set(ctx, states); err != nil {
			return nil, fmt.Errorf("record task state: %w", err)
		}
		if err := c.broker.PublishBatch(ctx, part); err != nil {
			return nil, fmt.Errorf("publish %s: %w", part[0].Name, err)
		}
	}
	return envs, nil
}

// Outcome is what Wait saw.
type Outcome struct {
	// States holds, in the order of the ids, each task's final state, or
	// the last state read when the wait ended (only ID set if none was).
	States []result.TaskState
	// Pending lists the ids not final when the wait ended.
	Pending []string
}

// Wait polls the result backend until every task is final or ctx ends
// (then Pending is not empty and the error is nil). A task not yet
// recorded, or a backend briefly unavailable, is waited for; another read
// error ends the wait with it.
func (c *Client) Wait(ctx context.Context, ids []string) (Outcome, error) {
	out := Outcome{States: make([]result.TaskState, len(ids))}
	pending := make([]int, len(ids))
	for i, id := range ids {
		out.States[i].ID = id
		pending[i] = i
	}
	delay := 5 * time.Millisecond
	for {
		next := pending[:0]
		for _, i := range pending {
			st, err := c.results.Get(ctx, ids[i])
			switch {
			case err == nil:
				out.States[i] = st
				if st.State.Final() {
					continue
				}
			case ctx.Err() != nil:
			case !errors.Is(err, result.ErrNotFound) && !errors.Is(err, stem.ErrUnavailable):
				return out, err
			}
			next = append(next, i)
		}
		pending = next
		if len(pending) == 0 || ctx.Err() != nil {
			break
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		delay = min(2*delay, 250*time.Millisecond)
	}
	for _, i := range pending {
		out.Pending = append(out.Pending, ids[i])
	}
	return out, nil
}

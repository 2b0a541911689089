// Package result defines the result backend seam: where a task's state,
// result or error, progress and timestamps are kept for a bounded time (TTL)
// so that producers (`stem enqueue --wait`, `stem task status`) can read them.
//
// Implementations live with their engine (broker/memory, broker/redis, ...),
// because one engine usually serves every role of a deployment.
package result

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/stemhq/stem"
)

// State is a task's lifecycle state.
type State string

// The task states. Succeeded, Failed and Revoked are final.
const (
	Queued    State = "queued"
	Started   State = "started"
	Retried   State = "retried"
	Succeeded State = "succeeded"
	Failed    State = "failed"
	Revoked   State = "revoked"
)

// Final reports whether no further transition follows s.
func (s State) Final() bool {
	return s == Succeeded || s == Failed || s == Revoked
}

// Rank orders states so that a late write of an earlier state (a coalesced
// "started" flushed after "succeeded") never overwrites a later one within
// the same attempt.
func (s State) Rank() int {
	switch s {
	case Queued:
		return 0
	case Started:
		return 1
	case Retried:
		return 2
	case Succeeded, Failed, Revoked:
		return 3
	}
	return -1
}

// TaskState is everything the backend keeps about one task.
type TaskState struct {
	ID       string          `json:"id"`
	Name     string          `json:"name"`
	Queue    string          `json:"queue"`
	State    State           `json:"state"`
	Attempt  int             `json:"attempt"`
	Result   json.RawMessage `json:"result,omitempty"`
	Error    string          `json:"error,omitempty"`
	Progress float64         `json:"progress,omitempty"`
	// ProgressData is the last data passed to TaskContext.Progress.
	ProgressData json.RawMessage `json:"progressData,omitempty"`
	Worker       string          `json:"worker,omitempty"`
	// Reason and RevokedBy are set when State is Revoked.
	Reason     string    `json:"reason,omitempty"`
	RevokedBy  string    `json:"revokedBy,omitempty"`
	EnqueuedAt time.Time `json:"enqueuedAt,omitzero"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
	UpdatedAt  time.Time `json:"updatedAt"`
	// NextRetryAt is set when State is Retried.
	NextRetryAt time.Time `json:"nextRetryAt,omitzero"`
}

// ErrNotFound is returned by Get for a task the backend does not know (never
// enqueued through a stem producer, or expired by TTL).
var ErrNotFound = errors.New("task not found")

// Backend stores task states. Implementations must be safe for concurrent
// use.
type Backend interface {
	// Set writes the given states in as few round trips as possible, each
	// with the backend's TTL. A state whose (Attempt, State.Rank()) is lower
	// than the stored one is ignored, so out-of-order flushes are harmless.
	Set(ctx context.Context, states []TaskState) error
	// Get returns one task's state or ErrNotFound.
	Get(ctx context.Context, id string) (TaskState, error)
	// Close releases resources.
	Close() error
}

// Newer reports whether a should replace b: a later attempt, or the same
// attempt and a state of equal or higher rank.
func Newer(a, b TaskState) bool {
	if a.Attempt != b.Attempt {
		return a.Attempt > b.Attempt
	}
	return a.State.Rank() >= b.State.Rank()
}

// Wait polls b until task id reaches a final state or ctx ends. It returns
// the last state read (final or not) and ctx's error on timeout. Errors
// wrapping stem.ErrUnavailable (a backend restarting) are waited out.
func Wait(ctx context.Context, b Backend, id string) (TaskState, error) {
	delay := 5 * time.Millisecond
	var last TaskState
	for {
		st, err := b.Get(ctx, id)
		switch {
		case err == nil:
			last = st
			if st.State.Final() {
				return st, nil
			}
		case !errors.Is(err, ErrNotFound) && !errors.Is(err, stem.ErrUnavailable):
			return last, err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return last, ctx.Err()
		case <-t.C:
		}
		if delay < 200*time.Millisecond {
			delay *= 2
		}
	}
}

package client

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"slices"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/control/revoke"
)

// Revoke, Pause and Resume publish only once the store accepted the record
// (a worker that misses the message applies it when it starts or resyncs),
// with the Requester's namespace and signing key.

// PublishError is returned when the record is stored but the control
// message could not be published: the operation holds (workers read the
// store), live workers just did not hear of it at once.
type PublishError struct {
	Type string
	Err  error
}

func (e *PublishError) Error() string { return fmt.Sprintf("%s: %v", e.Type, e.Err) }
func (e *PublishError) Unwrap() error { return e.Err }

// Requester names who asks for an operation: user@host of this process.
func Requester() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// stamp defaults an operation's issue time (UTC) and requester.
func stamp(now time.Time, by string) (time.Time, string) {
	if now.IsZero() {
		now = time.Now()
	}
	if by == "" {
		by = Requester()
	}
	return now.UTC(), by
}

// RevokeRequest is what Revoke revokes.
type RevokeRequest struct {
	TaskIDs   []string
	Terminate bool
	Reason    string
	// RequestedBy is recorded with the revoke; Requester() when empty.
	RequestedBy string
	// ExpiresIn lets the record be pruned after this long (0: never).
	ExpiresIn time.Duration
	// Workers targets live workers by node name or id (none: all).
	Workers []string
	// Timeout bounds the wait for replies.
	Timeout time.Duration
	// Now is the issue time (time.Now when zero).
	Now time.Time
}

// RevokeResult is what Revoke did.
type RevokeResult struct {
	// Written are the entries as Revoke wrote them; Stored as the store
	// holds them after the write (a newer revoke of a task wins).
	Written, Stored []revoke.Entry
	// Replies are the live workers' answers.
	Replies control.Result
}

// Revoke writes revoke records to store, then publishes them through req.
// A store error returns before anything is published.
func Revoke(ctx context.Context, store revoke.Store, req *control.Requester, r RevokeRequest) (RevokeResult, error) {
	now, by := stamp(r.Now, r.RequestedBy)
	res := RevokeResult{Written: make([]revoke.Entry, len(r.TaskIDs))}
	for i, id := range r.TaskIDs {
		e := revoke.Entry{Namespace: req.Namespace, TaskID: id, Version: now.UnixNano(), IssuedAt: now,
			Terminate: r.Terminate, Reason: r.Reason, RequestedBy: by}
		if r.ExpiresIn > 0 {
			e.ExpiresAt = now.Add(r.ExpiresIn)
		}
		if len(req.SigningKey) > 0 {
			e = e.Sign(req.SigningKey)
		}
		res.Written[i] = e
	}
	var err error
	if res.Stored, err = store.Upsert(ctx, res.Written); err != nil {
		return res, fmt.Errorf("write the revoke store: %w", err)
	}
	res.Replies, err = publish(ctx, req, control.TypeRevoke, control.RevokeArgs{Entries: res.Stored}, r.Workers, r.Timeout)
	return res, err
}

// PauseRequest names the queues Pause or Resume act on.
type PauseRequest struct {
	Queues []string
	// Workers scopes the stored record to these workers (node name or
	// full id) and targets them; none: the namespace-wide record, every
	// live worker.
	Workers []string
	// RequestedBy is recorded with a pause; Requester() when empty.
	RequestedBy string
	Timeout     time.Duration
	Now         time.Time
}

// PauseResult is what Pause or Resume did.
type PauseResult struct {
	// Scopes are the record scopes written or removed ("": every worker).
	Scopes []string
	// StillPaused, after a resume, are the pauses of these queues that
	// stand under other scopes.
	StillPaused []broker.Pause
	Replies     control.Result
}

func (r PauseRequest) scopes() []string {
	if len(r.Workers) == 0 {
		return []string{""}
	}
	return r.Workers
}

// Pause stores a pause of each queue for each scope, then tells live
// workers. A store error returns before anything is published.
func Pause(ctx context.Context, store broker.PauseStore, req *control.Requester, r PauseRequest) (PauseResult, error) {
	res := PauseResult{Scopes: r.scopes()}
	now, by := stamp(r.Now, r.RequestedBy)
	var recs []broker.Pause
	for _, sc := range res.Scopes {
		for _, q := range r.Queues {
			p := broker.Pause{Namespace: req.Namespace, Queue: q, Worker: sc, PausedAt: now, RequestedBy: by}
			if len(req.SigningKey) > 0 {
				p = p.Sign(req.SigningKey)
			}
			recs = append(recs, p)
		}
	}
	if err := store.Pause(ctx, recs); err != nil {
		return res, err
	}
	var err error
	res.Replies, err = publish(ctx, req, control.TypePause, control.QueuesArgs{Queues: r.Queues}, r.Workers, r.Timeout)
	return res, err
}

// Resume removes the pauses of the queues under each scope (exactly: a
// namespace-wide resume leaves per-worker pauses), then tells live
// workers. A store error returns before anything is published.
func Resume(ctx context.Context, store broker.PauseStore, req *control.Requester, r PauseRequest) (PauseResult, error) {
	res := PauseResult{Scopes: r.scopes()}
	for _, sc := range res.Scopes {
		if err := store.Resume(ctx, req.Namespace, sc, r.Queues); err != nil {
			return res, err
		}
	}
	if ps, err := store.Pauses(ctx, req.Namespace); err == nil {
		for _, p := range ps {
			if slices.Contains(r.Queues, p.Queue) {
				res.StillPaused = append(res.StillPaused, p)
			}
		}
	}
	var err error
	res.Replies, err = publish(ctx, req, control.TypeResume, control.QueuesArgs{Queues: r.Queues}, r.Workers, r.Timeout)
	return res, err
}

func publish(ctx context.Context, req *control.Requester, typ string, args any, workers []string, timeout time.Duration) (control.Result, error) {
	res, err := req.Do(ctx, typ, args, workers, timeout)
	if err != nil {
		return res, &PublishError{Type: typ, Err: err}
	}
	return res, nil
}

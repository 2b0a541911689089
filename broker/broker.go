// Package broker defines the seam between the stem worker runtime and the
// message store that carries tasks: the Broker interface, the Envelope that
// travels through it, the Delivery a worker holds while it runs a task, and
// the errors every implementation returns.
//
// Every method takes a context.Context first and returns only stem types, so
// the worker never sees a go-redis, pgx or database/sql value. One contract
// suite (broker/conformance, Exercise) runs against every implementation; when the
// semantics below change, the suite changes first.
//
// Semantics in brief:
//
//   - Publish puts an envelope on its queue; an envelope with a future ETA
//     becomes claimable at that time (delayed delivery).
//   - Claim takes up to Max ready deliveries from the given queues in one
//     round trip and leases each until LeaseUntil. While leased, no other
//     claim returns it. When a lease expires (its worker died), the delivery
//     becomes claimable again: at-least-once.
//   - Ack removes finished deliveries; Nack hands them back (retry after a
//     delay, requeue without counting an attempt, or dead-letter).
//   - ExtendLease raises a lease deadline in place (never lowers it); it
//     never re-publishes a copy. Lease deadlines are computed by the
//     broker's clock (Redis TIME, SQL now()), never the client's.
package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Envelope is one task message as it travels through a broker.
type Envelope struct {
	// ID is the task id, unique per task (kept across retries).
	ID string `json:"id"`
	// Name is the registered task name the worker dispatches on.
	Name string `json:"name"`
	// Queue is the queue the task is published to.
	Queue string `json:"queue"`
	// Args is the task's arguments as a JSON value (usually an object).
	Args json.RawMessage `json:"args,omitempty"`
	// Attempt counts deliveries that ended in a retry; 0 on the first run.
	Attempt int `json:"attempt"`
	// MaxRetries overrides the handler's retry limit when >= 0; -1 means
	// "use the handler's option".
	MaxRetries int `json:"maxRetries"`
	// ETA, when non-zero and in the future, delays the task until then.
	ETA time.Time `json:"eta,omitzero"`
	// TimeLimit overrides the handler's time limit when > 0.
	TimeLimit time.Duration `json:"timeLimit,omitzero"`
	// CreatedAt is when the producer published the task.
	CreatedAt time.Time `json:"createdAt"`
	// Headers carries free-form metadata (trace ids, requester).
	Headers map[string]string `json:"headers,omitempty"`
}

// Validate reports whether the envelope can be published.
func (e Envelope) Validate() error {
	switch {
	case e.ID == "":
		return errors.New("envelope: empty task id")
	case e.Name == "":
		return fmt.Errorf("envelope %s: empty task name", e.ID)
	case e.Queue == "":
		return fmt.Errorf("envelope %s: empty queue", e.ID)
	case strings.ContainsAny(e.Queue, " \t\n{}"):
		return fmt.Errorf("envelope %s: queue %q contains whitespace or braces", e.ID, e.Queue)
	}
	if len(e.Args) > 0 && !json.Valid(e.Args) {
		return fmt.Errorf("envelope %s: args are not valid JSON", e.ID)
	}
	return nil
}

// Delivery is a claimed envelope together with the lease that protects it.
// Callers pass deliveries back (Ack, Nack, ExtendLease) unchanged:
// implementations find the lease by Envelope.Queue and Token.
type Delivery struct {
	Envelope Envelope
	// Token identifies this particular delivery (this claim of this attempt)
	// to the broker. It is opaque to callers.
	Token string
	// LeaseUntil is when the lease expires unless extended.
	LeaseUntil time.Time
}

// ClaimParams are the arguments to Broker.Claim.
type ClaimParams struct {
	// Queues to claim from, in priority order.
	Queues []string
	// Max is the most deliveries to return (>= 1).
	Max int
	// Lease is the visibility timeout of each returned delivery (> 0).
	Lease time.Duration
	// Wait, when > 0, lets Claim block up to this long for work to arrive
	// when none is ready. Claim returns as soon as at least one delivery is
	// available; it may return an empty slice when Wait passes.
	Wait time.Duration
}

// Validate reports claim parameters no engine accepts: no queues, Max
// below 1, a non-positive lease, or a queue name that is empty or holds
// whitespace or braces. Every engine's Claim calls it first.
func (p ClaimParams) Validate() error {
	switch {
	case len(p.Queues) == 0:
		return errors.New("claim: no queues given")
	case p.Max < 1:
		return fmt.Errorf("claim: max %d is below 1", p.Max)
	case p.Lease <= 0:
		return fmt.Errorf("claim: lease %v is not positive", p.Lease)
	}
	for _, q := range p.Queues {
		if q == "" || strings.ContainsAny(q, " \t\n{}") {
			return fmt.Errorf("claim: invalid queue name %q", q)
		}
	}
	return nil
}

// NackAction says what Nack does with a delivery.
type NackAction int

const (
	// Retry makes the task claimable again after Delay, with Envelope
	// (whose Attempt the caller has already incremented).
	Retry NackAction = iota + 1
	// Requeue hands the delivery back unchanged, at the head of its queue,
	// without counting an attempt (hard shutdown, lost worker slot).
	Requeue
	// DeadLetter moves the delivery to its queue's dead-letter list.
	DeadLetter
)

// Nack is one item of a Broker.Nack call.
type Nack struct {
	Delivery Delivery
	Action   NackAction
	// Envelope replaces the delivered envelope for Retry (attempt bumped).
	Envelope Envelope
	// Delay before a Retry becomes claimable.
	Delay time.Duration
	// Reason is stored with a dead letter.
	Reason string
}

// Validate reports a Nack no engine accepts: an unknown action, or a Retry
// whose new envelope is invalid. Every engine's Nack calls it first.
func (n Nack) Validate() error {
	switch n.Action {
	case Retry:
		if err := n.Envelope.Validate(); err != nil {
			return fmt.Errorf("nack retry of task %s: %w", n.Delivery.Envelope.ID, err)
		}
	case Requeue, DeadLetter:
	default:
		return fmt.Errorf("nack of task %s: unknown action %d", n.Delivery.Envelope.ID, n.Action)
	}
	return nil
}

// DeadLetterEntry is one dead-lettered task.
type DeadLetterEntry struct {
	Envelope Envelope  `json:"envelope"`
	Reason   string    `json:"reason"`
	DeadAt   time.Time `json:"deadAt"`
}

// Broker is the task transport. Implementations must be safe for concurrent
// use by many goroutines.
type Broker interface {
	// Publish enqueues one envelope.
	Publish(ctx context.Context, env Envelope) error
	// PublishBatch enqueues several envelopes in as few round trips as the
	// implementation allows. It is all-or-nothing per call where the
	// engine supports it.
	PublishBatch(ctx context.Context, envs []Envelope) error
	// Claim leases up to p.Max ready deliveries (see ClaimParams).
	Claim(ctx context.Context, p ClaimParams) ([]Delivery, error)
	// Ack removes finished deliveries. Acking a delivery whose lease was
	// lost is not an error; it is simply gone.
	Ack(ctx context.Context, ds []Delivery) error
	// Nack hands deliveries back per their Action. A delivery whose lease
	// was already lost (redelivered elsewhere) is skipped, so no duplicate
	// is created.
	Nack(ctx context.Context, ns []Nack) error
	// ExtendLease raises the lease deadline of each delivery to
	// max(current deadline, now+d) in place, now by the broker's clock: it
	// never shortens a lease. A lease past its deadline that no claim has
	// taken yet is still extended. It returns a *LeaseLostError naming the
	// tasks whose lease was already lost (and any the broker restored
	// from the caller's copy after losing its data); the others were
	// extended.
	ExtendLease(ctx context.Context, ds []Delivery, d time.Duration) error
	// PendingCount returns how many tasks of the queue are ready to be
	// claimed now: ready ones plus delayed ones already due, not leased.
	// It is cheap (O(1) or O(log n)).
	PendingCount(ctx context.Context, queue string) (int64, error)
	// DeadLetters lists up to limit dead letters of a queue, newest first
	// (nothing when limit <= 0).
	DeadLetters(ctx context.Context, queue string, limit int) ([]DeadLetterEntry, error)
	// Close releases the broker's resources.
	Close() error
}

// ErrClosed is returned by methods called after Close, for every role of
// an engine (broker, result backend, registry).
var ErrClosed = errors.New("broker closed")

// LeaseLostError is what ExtendLease returns when some leases were not
// simply extended: IDs names the tasks whose lease was lost (another claim
// holds them, or they are gone); Restored names tasks the broker had lost
// with its data (a Redis restart without persistence) and re-created,
// leased to the caller, from the caller's copy: those are extended, not
// lost. When IDs is empty the call succeeded for every delivery.
type LeaseLostError struct {
	IDs      []string
	Restored []string
}

func (e *LeaseLostError) Error() string {
	if len(e.IDs) == 0 {
		return fmt.Sprintf("no lease lost; %d task(s) restored after the broker lost them: %s", len(e.Restored), strings.Join(e.Restored, ", "))
	}
	return fmt.Sprintf("lease lost for %d task(s): %s", len(e.IDs), strings.Join(e.IDs, ", "))
}

// LeasesLost returns the ids of tasks whose lease err reports lost, and
// whether err is such a report at all (nil err: none lost, true). Any
// other error means nothing is known of the leases.
func LeasesLost(err error) ([]string, bool) {
	if err == nil {
		return nil, true
	}
	var l *LeaseLostError
	if errors.As(err, &l) {
		return l.IDs, true
	}
	return nil, false
}

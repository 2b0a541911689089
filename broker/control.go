package broker

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/stemhq/stem/internal/sigenc"
)

// Subscription is a stream of raw messages.
type Subscription interface {
	// C delivers messages until Close; it is closed after Close.
	C() <-chan []byte
	// Close stops the subscription. Closing twice is safe.
	Close() error
}

// ControlTransport carries control messages (package control builds and
// signs them; an engine only moves bytes). Publishing returns how many
// subscribers received the message when the engine knows it (Redis
// PUBLISH does), or -1.
type ControlTransport interface {
	// SubscribeWorker receives the namespace's broadcasts and the messages
	// sent to workerID. It returns once the subscription is live.
	SubscribeWorker(ctx context.Context, namespace, workerID string) (Subscription, error)
	// Broadcast sends msg to every live worker of the namespace.
	Broadcast(ctx context.Context, namespace string, msg []byte) (int, error)
	// Send sends msg to one worker.
	Send(ctx context.Context, namespace, workerID string, msg []byte) (int, error)
	// ListenReplies receives the replies sent to replyTo. It returns once
	// the subscription is live, so a requester listens before it publishes.
	ListenReplies(ctx context.Context, namespace, replyTo string) (Subscription, error)
	// Reply sends a reply to replyTo.
	Reply(ctx context.Context, namespace, replyTo string, msg []byte) error
}

// Pause is one stored pause: Queue is not consumed by the workers of
// Namespace that Worker designates.
type Pause struct {
	Namespace string `json:"namespace"`
	Queue     string `json:"queue"`
	// Worker scopes the pause: "" for every worker of the namespace, a node
	// name ("alpha") for every worker of that node, a full id
	// ("alpha@host") for that worker. A worker applies only the pauses
	// whose scope designates it, so a per-worker pause survives resyncs
	// and restarts without touching the other workers.
	Worker      string    `json:"worker,omitempty"`
	PausedAt    time.Time `json:"pausedAt"`
	RequestedBy string    `json:"requestedBy,omitempty"`
	// Sig is the hex HMAC-SHA256 of every other field (see Sign), when the
	// deployment signs its control records.
	Sig string `json:"sig,omitempty"`
}

const pauseDomain = "stem-pause-v1"

func (p Pause) sigFields() []string {
	return []string{p.Namespace, p.Queue, p.Worker, sigenc.Time(p.PausedAt), p.RequestedBy}
}

// Sign returns p with Sig set: the HMAC-SHA256 under key of a canonical
// encoding of namespace, queue, worker scope, pause time (to the
// microsecond) and requester.
func (p Pause) Sign(key []byte) Pause {
	p.Sig = sigenc.Sign(key, pauseDomain, p.sigFields()...)
	return p
}

// ErrBadRecordSignature is why a worker with a signing key ignores a
// stored pause whose signature is missing or does not verify.
var ErrBadRecordSignature = errors.New("pause record signature missing or invalid")

// Verify returns nil if p.Sig is p's signature under key, else
// ErrBadRecordSignature.
func (p Pause) Verify(key []byte) error {
	if !sigenc.Verify(key, p.Sig, pauseDomain, p.sigFields()...) {
		return ErrBadRecordSignature
	}
	return nil
}

// AppliesTo reports whether p's scope designates the worker id of node.
func (p Pause) AppliesTo(workerID, node string) bool {
	return p.Worker == "" || p.Worker == workerID || p.Worker == node
}

// ValidatePauses checks pauses before a store writes any: a namespace and
// a queue, no NUL byte or invalid UTF-8, a scope that names a node or a
// worker.
func ValidatePauses(pauses []Pause) error {
	for _, p := range pauses {
		if p.Namespace == "" || p.Queue == "" {
			return fmt.Errorf("pause %q of namespace %q: empty namespace or queue", p.Queue, p.Namespace)
		}
		for _, f := range []string{p.Namespace, p.Queue, p.Worker, p.RequestedBy, p.Sig} {
			if strings.ContainsRune(f, 0) || !utf8.ValidString(f) {
				return fmt.Errorf("pause %q of namespace %q: a field holds a NUL byte or invalid UTF-8", p.Queue, p.Namespace)
			}
		}
	}
	return nil
}

// SortPauses sorts pauses as PauseStore.Pauses returns them: by worker
// scope ("" first), then queue.
func SortPauses(ps []Pause) {
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].Worker != ps[j].Worker {
			return ps[i].Worker < ps[j].Worker
		}
		return ps[i].Queue < ps[j].Queue
	})
}

// PauseStore keeps which queues are paused, durably, per namespace and
// worker scope. Every engine implementation runs the conformance suite.
type PauseStore interface {
	// Pause stores pauses, each replacing the one of the same (namespace,
	// worker scope, queue).
	Pause(ctx context.Context, pauses []Pause) error
	// Resume deletes the pauses of queues whose scope is exactly worker
	// ("": the namespace-wide pauses; a per-worker pause stays).
	Resume(ctx context.Context, namespace, worker string, queues []string) error
	// Pauses lists a namespace's pauses, sorted by scope then queue.
	Pauses(ctx context.Context, namespace string) ([]Pause, error)
}

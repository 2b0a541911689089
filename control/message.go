// Package control is stem's control plane: versioned JSON control messages,
// the transport seam that carries them (true fan-out broadcast to every
// live worker, per-worker delivery, per-request reply channels), and the
// requester the CLI uses (publish, gather replies, return the moment every
// expected worker answered, name who did not).
package control

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Version is the control message format version.
const Version = 1

// Request types.
const (
	TypePing      = "ping"
	TypeInspect   = "inspect"
	TypeStats     = "stats"
	TypeRevoke    = "revoke"
	TypeShutdown  = "shutdown"
	TypePause     = "pause"
	TypeResume    = "resume"
	TypeAutoscale = "autoscale"
)

// Request is a control request.
type Request struct {
	V    int    `json:"v"`
	Type string `json:"type"`
	// ID is unique per request; replies carry it.
	ID string `json:"id"`
	// ReplyTo is the reply channel the requester listens on.
	ReplyTo   string    `json:"replyTo"`
	Namespace string    `json:"namespace"`
	SentAt    time.Time `json:"sentAt"`
	// Args are the type's arguments (RevokeArgs, ShutdownArgs, ...).
	Args json.RawMessage `json:"args,omitempty"`
	// Sig is the hex HMAC-SHA256 of the request without Sig, when the
	// deployment signs its control messages.
	Sig string `json:"sig,omitempty"`
}

// Reply is one worker's answer.
type Reply struct {
	V         int       `json:"v"`
	Type      string    `json:"type"`
	RequestID string    `json:"requestId"`
	Worker    string    `json:"worker"`
	SentAt    time.Time `json:"sentAt"`
	// Error is set when the worker refused or failed the request.
	Error string          `json:"error,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
}

// ErrBadSignature is the error a worker reports for an unsigned or
// mis-signed request when signing is on.
var ErrBadSignature = errors.New("control request signature missing or invalid")

// Sign sets r.Sig with key.
func (r *Request) Sign(key []byte) error {
	r.Sig = ""
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	m := hmac.New(sha256.New, key)
	m.Write(b)
	r.Sig = hex.EncodeToString(m.Sum(nil))
	return nil
}

// Verify checks r.Sig against key.
func (r Request) Verify(key []byte) error {
	if r.Sig == "" {
		return ErrBadSignature
	}
	want, err := hex.DecodeString(r.Sig)
	if err != nil {
		return ErrBadSignature
	}
	r.Sig = ""
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	m := hmac.New(sha256.New, key)
	m.Write(b)
	if !hmac.Equal(m.Sum(nil), want) {
		return ErrBadSignature
	}
	return nil
}

// Decode parses a request and checks its version.
func Decode(b []byte) (Request, error) {
	var r Request
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("control request is not valid JSON: %w", err)
	}
	if r.V != Version {
		return r, fmt.Errorf("control request version %d not supported (this worker speaks %d)", r.V, Version)
	}
	if r.Type == "" || r.ID == "" {
		return r, errors.New("control request without type or id")
	}
	return r, nil
}

// Subscription is a stream of raw messages.
type Subscription interface {
	// C delivers messages until Close; it is closed after Close.
	C() <-chan []byte
	// Close stops the subscription. Closing twice is safe.
	Close() error
}

// Transport carries control messages. Publishing returns how many
// subscribers received the message when the engine knows it (Redis
// PUBLISH does), or -1.
type Transport interface {
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

// PauseStore keeps which queues are paused, durably, per namespace.
type PauseStore interface {
	// SetPaused pauses (true) or resumes (false) queues.
	SetPaused(ctx context.Context, namespace string, queues []string, paused bool) error
	// Paused lists the paused queues, sorted.
	Paused(ctx context.Context, namespace string) ([]string, error)
}

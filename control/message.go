// Package control is stem's control plane: versioned JSON control messages,
// the transport seam that carries them (true fan-out broadcast to every
// live worker, per-worker delivery, per-request reply channels), and the
// requester the CLI uses (publish, gather replies, return the moment every
// expected worker answered, name who did not).
package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/stemhq/stem/internal/sigenc"
)

// Version is the control message format version this code writes.
//
// Version 2 (this one) signs every field of a request (type, id, reply
// channel, namespace, target, sent time, arguments) and of a reply, so a
// signed request cannot be replayed later, to another worker or into
// another namespace, and a reply cannot be forged. Compatibility:
//
//   - A version 1 worker answers a version 2 request with an error reply
//     ("control request version 2 not supported"), unsigned: a requester
//     with a key counts it as forged (the worker shows as not answering);
//     without a key it shows the error.
//   - A version 2 worker accepts a version 1 request only when it has no
//     signing key; with a key it refuses it (ErrOldVersion), since a
//     version 1 signature does not prevent replay.
//   - A version 1 requester reads version 2 replies (it ignores the fields
//     it does not know).
const Version = 2

// MinVersion is the oldest request format a worker without a signing key
// accepts.
const MinVersion = 1

// DefaultMaxAge is how far a signed request's SentAt may be from the
// worker's clock, either way (STEM_CONTROL_MAX_AGE).
const DefaultMaxAge = 30 * time.Second

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
	ReplyTo   string `json:"replyTo"`
	Namespace string `json:"namespace"`
	// Target is the worker id a request sent to one worker is for; empty
	// for a broadcast. A worker refuses a request targeted at another.
	Target string    `json:"target,omitempty"`
	SentAt time.Time `json:"sentAt"`
	// Args are the type's arguments (RevokeArgs, ShutdownArgs, ...).
	Args json.RawMessage `json:"args,omitempty"`
	// Sig is the hex HMAC-SHA256 of every other field (see Sign), when the
	// deployment signs its control messages.
	Sig string `json:"sig,omitempty"`
}

// Reply is one worker's answer.
type Reply struct {
	V         int    `json:"v"`
	Type      string `json:"type"`
	RequestID string `json:"requestId"`
	Worker    string `json:"worker"`
	// Namespace is the replying worker's control namespace.
	Namespace string    `json:"namespace,omitempty"`
	SentAt    time.Time `json:"sentAt"`
	// Error is set when the worker refused or failed the request.
	Error string          `json:"error,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
	// Sig is the hex HMAC-SHA256 of every other field, when the worker
	// has a signing key.
	Sig string `json:"sig,omitempty"`
}

// Errors a worker reports when it refuses a request.
var (
	// ErrBadSignature: signing is on and the request is unsigned or
	// mis-signed (another key, or altered).
	ErrBadSignature = errors.New("control request signature missing or invalid")
	// ErrStale: the request's SentAt is further than the maximum age from
	// the worker's clock (a replay, or clocks apart).
	ErrStale = errors.New("control request too old or from the future (replayed, or clocks apart more than STEM_CONTROL_MAX_AGE)")
	// ErrReplayed: a request with this id was already accepted.
	ErrReplayed = errors.New("control request already seen (replayed)")
	// ErrWrongNamespace: the request names another namespace.
	ErrWrongNamespace = errors.New("control request for another namespace")
	// ErrWrongTarget: the request was sent to another worker.
	ErrWrongTarget = errors.New("control request targeted at another worker")
	// ErrOldVersion: a version 1 request reached a worker with a key.
	ErrOldVersion = errors.New("control request format v1 is refused when signing is on (upgrade the requester)")
	// ErrBusy: too many distinct signed requests within the maximum age
	// to remember them all; refused rather than risk a replay.
	ErrBusy = errors.New("too many control requests within STEM_CONTROL_MAX_AGE; refused")
)

const (
	requestDomain = "stem-control-request-v2"
	replyDomain   = "stem-control-reply-v2"
)

func (r Request) sigFields() []string {
	return []string{sigenc.Int(int64(r.V)), r.Type, r.ID, r.ReplyTo, r.Namespace, r.Target,
		sigenc.Int(r.SentAt.UnixNano()), string(r.Args)}
}

// Sign sets r.Sig: the HMAC-SHA256 under key of a canonical encoding of
// the version, type, id, reply channel, namespace, target, sent time (to
// the nanosecond) and arguments (their bytes as sent).
func (r *Request) Sign(key []byte) error {
	r.Sig = sigenc.Sign(key, requestDomain, r.sigFields()...)
	return nil
}

// Verify checks r.Sig against key: ErrBadSignature when it does not match
// and ErrOldVersion for a version 1 request.
func (r Request) Verify(key []byte) error {
	if r.V < Version {
		return ErrOldVersion
	}
	if !sigenc.Verify(key, r.Sig, requestDomain, r.sigFields()...) {
		return ErrBadSignature
	}
	return nil
}

func (r Reply) sigFields() []string {
	return []string{sigenc.Int(int64(r.V)), r.Type, r.RequestID, r.Worker, r.Namespace,
		sigenc.Int(r.SentAt.UnixNano()), r.Error, string(r.Data)}
}

// Sign sets r.Sig under key, over every other field.
func (r *Reply) Sign(key []byte) {
	r.Sig = sigenc.Sign(key, replyDomain, r.sigFields()...)
}

// Verify reports whether r.Sig is r's signature under key.
func (r Reply) Verify(key []byte) bool {
	return sigenc.Verify(key, r.Sig, replyDomain, r.sigFields()...)
}

// Decode parses a request and checks its version.
func Decode(b []byte) (Request, error) {
	var r Request
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("control request is not valid JSON: %w", err)
	}
	if r.V < MinVersion || r.V > Version {
		return r, fmt.Errorf("control request version %d not supported (this worker speaks %d to %d)", r.V, MinVersion, Version)
	}
	if r.Type == "" || r.ID == "" {
		return r, errors.New("control request without type or id")
	}
	return r, nil
}

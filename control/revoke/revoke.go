// Package revoke is the durable revoke store seam. A revoke says "task X of
// namespace N must never run (again)", optionally "and terminate it if it
// is running". The CLI writes a revoke through a Store before it publishes
// the control message, so a revoke is never visible without its durable
// record; workers load the store at start, apply control messages as they
// arrive, and re-sync from the store periodically, so a revoke whose
// broadcast a worker missed still takes effect.
//
// Semantics every Store implements (one contract suite, broker/conformance, checks
// them all):
//
//   - Records are keyed by (Namespace, TaskID); namespaces never collide.
//   - Upsert stores an entry only if its Version is strictly higher than
//     the stored one, and returns the entries as stored afterwards (the
//     caller's where it won, the existing one where it lost).
//   - List returns a namespace's entries sorted by Version (then TaskID).
//   - Prune deletes a namespace's entries whose ExpiresAt is set and not
//     after now, and returns how many it deleted.
//   - Trim keeps a namespace's newest entries (highest Version, then
//     highest TaskID) up to a cap and deletes the others.
//   - Sig round-trips: with a signing key, the CLI signs entries (Sign)
//     and workers ignore entries that do not verify (Verify).
package revoke

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/stemhq/stem/internal/sigenc"
)

// DefaultMaxEntries is the cap on a namespace's revoke entries that
// workers keep (Trim, newest kept) when nothing else is configured.
const DefaultMaxEntries = 100000

// ErrBadSignature is why a worker with a signing key ignores an entry
// whose signature is missing or does not verify.
var ErrBadSignature = errors.New("revoke record signature missing or invalid")

// Entry is one revoke record.
type Entry struct {
	Namespace string `json:"namespace"`
	TaskID    string `json:"taskId"`
	// Version orders revokes of one task; a strictly higher one wins. The
	// CLI uses the issue time in nanoseconds.
	Version  int64     `json:"version"`
	IssuedAt time.Time `json:"issuedAt,omitzero"`
	// Terminate asks workers to stop the task if it is running.
	Terminate   bool   `json:"terminate"`
	Reason      string `json:"reason,omitempty"`
	RequestedBy string `json:"requestedBy,omitempty"`
	// ExpiresAt, when set, is when the record may be pruned.
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
	// Sig is the hex HMAC-SHA256 of every other field (see Sign), when the
	// deployment signs its control records.
	Sig string `json:"sig,omitempty"`
}

// sigDomain names the record kind and format in revoke signatures.
const sigDomain = "stem-revoke-v1"

func (e Entry) sigFields() []string {
	return []string{e.Namespace, e.TaskID, sigenc.Int(e.Version), sigenc.Time(e.IssuedAt),
		sigenc.Bool(e.Terminate), e.Reason, e.RequestedBy, sigenc.Time(e.ExpiresAt)}
}

// Sign returns e with Sig set: the HMAC-SHA256 under key of a canonical
// encoding of namespace, task id, version, issue time, terminate flag,
// reason, requester and expiry (times to the microsecond, the precision
// every store keeps).
func (e Entry) Sign(key []byte) Entry {
	e.Sig = sigenc.Sign(key, sigDomain, e.sigFields()...)
	return e
}

// Verify returns nil if e.Sig is e's signature under key, else
// ErrBadSignature.
func (e Entry) Verify(key []byte) error {
	if !sigenc.Verify(key, e.Sig, sigDomain, e.sigFields()...) {
		return ErrBadSignature
	}
	return nil
}

// Expired reports whether e has an expiry at or before now.
func (e Entry) Expired(now time.Time) bool {
	return !e.ExpiresAt.IsZero() && !e.ExpiresAt.After(now)
}

// Validate reports an entry that cannot be stored.
func (e Entry) Validate() error {
	switch {
	case e.Namespace == "":
		return errors.New("revoke entry: empty namespace")
	case e.TaskID == "":
		return errors.New("revoke entry: empty task id")
	case e.Version <= 0:
		return fmt.Errorf("revoke entry %s: version %d must be positive", e.TaskID, e.Version)
	}
	// Every store must hold what the others hold: no NUL bytes (Postgres
	// refuses them), valid UTF-8 (JSON stores would rewrite it), and years
	// JSON can encode.
	for _, f := range []struct{ name, v string }{{"namespace", e.Namespace}, {"task id", e.TaskID}, {"reason", e.Reason}, {"requester", e.RequestedBy}, {"sig", e.Sig}} {
		if strings.ContainsRune(f.v, 0) || !utf8.ValidString(f.v) {
			return fmt.Errorf("revoke entry %q: %s holds a NUL byte or invalid UTF-8", e.TaskID, f.name)
		}
	}
	for _, t := range []struct {
		name string
		v    time.Time
	}{{"issuedAt", e.IssuedAt}, {"expiresAt", e.ExpiresAt}} {
		if !t.v.IsZero() && (t.v.Year() < 1 || t.v.Year() > 9999) {
			return fmt.Errorf("revoke entry %q: %s %s is outside years 1-9999", e.TaskID, t.name, t.v)
		}
	}
	return nil
}

// Store is a durable revoke store. Implementations are safe for concurrent
// use, and (where the medium allows) across processes.
type Store interface {
	// Upsert stores entries whose Version is strictly higher than the
	// stored one and returns, for each input in order, the entry as stored
	// once the whole call has applied (so duplicates of one task in a call
	// all return the highest).
	Upsert(ctx context.Context, entries []Entry) ([]Entry, error)
	// List returns a namespace's entries sorted by Version, then TaskID.
	List(ctx context.Context, namespace string) ([]Entry, error)
	// Prune deletes a namespace's entries expired at now.
	Prune(ctx context.Context, namespace string, now time.Time) (int, error)
	// Trim deletes a namespace's entries beyond the newest keep (by
	// Version, then TaskID, highest kept) and returns how many it
	// deleted. keep must be positive.
	Trim(ctx context.Context, namespace string, keep int) (int, error)
	// Close releases resources.
	Close() error
}

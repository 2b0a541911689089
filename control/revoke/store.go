package revoke

// The helpers of this file are exported for Store implementations (the
// engines in broker/ implement Store on their own connections), so every
// store checks, orders and trims the same way.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
)

// ErrClosed is returned by every Store method called after Close.
var ErrClosed = errors.New("revoke store closed")

// Key identifies one revoke record.
type Key struct {
	namespace, taskID string
}

func KeyOf(e Entry) Key { return Key{e.Namespace, e.TaskID} }

// SortEntries sorts entries the way List returns them: by Version, then by
// TaskID (byte order).
func SortEntries(entries []Entry) {
	slices.SortFunc(entries, func(a, b Entry) int {
		if c := cmp.Compare(a.Version, b.Version); c != 0 {
			return c
		}
		return cmp.Compare(a.TaskID, b.TaskID)
	})
}

// ValidateAll checks every entry before a store changes anything, so a bad
// entry rejects the whole call. The error names the entry's position.
func ValidateAll(entries []Entry) error {
	for i, e := range entries {
		if err := e.Validate(); err != nil {
			return fmt.Errorf("upsert entry %d of %d: %w", i+1, len(entries), err)
		}
	}
	return nil
}

// CheckNamespace rejects the empty namespace given to List or Prune.
func CheckNamespace(op, namespace string) error {
	if namespace == "" {
		return fmt.Errorf("revoke %s: empty namespace", op)
	}
	return nil
}

// checkKeep rejects a Trim cap that is not positive.
func checkKeep(keep int) error {
	if keep <= 0 {
		return fmt.Errorf("revoke trim: keep %d must be positive", keep)
	}
	return nil
}

// CheckTrim runs the checks every store's Trim makes first: the store is
// open and ctx alive, the namespace valid, keep positive.
func CheckTrim(ctx context.Context, closed bool, namespace string, keep int) error {
	if err := CheckCall(ctx, closed); err != nil {
		return err
	}
	if err := CheckNamespace("trim", namespace); err != nil {
		return err
	}
	return checkKeep(keep)
}

// TrimVictims returns the entries of a namespace beyond the newest keep:
// entries sorted as List returns them, the first len-keep.
func TrimVictims(entries []Entry, keep int) []Entry {
	SortEntries(entries)
	if len(entries) <= keep {
		return nil
	}
	return entries[:len(entries)-keep]
}

// CheckCall is what every Store method does first: refuse after Close,
// refuse a context that is already done.
func CheckCall(ctx context.Context, closed bool) error {
	if closed {
		return ErrClosed
	}
	return ctx.Err()
}

// ResultsFor returns, for the inputs in order, the final entry of each key in
// latest, which must hold every input's key.
func ResultsFor(entries []Entry, latest map[Key]Entry) []Entry {
	out := make([]Entry, len(entries))
	for i, e := range entries {
		out[i] = latest[KeyOf(e)]
	}
	return out
}

// EncodeEntry returns the JSON of e, as the file and Redis stores keep it.
// It fails only for a time outside the years 0 to 9999, and then names
// the task.
func EncodeEntry(e Entry) ([]byte, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("revoke entry %s/%s: %w", e.Namespace, e.TaskID, err)
	}
	return b, nil
}

// Newest returns one entry per key of entries, the highest version (the
// first of equals), sorted by namespace then task id: the rows a SQL
// store writes (a statement may not touch a row twice, and sorted writes
// lock rows in one order, so concurrent upserts never deadlock).
func Newest(entries []Entry) []Entry {
	best := make(map[Key]Entry, len(entries))
	for _, e := range entries {
		if cur, ok := best[KeyOf(e)]; !ok || e.Version > cur.Version {
			best[KeyOf(e)] = e
		}
	}
	rows := make([]Entry, 0, len(best))
	for _, e := range best {
		rows = append(rows, e)
	}
	slices.SortFunc(rows, func(a, b Entry) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.TaskID, b.TaskID))
	})
	return rows
}

// Truncate returns b as a string of at most n bytes, marked when cut, for
// error messages that quote stored data.
func Truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "..."
}

// View is embedded by a Store an engine serves on its own connections:
// its Close ends the store (later calls return ErrClosed), not the engine.
type View struct{ closed atomic.Bool }

// Close ends the store. Closing twice is safe.
func (v *View) Close() error { v.closed.Store(true); return nil }

// Closed reports whether Close was called.
func (v *View) Closed() bool { return v.closed.Load() }

// CheckUpsert is what every store's Upsert does first: CheckCall, then
// ValidateAll.
func CheckUpsert(ctx context.Context, closed bool, entries []Entry) error {
	if err := CheckCall(ctx, closed); err != nil {
		return err
	}
	return ValidateAll(entries)
}

package revoke

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// ErrClosed is returned by every Store method called after Close.
var ErrClosed = errors.New("revoke store closed")

// key identifies one revoke record.
type key struct {
	namespace, taskID string
}

func keyOf(e Entry) key { return key{e.Namespace, e.TaskID} }

// sortEntries sorts entries the way List returns them: by Version, then by
// TaskID (byte order).
func sortEntries(entries []Entry) {
	slices.SortFunc(entries, func(a, b Entry) int {
		if c := cmp.Compare(a.Version, b.Version); c != 0 {
			return c
		}
		return cmp.Compare(a.TaskID, b.TaskID)
	})
}

// validateAll checks every entry before a store changes anything, so a bad
// entry rejects the whole call. The error names the entry's position.
func validateAll(entries []Entry) error {
	for i, e := range entries {
		if err := e.Validate(); err != nil {
			return fmt.Errorf("upsert entry %d of %d: %w", i+1, len(entries), err)
		}
	}
	return nil
}

// checkNamespace rejects the empty namespace given to List or Prune.
func checkNamespace(op, namespace string) error {
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

// checkTrim runs the checks every store's Trim makes first: the store is
// open and ctx alive, the namespace valid, keep positive.
func checkTrim(ctx context.Context, closed bool, namespace string, keep int) error {
	if err := checkCall(ctx, closed); err != nil {
		return err
	}
	if err := checkNamespace("trim", namespace); err != nil {
		return err
	}
	return checkKeep(keep)
}

// trimVictims returns the entries of a namespace beyond the newest keep:
// entries sorted as List returns them, the first len-keep.
func trimVictims(entries []Entry, keep int) []Entry {
	sortEntries(entries)
	if len(entries) <= keep {
		return nil
	}
	return entries[:len(entries)-keep]
}

// checkCall is what every Store method does first: refuse after Close,
// refuse a context that is already done.
func checkCall(ctx context.Context, closed bool) error {
	if closed {
		return ErrClosed
	}
	return ctx.Err()
}

// resultsFor returns, for the inputs in order, the final entry of each key in
// latest, which must hold every input's key.
func resultsFor(entries []Entry, latest map[key]Entry) []Entry {
	out := make([]Entry, len(entries))
	for i, e := range entries {
		out[i] = latest[keyOf(e)]
	}
	return out
}

// encodeEntry returns the JSON of e, as the file and Redis stores keep it.
// It fails only for a time outside the years 0 to 9999, and then names
// the task.
func encodeEntry(e Entry) ([]byte, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("revoke entry %s/%s: %w", e.Namespace, e.TaskID, err)
	}
	return b, nil
}

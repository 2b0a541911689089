package redis

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stemhq/stem/control/revoke"
)

// revokePruneChunk bounds the candidates one prune script call takes.
const revokePruneChunk = 500

// revokeStore is the engine's revoke store: one HASH per revoke namespace
// (field = task id, value = "<version>|<Entry JSON>") and a ZSET indexing
// the entries that expire (keys.go; docs/revoke-stores.md). Upsert-if-newer
// runs in a Lua script, atomic per namespace; a call whose entries span
// namespaces runs one script per namespace. Errors are classified as the
// engine's are.
type revokeStore struct {
	e *Engine
	revoke.View
}

var _ revoke.Store = (*revokeStore)(nil)

// Revokes returns the engine's revoke store. Its Close ends the store,
// not the engine; values it skips because they do not decode reach
// Options.Warn.
func (e *Engine) Revokes() revoke.Store { return &revokeStore{e: e} }

// Upsert implements revoke.Store.
func (s *revokeStore) Upsert(ctx context.Context, entries []revoke.Entry) ([]revoke.Entry, error) {
	if err := revoke.CheckUpsert(ctx, s.Closed(), entries); err != nil {
		return nil, err
	}
	// Group by namespace, keeping input order within each group.
	var order []string
	groups := map[string][]revoke.Entry{}
	for _, e := range entries {
		if _, ok := groups[e.Namespace]; !ok {
			order = append(order, e.Namespace)
		}
		groups[e.Namespace] = append(groups[e.Namespace], e)
	}
	latest := make(map[revoke.Key]revoke.Entry, len(entries))
	for _, ns := range order {
		group := groups[ns]
		argv := make([]any, 0, 4*len(group))
		for _, e := range group {
			value, err := revokeValue(e)
			if err != nil {
				return nil, err
			}
			expiry := ""
			if !e.ExpiresAt.IsZero() {
				expiry = strconv.FormatInt(e.ExpiresAt.UnixMicro(), 10)
			}
			argv = append(argv, e.TaskID, strconv.FormatInt(e.Version, 10), value, expiry)
		}
		hash := s.e.keys.revokes(ns)
		res, err := revokeUpsertScript.Run(ctx, s.e.client, []string{hash, s.e.keys.revokeExpiry(ns)}, argv...).Slice()
		if err != nil {
			return nil, s.fail("upsert into "+hash, err)
		}
		if len(res) != len(group) {
			return nil, fmt.Errorf("redis engine at %s: upsert into %s: script returned %d values for %d entries", s.e.url, hash, len(res), len(group))
		}
		for i, e := range group {
			raw, _ := res[i].(string)
			stored, err := decodeRevokeValue(raw)
			if err != nil {
				return nil, fmt.Errorf("redis engine at %s: %s field %s after upsert: %w", s.e.url, hash, e.TaskID, err)
			}
			latest[revoke.KeyOf(e)] = stored
		}
	}
	return revoke.ResultsFor(entries, latest), nil
}

// List implements revoke.Store.
func (s *revokeStore) List(ctx context.Context, namespace string) ([]revoke.Entry, error) {
	if err := revoke.CheckCall(ctx, s.Closed()); err != nil {
		return nil, err
	}
	if err := revoke.CheckNamespace("list", namespace); err != nil {
		return nil, err
	}
	hash := s.e.keys.revokes(namespace)
	all, err := s.e.client.HGetAll(ctx, hash).Result()
	if err != nil {
		return nil, s.fail("list "+hash, err)
	}
	out := make([]revoke.Entry, 0, len(all))
	for task, raw := range all {
		e, err := decodeRevokeValue(raw)
		if err == nil && (e.Namespace != namespace || e.TaskID != task) {
			err = fmt.Errorf("value is for %s/%s", e.Namespace, e.TaskID)
		}
		if err != nil {
			if s.e.opts.Warn != nil {
				s.e.opts.Warn(fmt.Errorf("redis engine at %s: revoke store: %s field %q skipped: %w", s.e.url, hash, task, err))
			}
			continue
		}
		out = append(out, e)
	}
	revoke.SortEntries(out)
	return out, nil
}

// Prune implements revoke.Store. It reads the candidates from the expiry
// index, checks their expiry exactly, and deletes each only if it was not
// replaced in between.
func (s *revokeStore) Prune(ctx context.Context, namespace string, now time.Time) (int, error) {
	if err := revoke.CheckCall(ctx, s.Closed()); err != nil {
		return 0, err
	}
	if err := revoke.CheckNamespace("prune", namespace); err != nil {
		return 0, err
	}
	hash, index := s.e.keys.revokes(namespace), s.e.keys.revokeExpiry(namespace)
	// The index holds microseconds rounded down: every entry expired at
	// now scores at most now's microsecond, so this is a superset.
	max := strconv.FormatInt(now.UnixMicro(), 10)
	tasks, err := s.e.client.ZRangeArgs(ctx, goredis.ZRangeArgs{Key: index, ByScore: true, Start: "-inf", Stop: max}).Result()
	if err != nil {
		return 0, s.fail("prune "+index, err)
	}
	total := 0
	for len(tasks) > 0 {
		chunk := tasks[:min(len(tasks), revokePruneChunk)]
		tasks = tasks[len(chunk):]
		vals, err := s.e.client.HMGet(ctx, hash, chunk...).Result()
		if err != nil {
			return total, s.fail("prune "+hash, err)
		}
		var argv []any
		for i, task := range chunk {
			raw, ok := vals[i].(string)
			if !ok {
				argv = append(argv, task, "") // stale index member
				continue
			}
			e, err := decodeRevokeValue(raw)
			if err != nil || !e.Expired(now) {
				continue // damaged values are reported by List
			}
			argv = append(argv, task, raw)
		}
		if len(argv) == 0 {
			continue
		}
		n, err := revokePruneScript.Run(ctx, s.e.client, []string{hash, index}, argv...).Int()
		if err != nil {
			return total, s.fail("prune "+hash, err)
		}
		total += n
	}
	return total, nil
}

// Trim implements revoke.Store: HGETALL, the newest keep chosen by the
// client, then the prune script deletes each other entry only if its value
// is still the one read (a revoke rewritten in between is kept). Values
// that do not decode are left alone (List reports them).
func (s *revokeStore) Trim(ctx context.Context, namespace string, keep int) (int, error) {
	if err := revoke.CheckTrim(ctx, s.Closed(), namespace, keep); err != nil {
		return 0, err
	}
	hash, index := s.e.keys.revokes(namespace), s.e.keys.revokeExpiry(namespace)
	all, err := s.e.client.HGetAll(ctx, hash).Result()
	if err != nil {
		return 0, s.fail("trim "+hash, err)
	}
	if len(all) <= keep {
		return 0, nil
	}
	entries := make([]revoke.Entry, 0, len(all))
	for _, raw := range all {
		if e, err := decodeRevokeValue(raw); err == nil {
			entries = append(entries, e)
		}
	}
	victims := revoke.TrimVictims(entries, keep)
	total := 0
	for len(victims) > 0 {
		chunk := victims[:min(len(victims), revokePruneChunk)]
		victims = victims[len(chunk):]
		argv := make([]any, 0, 2*len(chunk))
		for _, e := range chunk {
			argv = append(argv, e.TaskID, all[e.TaskID])
		}
		n, err := revokePruneScript.Run(ctx, s.e.client, []string{hash, index}, argv...).Int()
		if err != nil {
			return total, s.fail("trim "+hash, err)
		}
		total += n
	}
	return total, nil
}

// fail is revoke.ErrClosed after Close, else the engine's classification.
func (s *revokeStore) fail(op string, err error) error {
	if s.Closed() {
		return revoke.ErrClosed
	}
	return s.e.fail("revoke store: "+op, err)
}

// revokeValue encodes e as stored in the HASH: "<version>|<Entry JSON>".
func revokeValue(e revoke.Entry) (string, error) {
	b, err := revoke.EncodeEntry(e)
	if err != nil {
		return "", err
	}
	return strconv.FormatInt(e.Version, 10) + "|" + string(b), nil
}

// decodeRevokeValue decodes a HASH value into a valid Entry.
func decodeRevokeValue(raw string) (revoke.Entry, error) {
	prefix, body, ok := strings.Cut(raw, "|")
	if !ok {
		return revoke.Entry{}, fmt.Errorf("value %q has no version prefix", revoke.Truncate([]byte(raw), 60))
	}
	var e revoke.Entry
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		return revoke.Entry{}, fmt.Errorf("invalid JSON: %v", err)
	}
	if err := e.Validate(); err != nil {
		return revoke.Entry{}, err
	}
	if prefix != strconv.FormatInt(e.Version, 10) {
		return revoke.Entry{}, fmt.Errorf("version prefix %q does not match the entry's version %d", prefix, e.Version)
	}
	return e, nil
}

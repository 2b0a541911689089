package revoke

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stemhq/stem/stemerr"
)

// DefaultRedisKeyPrefix starts every key of the Redis store unless
// RedisOptions.KeyPrefix says otherwise.
const DefaultRedisKeyPrefix = "stem"

// redisPruneChunk bounds the candidates one prune script call takes.
const redisPruneChunk = 500

// RedisStore keeps revokes in Redis: one HASH per namespace (field = task
// id, value = "<version>|<Entry JSON>") and a ZSET indexing the entries
// that expire (redis_keys.go and docs/revoke-stores.md give the layout).
// Upsert-if-newer runs in a Lua script, so it is atomic per namespace; a
// call whose entries span namespaces runs one script per namespace.
type RedisStore struct {
	client goredis.UniversalClient
	owns   bool
	url    string // redacted, for errors
	keys   redisKeys
	warn   func(error)
	closed atomic.Bool
}

// RedisOptions configure a RedisStore.
type RedisOptions struct {
	// KeyPrefix starts every key; DefaultRedisKeyPrefix when empty. It may
	// not contain whitespace, braces or glob characters.
	KeyPrefix string
	// Warn receives stored values the store skips because they do not
	// decode into a valid Entry (written by something else, or damaged);
	// the other entries load as usual. Nil discards them.
	Warn func(error)
}

// WithDefaults returns o with empty fields set to their defaults.
func (o RedisOptions) WithDefaults() RedisOptions {
	if o.KeyPrefix == "" {
		o.KeyPrefix = DefaultRedisKeyPrefix
	}
	return o
}

// Validate reports options that cannot work.
func (o RedisOptions) Validate() error {
	if o.KeyPrefix == "" || strings.ContainsAny(o.KeyPrefix, " \t\r\n{}*?[]\\") {
		return fmt.Errorf("redis revoke store: key prefix %q is empty or contains whitespace, braces or glob characters", o.KeyPrefix)
	}
	return nil
}

// OpenRedis connects to the Redis server at rawURL (go-redis URL syntax:
// redis://[user:password@]host:port/db or rediss://...) and checks that it
// answers. A URL that does not parse is a *stemerr.ConfigError; a server that does
// not answer is an error wrapping stemerr.ErrUnavailable that names the URL
// with its password redacted. Close closes the connection pool.
func OpenRedis(ctx context.Context, rawURL string, opts RedisOptions) (*RedisStore, error) {
	x, err := openRedis(ctx, rawURL, opts)
	// Drivers may quote the URL or its password in their errors.
	return x, stemerr.RedactError(err, rawURL)
}

func openRedis(ctx context.Context, rawURL string, opts RedisOptions) (*RedisStore, error) {
	opts = opts.WithDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	shown := stemerr.RedactURL(rawURL)
	ro, err := goredis.ParseURL(rawURL)
	if err != nil {
		return nil, &stemerr.ConfigError{Key: "revoke store URL", Value: shown,
			Msg: stemerr.RedactError(err, rawURL).Error() + " (want redis://[user:password@]host:port/db or rediss://...)"}
	}
	client := goredis.NewClient(ro)
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("redis revoke store at %s: connect: %w: %w", shown, stemerr.ErrUnavailable, err)
	}
	return newRedis(client, true, shown, opts), nil
}

// NewRedis builds a store on an existing client, for tests and programs
// that configure go-redis themselves. It does not check the connection;
// Close does not close the client.
func NewRedis(client goredis.UniversalClient, opts RedisOptions) (*RedisStore, error) {
	opts = opts.WithDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	shown := "redis (client supplied)"
	if c, ok := client.(*goredis.Client); ok {
		o := c.Options()
		shown = fmt.Sprintf("redis://%s/%d", o.Addr, o.DB)
	}
	return newRedis(client, false, shown, opts), nil
}

func newRedis(client goredis.UniversalClient, owns bool, shown string, opts RedisOptions) *RedisStore {
	return &RedisStore{client: client, owns: owns, url: shown, keys: redisKeys{prefix: opts.KeyPrefix}, warn: opts.Warn}
}

// Upsert implements Store.
func (s *RedisStore) Upsert(ctx context.Context, entries []Entry) ([]Entry, error) {
	if err := checkCall(ctx, s.closed.Load()); err != nil {
		return nil, err
	}
	if err := validateAll(entries); err != nil {
		return nil, err
	}
	// Group by namespace, keeping input order within each group.
	var order []string
	groups := map[string][]Entry{}
	for _, e := range entries {
		if _, ok := groups[e.Namespace]; !ok {
			order = append(order, e.Namespace)
		}
		groups[e.Namespace] = append(groups[e.Namespace], e)
	}
	argvs := make(map[string][]any, len(groups))
	for _, ns := range order {
		argv := make([]any, 0, 4*len(groups[ns]))
		for _, e := range groups[ns] {
			value, err := redisValue(e)
			if err != nil {
				return nil, err
			}
			expiry := ""
			if !e.ExpiresAt.IsZero() {
				expiry = strconv.FormatInt(e.ExpiresAt.UnixMicro(), 10)
			}
			argv = append(argv, e.TaskID, strconv.FormatInt(e.Version, 10), value, expiry)
		}
		argvs[ns] = argv
	}
	latest := make(map[key]Entry, len(entries))
	for _, ns := range order {
		hash := s.keys.revokes(ns)
		res, err := redisUpsertScript.Run(ctx, s.client, []string{hash, s.keys.expiry(ns)}, argvs[ns]...).Slice()
		if err != nil {
			return nil, s.fail(ctx, "upsert into "+hash, err)
		}
		group := groups[ns]
		if len(res) != len(group) {
			return nil, fmt.Errorf("redis revoke store at %s: upsert into %s: script returned %d values for %d entries", s.url, hash, len(res), len(group))
		}
		for i, e := range group {
			raw, _ := res[i].(string)
			stored, err := decodeRedisValue(raw)
			if err != nil {
				return nil, fmt.Errorf("redis revoke store at %s: %s field %s after upsert: %w", s.url, hash, e.TaskID, err)
			}
			latest[keyOf(e)] = stored
		}
	}
	return resultsFor(entries, latest), nil
}

// List implements Store.
func (s *RedisStore) List(ctx context.Context, namespace string) ([]Entry, error) {
	if err := checkCall(ctx, s.closed.Load()); err != nil {
		return nil, err
	}
	if err := checkNamespace("list", namespace); err != nil {
		return nil, err
	}
	hash := s.keys.revokes(namespace)
	all, err := s.client.HGetAll(ctx, hash).Result()
	if err != nil {
		return nil, s.fail(ctx, "list "+hash, err)
	}
	out := make([]Entry, 0, len(all))
	for task, raw := range all {
		e, err := decodeRedisValue(raw)
		if err == nil && (e.Namespace != namespace || e.TaskID != task) {
			err = fmt.Errorf("value is for %s/%s", e.Namespace, e.TaskID)
		}
		if err != nil {
			if s.warn != nil {
				s.warn(fmt.Errorf("redis revoke store at %s: %s field %q skipped: %w", s.url, hash, task, err))
			}
			continue
		}
		out = append(out, e)
	}
	sortEntries(out)
	return out, nil
}

// Prune implements Store. It reads the candidates from the expiry index,
// checks their expiry exactly, and deletes each only if it was not
// replaced in between.
func (s *RedisStore) Prune(ctx context.Context, namespace string, now time.Time) (int, error) {
	if err := checkCall(ctx, s.closed.Load()); err != nil {
		return 0, err
	}
	if err := checkNamespace("prune", namespace); err != nil {
		return 0, err
	}
	hash, index := s.keys.revokes(namespace), s.keys.expiry(namespace)
	// The index holds microseconds rounded down: every entry expired at
	// now scores at most now's microsecond, so this is a superset.
	max := strconv.FormatInt(now.UnixMicro(), 10)
	tasks, err := s.client.ZRangeByScore(ctx, index, &goredis.ZRangeBy{Min: "-inf", Max: max}).Result()
	if err != nil {
		return 0, s.fail(ctx, "prune "+index, err)
	}
	total := 0
	for len(tasks) > 0 {
		chunk := tasks[:min(len(tasks), redisPruneChunk)]
		tasks = tasks[len(chunk):]
		vals, err := s.client.HMGet(ctx, hash, chunk...).Result()
		if err != nil {
			return total, s.fail(ctx, "prune "+hash, err)
		}
		var argv []any
		for i, task := range chunk {
			raw, ok := vals[i].(string)
			if !ok {
				argv = append(argv, task, "") // stale index member
				continue
			}
			e, err := decodeRedisValue(raw)
			if err != nil || !e.Expired(now) {
				continue // damaged values are reported by List
			}
			argv = append(argv, task, raw)
		}
		if len(argv) == 0 {
			continue
		}
		n, err := redisPruneScript.Run(ctx, s.client, []string{hash, index}, argv...).Int()
		if err != nil {
			return total, s.fail(ctx, "prune "+hash, err)
		}
		total += n
	}
	return total, nil
}

// Trim implements Store: HGETALL, the newest keep chosen by the client,
// then the prune script deletes each other entry only if its value is
// still the one read (a revoke rewritten in between is kept). Values that
// do not decode are left alone (List reports them).
func (s *RedisStore) Trim(ctx context.Context, namespace string, keep int) (int, error) {
	if err := checkTrim(ctx, s.closed.Load(), namespace, keep); err != nil {
		return 0, err
	}
	hash, index := s.keys.revokes(namespace), s.keys.expiry(namespace)
	all, err := s.client.HGetAll(ctx, hash).Result()
	if err != nil {
		return 0, s.fail(ctx, "trim "+hash, err)
	}
	if len(all) <= keep {
		return 0, nil
	}
	entries := make([]Entry, 0, len(all))
	for _, raw := range all {
		if e, err := decodeRedisValue(raw); err == nil {
			entries = append(entries, e)
		}
	}
	victims := trimVictims(entries, keep)
	total := 0
	for len(victims) > 0 {
		chunk := victims[:min(len(victims), redisPruneChunk)]
		victims = victims[len(chunk):]
		argv := make([]any, 0, 2*len(chunk))
		for _, e := range chunk {
			argv = append(argv, e.TaskID, all[e.TaskID])
		}
		n, err := redisPruneScript.Run(ctx, s.client, []string{hash, index}, argv...).Int()
		if err != nil {
			return total, s.fail(ctx, "trim "+hash, err)
		}
		total += n
	}
	return total, nil
}

// Close closes the connection pool when OpenRedis made it; later calls
// return ErrClosed. Closing twice is safe.
func (s *RedisStore) Close() error {
	if s.closed.Swap(true) || !s.owns {
		return nil
	}
	return s.client.Close()
}

// fail turns a go-redis error into the store's: ErrClosed after Close, the
// context's error when it ended, a reply error as is, and anything else
// (a refused or broken connection, a timeout) wrapping
// stemerr.ErrUnavailable. Every one names the redacted URL and what failed.
func (s *RedisStore) fail(ctx context.Context, op string, err error) error {
	var rerr goredis.Error
	switch {
	case errors.Is(err, goredis.ErrClosed) && s.closed.Load():
		return ErrClosed
	case ctx.Err() != nil:
		return fmt.Errorf("redis revoke store at %s: %s: %w", s.url, op, ctx.Err())
	case errors.As(err, &rerr):
		return fmt.Errorf("redis revoke store at %s: %s: %w", s.url, op, err)
	default:
		return fmt.Errorf("redis revoke store at %s: %s: %w: %w", s.url, op, stemerr.ErrUnavailable, err)
	}
}

// redisValue encodes e as stored in the HASH: "<version>|<Entry JSON>".
func redisValue(e Entry) (string, error) {
	b, err := encodeEntry(e)
	if err != nil {
		return "", err
	}
	return strconv.FormatInt(e.Version, 10) + "|" + string(b), nil
}

// decodeRedisValue decodes a HASH value into a valid Entry.
func decodeRedisValue(raw string) (Entry, error) {
	prefix, body, ok := strings.Cut(raw, "|")
	if !ok {
		return Entry{}, fmt.Errorf("value %q has no version prefix", truncate([]byte(raw), 60))
	}
	var e Entry
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		return Entry{}, fmt.Errorf("invalid JSON: %v", err)
	}
	if err := e.Validate(); err != nil {
		return Entry{}, err
	}
	if prefix != strconv.FormatInt(e.Version, 10) {
		return Entry{}, fmt.Errorf("version prefix %q does not match the entry's version %d", prefix, e.Version)
	}
	return e, nil
}

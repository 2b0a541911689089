package revoke_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/control/revoke/revoketest"
	"github.com/stemhq/stem/internal/testutil"
	"github.com/stemhq/stem/stemerr"
)

// uniqueName returns prefix followed by random hex, for per-test key
// prefixes and tables on shared servers.
func uniqueName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// redisClient connects to STEM_TEST_REDIS_URL, or skips.
func redisClient(t *testing.T) *goredis.Client {
	t.Helper()
	raw := testutil.EnvOrSkip(t, "STEM_TEST_REDIS_URL")
	o, err := goredis.ParseURL(raw)
	if err != nil {
		t.Fatalf("STEM_TEST_REDIS_URL: %v", err)
	}
	c := goredis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// deleteKeys removes every key matching pattern (never FLUSHDB: the
// server is shared).
func deleteKeys(t *testing.T, c *goredis.Client, pattern string) {
	ctx := context.Background()
	iter := c.Scan(ctx, 0, pattern, 500).Iterator()
	for iter.Next(ctx) {
		_ = c.Del(ctx, iter.Val()).Err()
	}
	if err := iter.Err(); err != nil {
		t.Errorf("cleaning up %s: %v", pattern, err)
	}
}

func newRedisStore(t *testing.T, c *goredis.Client, opts revoke.RedisOptions) *revoke.RedisStore {
	t.Helper()
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = uniqueName("stemtest-revoke-")
	}
	s, err := revoke.NewRedis(c, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = s.Close()
		deleteKeys(t, c, opts.KeyPrefix+":*")
	})
	return s
}

func TestRedisContract(t *testing.T) {
	c := redisClient(t)
	revoketest.Run(t, func(t *testing.T) revoke.Store {
		return newRedisStore(t, c, revoke.RedisOptions{Warn: func(err error) { t.Errorf("unexpected warning: %v", err) }})
	})
}

func TestRedisKeyLayout(t *testing.T) {
	c := redisClient(t)
	prefix := uniqueName("stemtest-revoke-")
	s := newRedisStore(t, c, revoke.RedisOptions{KeyPrefix: prefix})
	ctx := context.Background()
	e := revoke.Entry{Namespace: "prod", TaskID: "t1", Version: 42, ExpiresAt: time.UnixMicro(1_800_000_000_000_123)}
	if _, err := s.Upsert(ctx, []revoke.Entry{e}); err != nil {
		t.Fatal(err)
	}
	hash, index := prefix+":{prod}:revokes", prefix+":{prod}:revokes:expiry"
	v, err := c.HGet(ctx, hash, "t1").Result()
	if err != nil || !strings.HasPrefix(v, `42|{"namespace":"prod","taskId":"t1","version":42,`) {
		t.Fatalf("HGET %s t1 = %q, %v; want 42|<entry JSON>", hash, v, err)
	}
	if score, err := c.ZScore(ctx, index, "t1").Result(); err != nil || score != 1_800_000_000_000_123 {
		t.Fatalf("ZSCORE %s t1 = %v, %v; want the expiry in microseconds", index, score, err)
	}
	// A newer version without an expiry leaves the index.
	e.Version, e.ExpiresAt = 43, time.Time{}
	if _, err := s.Upsert(ctx, []revoke.Entry{e}); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.Exists(ctx, index).Result(); n != 0 {
		t.Fatalf("%s still exists after the only expiring entry lost its expiry", index)
	}
}

func TestRedisDamagedValueSkipped(t *testing.T) {
	c := redisClient(t)
	prefix := uniqueName("stemtest-revoke-")
	var warned []error
	s := newRedisStore(t, c, revoke.RedisOptions{KeyPrefix: prefix, Warn: func(err error) { warned = append(warned, err) }})
	ctx := context.Background()
	if _, err := s.Upsert(ctx, []revoke.Entry{{Namespace: "ns", TaskID: "good", Version: 1}}); err != nil {
		t.Fatal(err)
	}
	hash := prefix + ":{ns}:revokes"
	c.HSet(ctx, hash, "junk", "not a revoke", "other", `2|{"namespace":"ns","taskId":"elsewhere","version":2}`)
	got, err := s.List(ctx, "ns")
	if err != nil || len(got) != 1 || got[0].TaskID != "good" {
		t.Fatalf("List = %v, %v; want the good entry only", got, err)
	}
	if len(warned) != 2 || !strings.Contains(warned[0].Error(), hash) || !strings.Contains(warned[1].Error(), hash) {
		t.Fatalf("warnings = %v; want two naming %s", warned, hash)
	}
	// An upsert of any version repairs a field without a version prefix
	// or with a damaged one.
	c.HSet(ctx, hash, "badprefix", `99999999999999999999x|{}`)
	for _, task := range []string{"junk", "badprefix"} {
		got, err := s.Upsert(ctx, []revoke.Entry{{Namespace: "ns", TaskID: task, Version: 1}})
		if err != nil || len(got) != 1 || got[0].TaskID != task || got[0].Version != 1 {
			t.Fatalf("Upsert over the damaged field %s = %v, %v; want it replaced", task, got, err)
		}
	}
}

func TestRedisUnavailable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Nothing listens on port 1.
	_, err := revoke.OpenRedis(ctx, "redis://user:s3cret@127.0.0.1:1/0", revoke.RedisOptions{})
	if !errors.Is(err, stemerr.ErrUnavailable) {
		t.Fatalf("OpenRedis on a closed port: %v; want stemerr.ErrUnavailable", err)
	}
	if strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("error %q leaks the password or does not name the server", err)
	}
	// A store on a client whose server goes away fails the same way.
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	defer c.Close()
	s, err := revoke.NewRedis(c, revoke.RedisOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Upsert(ctx, []revoke.Entry{{Namespace: "ns", TaskID: "t", Version: 1}}); !errors.Is(err, stemerr.ErrUnavailable) || !strings.Contains(err.Error(), "t") {
		t.Fatalf("Upsert: %v; want stemerr.ErrUnavailable", err)
	}
	if _, err := s.List(ctx, "ns"); !errors.Is(err, stemerr.ErrUnavailable) {
		t.Fatalf("List: %v; want stemerr.ErrUnavailable", err)
	}
	if _, err := s.Prune(ctx, "ns", time.Now()); !errors.Is(err, stemerr.ErrUnavailable) {
		t.Fatalf("Prune: %v; want stemerr.ErrUnavailable", err)
	}
}

func TestRedisBadURL(t *testing.T) {
	_, err := revoke.OpenRedis(context.Background(), "redis://u:s3cret@127.0.0.1:6379/notadb", revoke.RedisOptions{})
	var ce *stemerr.ConfigError
	if !errors.As(err, &ce) || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("bad DB number: %v; want a *stemerr.ConfigError without the password", err)
	}
	c := goredis.NewClient(&goredis.Options{})
	defer c.Close()
	if _, err := revoke.NewRedis(c, revoke.RedisOptions{KeyPrefix: "a{b"}); err == nil {
		t.Fatal("a key prefix with a brace was accepted")
	}
}

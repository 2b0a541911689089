package redis

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/control/revoke"
)

// TestRevokeKeyLayout pins the keys of docs/revoke-stores.md, which
// revokes written before the store moved into the engine also use.
func TestRevokeKeyLayout(t *testing.T) {
	c := testClient(t)
	e := newTestEngine(t, c, Options{})
	s := e.Revokes()
	ctx := context.Background()
	r := revoke.Entry{Namespace: "prod", TaskID: "t1", Version: 42, ExpiresAt: time.UnixMicro(1_800_000_000_000_123)}
	if _, err := s.Upsert(ctx, []revoke.Entry{r}); err != nil {
		t.Fatal(err)
	}
	hash, index := e.Namespace()+":{prod}:revokes", e.Namespace()+":{prod}:revokes:expiry"
	v, err := c.HGet(ctx, hash, "t1").Result()
	if err != nil || !strings.HasPrefix(v, `42|{"namespace":"prod","taskId":"t1","version":42,`) {
		t.Fatalf("HGET %s t1 = %q, %v; want 42|<entry JSON>", hash, v, err)
	}
	if score, err := c.ZScore(ctx, index, "t1").Result(); err != nil || score != 1_800_000_000_000_123 {
		t.Fatalf("ZSCORE %s t1 = %v, %v; want the expiry in microseconds", index, score, err)
	}
	// A newer version without an expiry leaves the index.
	r.Version, r.ExpiresAt = 43, time.Time{}
	if _, err := s.Upsert(ctx, []revoke.Entry{r}); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.Exists(ctx, index).Result(); n != 0 {
		t.Fatalf("%s still exists after the only expiring entry lost its expiry", index)
	}
}

func TestRevokeDamagedValueSkipped(t *testing.T) {
	c := testClient(t)
	var warned []error
	e := newTestEngine(t, c, Options{Warn: func(err error) { warned = append(warned, err) }})
	s := e.Revokes()
	ctx := context.Background()
	if _, err := s.Upsert(ctx, []revoke.Entry{{Namespace: "ns", TaskID: "good", Version: 1}}); err != nil {
		t.Fatal(err)
	}
	hash := e.Namespace() + ":{ns}:revokes"
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

// TestRevokeErrorsClassifiedAsTheEngine: the revoke store fails as the
// broker does, so `stem worker revoke` and `stem enqueue` exit alike: a
// server that went away, and a replica after a failover (READONLY), are
// stem.ErrUnavailable (exit 69) for both.
func TestRevokeErrorsClassifiedAsTheEngine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	defer c.Close()
	e := newTestEngine(t, c, Options{})
	s := e.Revokes()
	if _, err := s.Upsert(ctx, []revoke.Entry{{Namespace: "ns", TaskID: "t", Version: 1}}); !errors.Is(err, stem.ErrUnavailable) {
		t.Fatalf("Upsert: %v; want stem.ErrUnavailable", err)
	}
	if _, err := s.List(ctx, "ns"); !errors.Is(err, stem.ErrUnavailable) {
		t.Fatalf("List: %v; want stem.ErrUnavailable", err)
	}
	if _, err := s.Prune(ctx, "ns", time.Now()); !errors.Is(err, stem.ErrUnavailable) {
		t.Fatalf("Prune: %v; want stem.ErrUnavailable", err)
	}
	// A replica (of a primary that is not there) answers writes with
	// READONLY, as a demoted primary does after a failover.
	srv := startOwnRedisArgs(t, "--replicaof", "127.0.0.1", "1")
	ro, err := goredis.ParseURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	rc := goredis.NewClient(ro)
	defer rc.Close()
	replica := newTestEngine(t, rc, Options{})
	if _, err := replica.Revokes().Upsert(ctx, []revoke.Entry{{Namespace: "ns", TaskID: "t", Version: 1}}); !errors.Is(err, stem.ErrUnavailable) {
		t.Fatalf("revoke Upsert on a replica: %v; want stem.ErrUnavailable, as the broker classifies it", err)
	}
	if err := replica.Publish(ctx, broker.Envelope{ID: "t", Name: "n", Queue: "q", CreatedAt: time.Now()}); !errors.Is(err, stem.ErrUnavailable) {
		t.Fatalf("Publish on a replica: %v; want stem.ErrUnavailable", err)
	}
	_ = s.Close()
	if _, err := s.List(ctx, "ns"); !errors.Is(err, revoke.ErrClosed) {
		t.Fatalf("List after Close: %v; want revoke.ErrClosed", err)
	}
}

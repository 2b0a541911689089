package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	goredis "github.com/redis/go-redis/v9"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/engine"
	"github.com/stemhq/stem/internal/testutil"
	"github.com/stemhq/stem/result"
	"github.com/stemhq/stem/worker"
)

// flakyStore is a revoke store that fails its first fails List calls.
type flakyStore struct {
	*mapStore
	fails atomic.Int32
	lists atomic.Int32
}

func (s *flakyStore) List(ctx context.Context, ns string) ([]revoke.Entry, error) {
	s.lists.Add(1)
	if s.fails.Add(-1) >= 0 {
		return nil, fmt.Errorf("revoke store at redis://127.0.0.1:1/0: %w", stem.ErrUnavailable)
	}
	return s.mapStore.List(ctx, ns)
}

// claimRecorder is a broker that records each Claim call.
type claimRecorder struct {
	broker.Broker
	claims atomic.Int32
}

func (b *claimRecorder) Claim(ctx context.Context, p broker.ClaimParams) ([]broker.Delivery, error) {
	b.claims.Add(1)
	return b.Broker.Claim(ctx, p)
}

// TestNoClaimBeforeRevokesLoaded: a revoke store that fails three times
// at start: the worker claims nothing and is not ready until it read the
// store; then the stored revoke is honoured from the first claim.
func TestNoClaimBeforeRevokesLoaded(t *testing.T) {
	f := setupControl(t)
	store := &flakyStore{mapStore: f.store}
	store.fails.Store(3)
	rec := &claimRecorder{Broker: f.eng}
	ids := f.publish("count", 1, nil)
	f.store.Upsert(context.Background(), []revoke.Entry{{Namespace: f.ns, TaskID: ids[0], Version: 1}})
	w := f.worker("a", func(c *worker.Config) {
		c.Broker = rec
		c.Revokes = store
		c.ControlRetry = 10 * time.Millisecond
	})
	done := make(chan error, 1)
	go func() { done <- w.Run(context.Background()) }()
	t.Cleanup(func() {
		w.Shutdown(worker.Hard)
		<-done
	})
	testutil.Eventually(t, 5*time.Second, func() bool { return store.lists.Load() >= 4 }, "the store was never read a fourth time")
	select {
	case <-w.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("worker not ready after the store answered")
	}
	if store.lists.Load() < 4 {
		t.Fatal("ready before the revoke store was read")
	}
	f.waitState(ids, result.Revoked, 5*time.Second)
	if f.calls.Load() != 0 {
		t.Fatal("a task revoked in the store ran: the worker claimed before loading revokes")
	}
}

// TestNoClaimWhileStoreDown: while the store fails, nothing is claimed
// and Ready stays open; a shutdown then returns cleanly.
func TestNoClaimWhileStoreDown(t *testing.T) {
	f := setupControl(t)
	store := &flakyStore{mapStore: f.store}
	store.fails.Store(1 << 30)
	rec := &claimRecorder{Broker: f.eng}
	f.publish("count", 1, nil)
	w := f.worker("a", func(c *worker.Config) {
		c.Broker = rec
		c.Revokes = store
		c.ControlRetry = 5 * time.Millisecond
	})
	done := make(chan error, 1)
	go func() { done <- w.Run(context.Background()) }()
	testutil.Eventually(t, 5*time.Second, func() bool { return store.lists.Load() >= 5 }, "the store was not retried")
	select {
	case <-w.Ready():
		t.Fatal("Ready closed while the revoke store could not be read")
	default:
	}
	w.Shutdown(worker.Warm)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a shutdown while waiting for the store did not return")
	}
	if n := rec.claims.Load(); n != 0 || f.calls.Load() != 0 {
		t.Fatalf("%d claims and %d runs while the revoke store was down", n, f.calls.Load())
	}
}

// rawRequest publishes a hand-made request and returns the reply.
func (f *ctlFixture) rawRequest(t *testing.T, msg []byte, replyTo string) control.Reply {
	t.Helper()
	sub, err := f.bus.ListenReplies(context.Background(), f.ns, replyTo)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := f.bus.Broadcast(context.Background(), f.ns, msg); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-sub.C():
		var rep control.Reply
		if err := json.Unmarshal(b, &rep); err != nil {
			t.Fatal(err)
		}
		return rep
	case <-time.After(5 * time.Second):
		t.Fatal("no reply within 5s")
	}
	return control.Reply{}
}

func signedRequest(t *testing.T, key []byte, ns, typ string, sentAt time.Time, args any) (control.Request, []byte) {
	t.Helper()
	req := control.Request{V: control.Version, Type: typ, ID: uuid.NewString(), ReplyTo: uuid.NewString(), Namespace: ns, SentAt: sentAt}
	if args != nil {
		req.Args, _ = json.Marshal(args)
	}
	req.Sign(key)
	b, _ := json.Marshal(req)
	return req, b
}

// TestSignedRequestsCannotBeReplayed: a captured signed shutdown is
// refused when published again, as are a request signed for another
// namespace, a stale one, one from the future, and one re-addressed to
// another worker. The worker keeps running.
func TestSignedRequestsCannotBeReplayed(t *testing.T) {
	f := setupControl(t)
	f.sigKey = []byte("s3cret")
	w := f.worker("a", func(c *worker.Config) { c.MaxAge = 2 * time.Second })
	f.start(w)
	f.waitRegistered(1)

	// A signed ping is answered, with a signed reply.
	req, msg := signedRequest(t, f.sigKey, f.ns, control.TypePing, time.Now(), nil)
	rep := f.rawRequest(t, msg, req.ReplyTo)
	if rep.Error != "" || !rep.Verify(f.sigKey) {
		t.Fatalf("signed ping: %+v (reply verifies: %v)", rep, rep.Verify(f.sigKey))
	}
	// The same bytes again: refused.
	if rep := f.rawRequest(t, msg, req.ReplyTo); !strings.Contains(rep.Error, control.ErrReplayed.Error()) {
		t.Fatalf("replayed request: reply %+v, want %q", rep, control.ErrReplayed)
	}

	// A captured shutdown of another namespace sharing the key, published
	// here: refused, the worker keeps running.
	other, msg := signedRequest(t, f.sigKey, "other-ns", control.TypeShutdown, time.Now(), control.ShutdownArgs{Mode: "hard"})
	if rep := f.rawRequest(t, msg, other.ReplyTo); !strings.Contains(rep.Error, control.ErrWrongNamespace.Error()) {
		t.Fatalf("request for another namespace: reply %+v", rep)
	}
	// Stale and future requests.
	for _, at := range []time.Time{time.Now().Add(-time.Minute), time.Now().Add(time.Minute)} {
		old, msg := signedRequest(t, f.sigKey, f.ns, control.TypeShutdown, at, control.ShutdownArgs{Mode: "hard"})
		if rep := f.rawRequest(t, msg, old.ReplyTo); !strings.Contains(rep.Error, "too old or from the future") {
			t.Fatalf("request sent at %s: reply %+v", at, rep)
		}
	}
	// A request signed for worker b, re-published to everyone.
	tgt := control.Request{V: control.Version, Type: control.TypeShutdown, ID: uuid.NewString(), ReplyTo: uuid.NewString(),
		Namespace: f.ns, Target: "b@h", SentAt: time.Now()}
	tgt.Sign(f.sigKey)
	b, _ := json.Marshal(tgt)
	if rep := f.rawRequest(t, b, tgt.ReplyTo); !strings.Contains(rep.Error, control.ErrWrongTarget.Error()) {
		t.Fatalf("request re-addressed from another worker: reply %+v", rep)
	}
	// Altered arguments: the signature covers them.
	alt := control.Request{V: control.Version, Type: control.TypeShutdown, ID: uuid.NewString(), ReplyTo: uuid.NewString(),
		Namespace: f.ns, SentAt: time.Now(), Args: json.RawMessage(`{"mode":"warm"}`)}
	alt.Sign(f.sigKey)
	alt.Args = json.RawMessage(`{"mode":"hard"}`)
	b, _ = json.Marshal(alt)
	if rep := f.rawRequest(t, b, alt.ReplyTo); rep.Error != control.ErrBadSignature.Error() {
		t.Fatalf("request with altered arguments: reply %+v", rep)
	}
	select {
	case <-w.Stopping():
		t.Fatal("a refused shutdown stopped the worker")
	default:
	}
}

// TestForgedReplyIsIgnored: with a key, a reply that is unsigned (or
// signed with another key) is ignored: the worker it names is reported
// as forged and, if it did not answer itself, missing.
func TestForgedReplyIsIgnored(t *testing.T) {
	f := setupControl(t)
	f.sigKey = []byte("s3cret")
	// An impostor answering as "a@h", registered as live.
	sub, err := f.bus.SubscribeWorker(context.Background(), f.ns, "a@h")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for b := range sub.C() {
			req, _ := control.Decode(b)
			rep := control.Reply{V: control.Version, Type: req.Type, RequestID: req.ID, Worker: "a@h", Namespace: f.ns, SentAt: time.Now()}
			rep.Sign([]byte("not-the-key"))
			out, _ := json.Marshal(rep)
			f.bus.Reply(context.Background(), f.ns, req.ReplyTo, out)
			rep.Sig = ""
			out, _ = json.Marshal(rep)
			f.bus.Reply(context.Background(), f.ns, req.ReplyTo, out)
		}
	}()
	defer func() { sub.Close(); wg.Wait() }()
	res, err := f.requester().Do(context.Background(), control.TypePing, nil, []string{"a@h"}, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Replies) != 0 || fmt.Sprint(res.Forged) != "[a@h]" || fmt.Sprint(res.Missing) != "[a@h]" {
		t.Fatalf("forged replies: replies %+v forged %v missing %v", res.Replies, res.Forged, res.Missing)
	}
}

// signingStores opens each revoke store kind; Redis and Postgres when
// their variables are set (required under CI).
func signingStores(t *testing.T) map[string]func(t *testing.T) revoke.Store {
	open := func(t *testing.T, url, namespace string) revoke.Store {
		t.Helper()
		s, err := engine.OpenRevokeStore(context.Background(), engine.RevokeOptions{URL: url, Namespace: namespace})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	return map[string]func(t *testing.T) revoke.Store{
		"memory": func(t *testing.T) revoke.Store { return open(t, "memory://"+t.Name(), "") },
		"file": func(t *testing.T) revoke.Store {
			return open(t, filepath.Join(t.TempDir(), "revokes.ndjson"), "")
		},
		"sqlite": func(t *testing.T) revoke.Store {
			return open(t, "sqlite://"+filepath.Join(t.TempDir(), "stem.db"), "")
		},
		"redis": func(t *testing.T) revoke.Store {
			prefix := "wsig" + uuid.NewString()[:8]
			s := open(t, testutil.EnvOrSkip(t, "STEM_TEST_REDIS_URL"), prefix)
			t.Cleanup(func() { dropRedisPrefix(t, prefix) })
			return s
		},
		"postgres": func(t *testing.T) revoke.Store {
			schema := "wsig_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
			s := open(t, testutil.EnvOrSkip(t, "STEM_TEST_POSTGRES_URL"), schema)
			t.Cleanup(func() { dropPostgresSchema(t, schema) })
			return s
		},
	}
}

// TestUnsignedStoredRevokeIsNotApplied: with a signing key, a revoke
// written to the store without a signature (or with another key's) is
// never applied: the task runs, and inspect lists the record as ignored
// with why. A signed one is applied. On every revoke store.
func TestUnsignedStoredRevokeIsNotApplied(t *testing.T) {
	for name, newStore := range signingStores(t) {
		t.Run(name, func(t *testing.T) {
			f := setupControl(t)
			f.sigKey = []byte("s3cret")
			store := newStore(t)
			unsigned := f.publish("count", 1, nil)
			forged := f.publish("count", 1, nil)
			signed := f.publish("count", 1, nil)
			now := time.Now()
			entries := []revoke.Entry{
				{Namespace: f.ns, TaskID: unsigned[0], Version: 1, IssuedAt: now, Terminate: true},
				revoke.Entry{Namespace: f.ns, TaskID: forged[0], Version: 1, IssuedAt: now}.Sign([]byte("other key")),
				revoke.Entry{Namespace: f.ns, TaskID: signed[0], Version: 1, IssuedAt: now, Reason: "signed", ExpiresAt: now.Add(time.Hour)}.Sign(f.sigKey),
			}
			if _, err := store.Upsert(context.Background(), entries); err != nil {
				t.Fatal(err)
			}
			w := f.worker("a", func(c *worker.Config) { c.Revokes = store })
			f.start(w)
			f.waitState(signed, result.Revoked, 5*time.Second)
			f.waitState(append(unsigned, forged...), result.Succeeded, 5*time.Second)
			if n := f.calls.Load(); n != 2 {
				t.Fatalf("%d tasks ran, want the 2 with unsigned or mis-signed revokes", n)
			}
			res, err := f.requester().Do(context.Background(), control.TypeInspect, control.InspectArgs{IncludeRevoked: true}, nil, 5*time.Second)
			if err != nil || len(res.Replies) != 1 {
				t.Fatal(res, err)
			}
			var in control.InspectData
			json.Unmarshal(res.Replies[0].Data, &in)
			if len(in.Revoked) != 1 || in.Revoked[0].TaskID != signed[0] || len(in.Ignored) != 2 {
				t.Fatalf("inspect: revoked %+v ignored %+v", in.Revoked, in.Ignored)
			}
			for _, ig := range in.Ignored {
				want := "unsigned"
				if ig.Entry.TaskID == forged[0] {
					want = "signature invalid"
				}
				if !strings.Contains(ig.Why, want) {
					t.Errorf("ignored %s: why %q, want %q", ig.Entry.TaskID, ig.Why, want)
				}
			}
		})
	}
}

// TestPerWorkerPauseIsPerWorker: a pause stored for alpha pauses alpha
// only: beta consumes, after resyncs and after a restart; an unsigned
// pause is ignored by workers with a key; stats say why.
func TestPerWorkerPauseIsPerWorker(t *testing.T) {
	f := setupControl(t)
	f.sigKey = []byte("s3cret")
	ctx := context.Background()
	fast := func(c *worker.Config) { c.RevokeSync = 20 * time.Millisecond }
	if err := f.bus.Pause(ctx, []broker.Pause{
		broker.Pause{Namespace: f.ns, Queue: "default", Worker: "alpha", PausedAt: time.Now(), RequestedBy: "ops"}.Sign(f.sigKey),
		{Namespace: f.ns, Queue: "default", Worker: "beta@h"}, // unsigned: ignored
	}); err != nil {
		t.Fatal(err)
	}
	alpha := f.worker("alpha", fast)
	f.start(alpha)
	beta := f.worker("beta", fast)
	stopBeta := f.start(beta)
	f.waitRegistered(2)
	stats := func(id string) control.StatsData {
		t.Helper()
		res, err := f.requester().Do(ctx, control.TypeStats, nil, []string{id}, 5*time.Second)
		if err != nil || len(res.Replies) != 1 {
			t.Fatal(res, err)
		}
		var st control.StatsData
		json.Unmarshal(res.Replies[0].Data, &st)
		return st
	}
	a := stats("alpha@h")
	if fmt.Sprint(a.Paused) != "[default]" || len(a.Pauses) != 1 || !a.Pauses[0].Applied || !strings.Contains(a.Pauses[0].Why, "this worker") {
		t.Fatalf("alpha: paused %v pauses %+v", a.Paused, a.Pauses)
	}
	b := stats("beta@h")
	if len(b.Paused) != 0 || len(b.Pauses) != 1 || b.Pauses[0].Applied || !strings.Contains(b.Pauses[0].Why, "unsigned") {
		t.Fatalf("beta: paused %v pauses %+v", b.Paused, b.Pauses)
	}
	ids := f.publish("count", 3, nil)
	states := f.waitState(ids, result.Succeeded, 5*time.Second)
	for _, st := range states {
		if st.Worker != "beta@h" {
			t.Fatalf("task %s ran on %s, a paused worker", st.ID, st.Worker)
		}
	}
	// After a restart of beta, and resyncs, the same.
	stopBeta(worker.Warm)
	beta2 := f.worker("beta", fast)
	f.start(beta2)
	resyncs := 0
	testutil.Eventually(t, 5*time.Second, func() bool {
		resyncs++
		return resyncs > 3 && len(beta2.PausedQueues()) == 0 && len(alpha.PausedQueues()) == 1
	}, "pauses changed")
	ids = f.publish("count", 2, nil)
	for _, st := range f.waitState(ids, result.Succeeded, 5*time.Second) {
		if st.Worker != "beta@h" {
			t.Fatalf("task %s ran on %s after the restart", st.ID, st.Worker)
		}
	}
	// Resuming alpha (its scope) lets it consume again.
	f.bus.Resume(ctx, f.ns, "alpha", []string{"default"})
	testutil.Eventually(t, 5*time.Second, func() bool { return len(alpha.PausedQueues()) == 0 }, "alpha still paused after its resume")
}

// dropPostgresSchema removes a test schema.
func dropPostgresSchema(t *testing.T, schema string) {
	pool, err := pgxpool.New(context.Background(), os.Getenv("STEM_TEST_POSTGRES_URL"))
	if err != nil {
		t.Logf("drop %s: %v", schema, err)
		return
	}
	defer pool.Close()
	_, _ = pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
}

// dropRedisPrefix removes a test's keys.
func dropRedisPrefix(t *testing.T, prefix string) {
	opt, err := goredis.ParseURL(os.Getenv("STEM_TEST_REDIS_URL"))
	if err != nil {
		return
	}
	c := goredis.NewClient(opt)
	defer c.Close()
	keys, _ := c.Keys(context.Background(), prefix+":*").Result()
	if len(keys) > 0 {
		c.Del(context.Background(), keys...)
	}
}

package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/conformance"
	"github.com/stemhq/stem/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testURLEnv selects the Postgres server of the integration tests.
const testURLEnv = "STEM_TEST_POSTGRES_URL"

// testURL returns the test server's URL, or skips (fails under CI) when it
// is unset.
func testURL(tb testing.TB) string {
	tb.Helper()
	return testutil.EnvOrSkip(tb, testURLEnv)
}

// randomNamespace returns a namespace (and so a schema) no other test run
// uses.
func randomNamespace() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "stemtest_" + hex.EncodeToString(b[:])
}

// dropSchema drops a schema and everything in it, through a connection of
// its own.
func dropSchema(tb testing.TB, rawURL, schema string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, rawURL)
	if err != nil {
		tb.Errorf("cleanup: connect to drop schema %s: %v", schema, err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`); err != nil {
		tb.Errorf("cleanup: drop schema %s: %v", schema, err)
	}
}

// openTestEngine opens an Engine on rawURL under a fresh random namespace
// (unless opts names one); at cleanup it closes the Engine and drops the
// schema.
func openTestEngine(tb testing.TB, rawURL string, opts Options) *Engine {
	tb.Helper()
	if opts.Namespace == "" {
		opts.Namespace = randomNamespace()
	}
	e, err := Open(tb.Context(), rawURL, opts)
	if err != nil {
		tb.Fatalf("Open(%s): %v", stem.RedactURL(rawURL), err)
	}
	tb.Cleanup(func() {
		_ = e.Close()
		dropSchema(tb, rawURL, e.Schema())
	})
	return e
}

// newTestEngine opens an Engine on the test server under a fresh
// namespace.
func newTestEngine(tb testing.TB, opts Options) *Engine {
	tb.Helper()
	return openTestEngine(tb, testURL(tb), opts)
}

// TestConformance runs the contract suite, every engine under a schema of
// its own, with a small pool (4 connections) so that a role holding on to
// connections shows.
func TestConformance(t *testing.T) {
	raw := testURL(t)
	var engine func(t *testing.T, o Options) conformance.Engine
	engine = func(t *testing.T, o Options) conformance.Engine {
		o.MaxConns = 4
		e := openTestEngine(t, raw, o)
		return conformance.Engine{
			Broker: e, Results: e, Registry: e, Control: e, Pauses: e, Revokes: e.Revokes(),
			PublishCorrupt: func(ctx context.Context, queue string) error {
				_, err := e.pool.Exec(ctx, e.q.publish, []string{queue}, []string{"corrupt"}, [][]byte{[]byte("not json")}, []int64{0})
				return err
			},
			StoredResults: func(ctx context.Context, id string) (int, error) {
				var n int
				err := e.pool.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{e.Schema()}.Sanitize()+`.results WHERE task_id = $1`, id).Scan(&n)
				return n, err
			},
			SweepDue:               func() { e.lastSweep.Store(0) },
			CloseEndsSubscriptions: true,
			Peer: func(t *testing.T) conformance.Engine {
				return engine(t, Options{Namespace: e.Namespace()})
			},
			// A waiting claim wakes on a NOTIFY once the listener runs.
			WakeReady: func(string) bool { return e.listen.listening() },
		}
	}
	conformance.Exercise(t, conformance.WithOptions(func(t *testing.T, opts conformance.Options) conformance.Engine {
		return engine(t, Options{ResultTTL: opts.ResultTTL, DeadLetterCap: opts.DeadLetterCap})
	}))
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	// Port 1 on loopback refuses connections.
	for _, raw := range []string{
		"postgres://user:s3cret@127.0.0.1:1/db?sslmode=disable&connect_timeout=2",
		"host=127.0.0.1 port=1 user=u password=s3cret dbname=db sslmode=disable connect_timeout=2",
	} {
		_, err := Open(ctx, raw, Options{})
		if !errors.Is(err, stem.ErrUnavailable) {
			t.Fatalf("Open of a closed port returned %v, want stem.ErrUnavailable", err)
		}
		if strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "127.0.0.1") {
			t.Fatalf("error shows the password or hides the host: %v", err)
		}
	}
	for _, bad := range []string{
		"postgres://u:s3cret@127.0.0.1:notaport/db",
		"postgres://u:s3cret@127.0.0.1/db?sslmode=bogus",
		"redis://u:s3cret@127.0.0.1/0",
	} {
		_, err := Open(ctx, bad, Options{})
		if err == nil || errors.Is(err, stem.ErrUnavailable) {
			t.Fatalf("Open(%q) = %v, want a URL error", bad, err)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Fatalf("error shows the password: %v", err)
		}
	}
	for _, o := range []Options{
		{Namespace: `a"b`}, {Namespace: "a b"}, {Namespace: strings.Repeat("n", 59)},
		{Schema: "pg_catalog"}, {DeadLetterCap: -1}, {ResultTTL: time.Microsecond},
	} {
		if _, err := Open(ctx, "postgres://127.0.0.1:1/db", o); err == nil || errors.Is(err, stem.ErrUnavailable) {
			t.Fatalf("Open with %+v = %v, want an option error", o, err)
		}
	}
}

// TestNotStemSchema opens an engine on a schema holding another program's
// tables: refused, naming the schema, and left untouched.
func TestNotStemSchema(t *testing.T) {
	t.Parallel()
	raw := testURL(t)
	ns := randomNamespace()
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, raw)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	t.Cleanup(func() { dropSchema(t, raw, ns) })
	q := pgx.Identifier{ns}.Sanitize()
	if _, err := conn.Exec(ctx, `CREATE SCHEMA `+q+`; CREATE TABLE `+q+`.invoices (id int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	_, err = Open(ctx, raw, Options{Namespace: ns})
	if !errors.Is(err, ErrNotStemSchema) || !strings.Contains(err.Error(), ns) {
		t.Fatalf("Open on a foreign schema = %v; want ErrNotStemSchema naming %s", err, ns)
	}
	var tables int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = $1`, ns).Scan(&tables); err != nil || tables != 1 {
		t.Fatalf("the foreign schema now has %d tables (%v)", tables, err)
	}
}

func TestSchemaTooNew(t *testing.T) {
	t.Parallel()
	raw := testURL(t)
	e := openTestEngine(t, raw, Options{})
	if _, err := e.pool.Exec(t.Context(), `INSERT INTO `+pgx.Identifier{e.Schema()}.Sanitize()+`.schema_version (version, description) VALUES ($1, 'from the future')`, SchemaVersion+98); err != nil {
		t.Fatal(err)
	}
	_, err := Open(t.Context(), raw, Options{Namespace: e.Namespace()})
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Open of a newer schema = %v; want ErrSchemaTooNew", err)
	}
	for _, want := range []string{e.Schema(), fmt.Sprintf("version %d", SchemaVersion+98), fmt.Sprintf("up to %d", SchemaVersion)} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not name %q", err, want)
		}
	}
}

// TestConcurrentOpen opens one new schema from several engines at once
// (workers starting together): each migration is applied once.
func TestConcurrentOpen(t *testing.T) {
	t.Parallel()
	raw := testURL(t)
	ns := randomNamespace()
	t.Cleanup(func() { dropSchema(t, raw, ns) })
	errs := make(chan error, 6)
	for range 6 {
		go func() {
			e, err := Open(t.Context(), raw, Options{Namespace: ns, MaxConns: 1})
			if err == nil {
				err = e.Publish(t.Context(), broker.Envelope{ID: "x", Name: "n", Queue: "q"})
				_ = e.Close()
			}
			errs <- err
		}()
	}
	for range 6 {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent Open: %v", err)
		}
	}
	e := openTestEngine(t, raw, Options{Namespace: ns})
	var rows int
	if err := e.pool.QueryRow(t.Context(), `SELECT count(*) FROM `+pgx.Identifier{ns}.Sanitize()+`.schema_version`).Scan(&rows); err != nil || rows != SchemaVersion {
		t.Fatalf("schema_version has %d rows (%v), want %d", rows, err, SchemaVersion)
	}
	if n, err := e.PendingCount(t.Context(), "q"); err != nil || n != 6 {
		t.Fatalf("PendingCount = %d, %v; want 6", n, err)
	}
}

// TestBatchIsOneTransaction checks what Publish, Claim and Nack rely on:
// the statements of one pgx batch commit or roll back together.
func TestBatchIsOneTransaction(t *testing.T) {
	t.Parallel()
	e := newTestEngine(t, Options{})
	ctx := t.Context()
	b := &pgx.Batch{}
	b.Queue(e.q.publish, []string{"q"}, []string{"a"}, [][]byte{[]byte(`{}`)}, []int64{0})
	b.Queue(`SELECT 1 / 0`)
	if err := e.pool.SendBatch(ctx, b).Close(); err == nil {
		t.Fatal("a batch with a failing statement succeeded")
	}
	if n, err := e.PendingCount(ctx, "q"); err != nil || n != 0 {
		t.Fatalf("PendingCount after a failed batch = %d, %v; want 0 (rolled back)", n, err)
	}
}

// TestListenerReconnect kills the engine's listening connection on the
// server: it must listen again, and a publish must then wake a waiting
// claim through a notification (the claim's Wait is long and the queue
// has no due time, so only a notification can wake it in time).
func TestListenerReconnect(t *testing.T) {
	t.Parallel()
	raw := testURL(t)
	app := "stemtest-" + randomNamespace()[9:]
	sep := "?"
	if strings.Contains(raw, "?") {
		sep = "&"
	}
	e := openTestEngine(t, raw+sep+"application_name="+app, Options{})
	ctx := t.Context()
	// A claim waits, so the listener runs; it keeps waiting (on a queue
	// nobody publishes to) until the test ends.
	_ = waitingClaim(t, e, "q")
	testutil.Eventually(t, 10*time.Second, e.listen.listening, "never listened")
	if e.listen.sessionCount() != 1 {
		t.Fatalf("sessions = %d, want 1", e.listen.sessionCount())
	}
	var killed int
	err := e.pool.QueryRow(ctx, `SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) AS k`, app+"-listener").Scan(&killed)
	if err != nil || killed != 1 {
		t.Fatalf("terminated %d listening backends (%v), want 1", killed, err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return e.listen.sessionCount() >= 2 && e.listen.listening() }, "the listener did not reconnect")
	// A claim that starts waiting now, with the listener live, sets no
	// poll timer: only a notification can wake it within its 20 s Wait.
	second := waitingClaim(t, e, "q2")
	pause(t, 50*time.Millisecond)
	if err := e.Publish(ctx, broker.Envelope{ID: "after", Name: "n", Queue: "q2"}); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-second:
		if c.err != nil || len(c.ds) != 1 {
			t.Fatalf("claim after the reconnection = %+v, %v", c.ds, c.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a publish after the reconnection did not wake the waiting claim")
	}
}

// claimResult is what waitingClaim reports.
type claimResult struct {
	ds  []broker.Delivery
	err error
	at  time.Time
}

// waitingClaim starts a claim on queue with a 20 s Wait and returns where
// its result will arrive.
func waitingClaim(t *testing.T, e *Engine, queue string) <-chan claimResult {
	out := make(chan claimResult, 1)
	go func() {
		ds, err := e.Claim(t.Context(), broker.ClaimParams{Queues: []string{queue}, Max: 10, Lease: time.Minute, Wait: 20 * time.Second})
		out <- claimResult{ds, err, time.Now()}
	}()
	return out
}

// pause waits d on a timer. It only shapes a scenario; no assertion
// depends on it.
func pause(t *testing.T, d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-t.Context().Done():
	}
}

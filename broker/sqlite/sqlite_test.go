package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/broker/conformance"
)

func TestMain(m *testing.M) {
	if helper := os.Getenv(helperEnv); helper != "" {
		os.Exit(runHelper(helper))
	}
	goleak.VerifyTestMain(m)
}

// newTestEngine opens an Engine on a fresh file in t.TempDir(), closed at
// cleanup.
func newTestEngine(tb testing.TB, opts Options) *Engine {
	tb.Helper()
	return openTestEngine(tb, filepath.Join(tb.TempDir(), "stem.db"), opts)
}

// openTestEngine opens an Engine on path, closed at cleanup.
func openTestEngine(tb testing.TB, path string, opts Options) *Engine {
	tb.Helper()
	e, err := Open(tb.Context(), path, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = e.Close() })
	return e
}

// conformanceEngine returns e's roles and the hooks the contract suite
// needs to reach behind them.
func conformanceEngine(e *Engine) conformance.Engine {
	return conformance.Engine{
		Broker: e, Results: e, Registry: e, Control: e, Pauses: e, Revokes: e.Revokes(),
		PublishCorrupt: func(ctx context.Context, queue string) error {
			_, err := e.wdb.ExecContext(ctx, sqlInsertTask, e.ns, queue, "corrupt", []byte("not json"), 0)
			return err
		},
		StoredResults: func(ctx context.Context, id string) (int, error) {
			var n int
			err := e.rdb.QueryRowContext(ctx, `SELECT count(*) FROM stem_results WHERE ns = ? AND task_id = ?`, e.ns, id).Scan(&n)
			return n, err
		},
		SweepDue:               func() { e.lastSweep.Store(nowMs() - sweepInterval.Milliseconds() - 1) },
		CloseEndsSubscriptions: true,
		// Another Engine on the file wakes through the data_version
		// watcher, not the in-process wake-up; there is no subscription
		// state to wait for (WakeReady nil).
		Peer: func(t *testing.T) conformance.Engine {
			return conformanceEngine(openTestEngine(t, e.path, Options{Namespace: e.ns}))
		},
	}
}

// engineOptions are the engine options a conformance test asks for.
func engineOptions(opts conformance.Options) Options {
	return Options{ResultTTL: opts.ResultTTL, DeadLetterCap: opts.DeadLetterCap}
}

// TestConformance runs the contract suite, every engine on a file of its
// own.
func TestConformance(t *testing.T) {
	conformance.Exercise(t, conformance.WithOptions(func(t *testing.T, opts conformance.Options) conformance.Engine {
		return conformanceEngine(newTestEngine(t, engineOptions(opts)))
	}))
}

// TestConformanceSharedFile runs the suite with every engine on one file
// under its own namespace (namespaces must not see each other's rows),
// and with control messages and pauses crossing from one Engine to
// another of the same file and namespace, as between two processes:
// subscriptions and reads on one, publishes and writes on the other.
func TestConformanceSharedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shared.db")
	var n atomic.Int64
	conformance.Exercise(t, conformance.WithOptions(func(t *testing.T, opts conformance.Options) conformance.Engine {
		o := engineOptions(opts)
		o.Namespace = "ns-" + strconv.FormatInt(n.Add(1), 10)
		e := conformanceEngine(openTestEngine(t, path, o))
		split := splitEngine{sub: e.Broker.(*Engine), pub: openTestEngine(t, path, o)}
		e.Control, e.Pauses = split, split
		// Closing the Broker closes the subscribing Engine only, not the
		// publishing one.
		e.CloseEndsSubscriptions = false
		// TestConformance tests peers; here every write contends with the
		// whole suite's on one file, so a wake-up's latency would measure
		// the file lock.
		e.Peer = nil
		// The revoke table is keyed by revoke namespace only (the CLI uses
		// the engine's namespace for both), and the revoke tests reuse
		// theirs: on one file they would see each other's entries.
		e.Revokes = nil
		return e
	}))
}

func TestParseTarget(t *testing.T) {
	t.Parallel()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		in, path string
		sync     string
		busy     time.Duration
	}{
		{in: "/var/lib/stem/stem.db", path: "/var/lib/stem/stem.db"},
		{in: "rel/stem.db", path: filepath.Join(wd, "rel/stem.db")},
		{in: "sqlite:///var/lib/stem/stem.db", path: "/var/lib/stem/stem.db"},
		{in: "SQLITE:///var/lib/stem/stem.db", path: "/var/lib/stem/stem.db"},
		{in: "sqlite://localhost/srv/s.db", path: "/srv/s.db"},
		{in: "sqlite:rel/stem.db", path: filepath.Join(wd, "rel/stem.db")},
		{in: "sqlite:/abs/stem.db", path: "/abs/stem.db"},
		{in: "sqlite:///a%20b/c%3Fd.db", path: "/a b/c?d.db"},
		{in: "sqlite:///x.db?synchronous=NORMAL&busy_timeout=30s", path: "/x.db", sync: "normal", busy: 30 * time.Second},
	} {
		var o Options
		got, err := parseTarget(tc.in, &o)
		if err != nil {
			t.Errorf("parseTarget(%q): %v", tc.in, err)
			continue
		}
		if got != tc.path || o.Synchronous != tc.sync || o.BusyTimeout != tc.busy {
			t.Errorf("parseTarget(%q) = %q, sync %q, busy %v; want %q, %q, %v", tc.in, got, o.Synchronous, o.BusyTimeout, tc.path, tc.sync, tc.busy)
		}
	}
	for _, bad := range []string{
		"", "sqlite://stem.db", "sqlite://host/x.db", "sqlite://", "sqlite:///x.db?mode=ro",
		"sqlite:///x.db?busy_timeout=soon", "sqlite://u:s3cret@/x.db",
	} {
		var o Options
		_, err := parseTarget(bad, &o)
		if err == nil {
			t.Errorf("parseTarget(%q) accepted it", bad)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error shows the password: %v", err)
		}
	}
	if _, err := Open(t.Context(), "sqlite:///x.db?synchronous=off", Options{}); err == nil || !strings.Contains(err.Error(), "synchronous") {
		t.Errorf("Open with synchronous=off: %v", err)
	}
}

func TestSynchronous(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct {
		target string
		want   int
	}{
		{filepath.Join(dir, "full.db"), 2},
		{"sqlite://" + filepath.Join(dir, "normal.db") + "?synchronous=normal", 1},
	} {
		e := openTestEngine(t, tc.target, Options{})
		var mode string
		var sync int
		if err := e.wdb.QueryRowContext(t.Context(), `PRAGMA journal_mode`).Scan(&mode); err != nil {
			t.Fatal(err)
		}
		if err := e.wdb.QueryRowContext(t.Context(), `PRAGMA synchronous`).Scan(&sync); err != nil {
			t.Fatal(err)
		}
		if mode != "wal" || sync != tc.want {
			t.Errorf("%s: journal_mode %s, synchronous %d; want wal, %d", tc.target, mode, sync, tc.want)
		}
	}
}

// TestReopen checks that reopening a database keeps its data and applies
// no migration twice, and that many Opens of a new file at once (several
// processes starting together) all succeed.
func TestReopen(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "stem.db")
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			e, err := Open(t.Context(), path, Options{})
			if err == nil {
				err = e.Publish(t.Context(), broker.Envelope{ID: "x", Name: "n", Queue: "q"})
				_ = e.Close()
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent Open: %v", err)
		}
	}
	e := openTestEngine(t, path, Options{})
	if n, err := e.PendingCount(t.Context(), "q"); err != nil || n != 8 {
		t.Fatalf("PendingCount after reopen = %d, %v; want 8", n, err)
	}
	var rows int
	if err := e.rdb.QueryRowContext(t.Context(), `SELECT count(*) FROM stem_schema_version`).Scan(&rows); err != nil || rows != SchemaVersion {
		t.Fatalf("stem_schema_version has %d rows (%v), want %d", rows, err, SchemaVersion)
	}
}

func TestOpenNotStem(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := t.Context()

	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("this is not a database\n", 200)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(ctx, garbage, Options{})
	if !errors.Is(err, ErrNotStemDatabase) || !strings.Contains(err.Error(), garbage) {
		t.Fatalf("Open of a text file = %v; want ErrNotStemDatabase naming %s", err, garbage)
	}

	// Another program's SQLite database: refused, and left as it was
	// (not switched to WAL, no table added).
	foreign := filepath.Join(dir, "foreign.db")
	db, err := sql.Open("sqlite", foreign)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)`); err != nil {
		t.Fatal(err)
	}
	_, err = Open(ctx, foreign, Options{})
	if !errors.Is(err, ErrNotStemDatabase) || !strings.Contains(err.Error(), foreign) {
		t.Fatalf("Open of another program's database = %v; want ErrNotStemDatabase naming %s", err, foreign)
	}
	var mode string
	var tables int
	if err := db.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema WHERE type = 'table'`).Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if mode != "delete" || tables != 1 {
		t.Fatalf("refused database was changed: journal_mode %s, %d tables", mode, tables)
	}
	// Another program's application id, even without tables.
	if _, err := db.ExecContext(ctx, `DROP TABLE invoices; PRAGMA application_id = 42`); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	if _, err := Open(ctx, foreign, Options{}); !errors.Is(err, ErrNotStemDatabase) || !strings.Contains(err.Error(), "0x2a") {
		t.Fatalf("Open of a database with application id 42 = %v", err)
	}

	// A directory where the file should be.
	if _, err := Open(ctx, dir, Options{}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("Open of a directory = %v", err)
	}
}

func TestOpenSchemaTooNew(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "stem.db")
	e := openTestEngine(t, path, Options{})
	if _, err := e.wdb.ExecContext(t.Context(), `INSERT INTO stem_schema_version (version, applied_at, description) VALUES (?, 0, 'from the future')`, SchemaVersion+98); err != nil {
		t.Fatal(err)
	}
	_ = e.Close()
	_, err := Open(t.Context(), path, Options{})
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Open of a newer schema = %v; want ErrSchemaTooNew", err)
	}
	for _, want := range []string{path, fmt.Sprintf("version %d", SchemaVersion+98), fmt.Sprintf("up to %d", SchemaVersion)} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not name %q", err, want)
		}
	}
}

func TestOpenBadDirectory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "plain-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(file, "stem.db"), "is not a directory"},
		{filepath.Join(file, "sub", "stem.db"), "is not a directory"},
		{filepath.Join(dir, "missing", "stem.db"), "does not exist"},
	} {
		_, err := Open(t.Context(), tc.path, Options{})
		if err == nil || !strings.Contains(err.Error(), tc.path) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%s) = %v; want an error naming the path and saying %q", tc.path, err, tc.want)
		}
	}
}

// TestOpenUnwritableDirectory opens a database in a directory the user
// cannot write. Run as root (who may write anywhere), it re-runs the test
// binary as the user nobody against a root-owned directory.
func TestOpenUnwritableDirectory(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "locked")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "stem.db")
	var msg string
	if os.Geteuid() != 0 {
		if err := os.Chmod(dir, 0o555); err != nil {
			t.Fatal(err)
		}
		_, err := Open(t.Context(), path, Options{})
		if err == nil {
			t.Fatal("Open in a read-only directory succeeded")
		}
		msg = err.Error()
	} else {
		out := runAsNobody(t, "open", path)
		msg = strings.TrimSpace(out)
	}
	if !strings.Contains(msg, "not writable") || !strings.Contains(msg, dir) {
		t.Fatalf("Open in an unwritable directory: %q; want an error naming %s as not writable", msg, dir)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a file was created anyway: %v", err)
	}
}

// TestBusy checks that a write blocked past the busy timeout by another
// connection's write lock fails with stem.ErrUnavailable naming the
// path, and works again once the lock is released.
func TestBusy(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "stem.db")
	e := openTestEngine(t, path, Options{BusyTimeout: 100 * time.Millisecond})
	other, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx := t.Context()
	conn, err := other.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `BEGIN IMMEDIATE`); err != nil {
		t.Fatal(err)
	}
	err = e.Publish(ctx, broker.Envelope{ID: "a", Name: "n", Queue: "q"})
	if !errors.Is(err, stem.ErrUnavailable) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Publish while another process holds the write lock = %v; want stem.ErrUnavailable naming %s", err, path)
	}
	// Reads go on meanwhile (WAL).
	if _, err := e.PendingCount(ctx, "q"); err != nil {
		t.Fatalf("PendingCount during another's write: %v", err)
	}
	if _, err := conn.ExecContext(ctx, `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
	if err := e.Publish(ctx, broker.Envelope{ID: "a", Name: "n", Queue: "q"}); err != nil {
		t.Fatalf("Publish after the lock was released: %v", err)
	}
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

// ctxTimeout returns a context that ends after d or with the test.
func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

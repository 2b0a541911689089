package revoke_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/stemerr"

	stemsqlite "github.com/stemhq/stem/broker/sqlite"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/control/revoke/revoketest"
)

// newStemDB makes a stem SQLite database (as a worker's engine would) and
// returns its path.
func newStemDB(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "stem.db")
	e, err := stemsqlite.Open(t.Context(), path, stemsqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func openSQLiteStore(t *testing.T, target string) *revoke.SQLiteStore {
	t.Helper()
	s, err := revoke.OpenSQLite(t.Context(), target, revoke.SQLiteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestSQLiteContract(t *testing.T) {
	revoketest.Run(t, func(t *testing.T) revoke.Store { return openSQLiteStore(t, newStemDB(t)) })
}

// TestSQLiteSharesTheEngineFile opens the store through revoke.Open on the
// file an engine is using: both keep working, a second store (another
// process) sees the entries, and the engine reopens the file.
func TestSQLiteSharesTheEngineFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "stem.db")
	ctx := t.Context()
	e, err := stemsqlite.Open(ctx, "sqlite://"+path, stemsqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	s, err := revoke.Open(ctx, "sqlite://"+path+"?busy_timeout=5s&synchronous=normal", revoke.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, ok := s.(*revoke.SQLiteStore); !ok || got.Path() != path {
		t.Fatalf("Open(sqlite://%s) = %T", path, s)
	}
	entry := revoke.Entry{Namespace: "ns", TaskID: "t1", Version: 5, Reason: "r", IssuedAt: time.Now()}
	if _, err := s.Upsert(ctx, []revoke.Entry{entry}); err != nil {
		t.Fatal(err)
	}
	if err := e.Pause(ctx, []broker.Pause{{Namespace: "ns", Queue: "q"}}); err != nil {
		t.Fatalf("the engine after the store created its table: %v", err)
	}
	other := openSQLiteStore(t, path)
	got, err := other.List(ctx, "ns")
	if err != nil || len(got) != 1 || revoketest.Same(got[0], entry) != "" {
		t.Fatalf("another store on the file lists %v, %v", got, err)
	}
	again, err := stemsqlite.Open(ctx, path, stemsqlite.Options{})
	if err != nil {
		t.Fatalf("the engine refuses the file after the store created its table: %v", err)
	}
	_ = again.Close()
}

// TestSQLiteTwoStoresConcurrently upserts one task from two stores on one
// file (two processes, as far as SQLite is concerned): the highest version
// wins.
func TestSQLiteTwoStoresConcurrently(t *testing.T) {
	t.Parallel()
	path := newStemDB(t)
	stores := []*revoke.SQLiteStore{openSQLiteStore(t, path), openSQLiteStore(t, path)}
	ctx := t.Context()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for i, s := range stores {
		wg.Go(func() {
			for v := i + 1; v <= 100; v += 2 {
				if _, err := s.Upsert(ctx, []revoke.Entry{{Namespace: "ns", TaskID: "t", Version: int64(v)}}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got, err := stores[0].List(ctx, "ns")
	if err != nil || len(got) != 1 || got[0].Version != 100 {
		t.Fatalf("List = %v, %v; want version 100", got, err)
	}
}

// TestSQLiteExtremeTimes round-trips the first and last years an entry may
// carry, to the nanosecond, and prunes by them.
func TestSQLiteExtremeTimes(t *testing.T) {
	t.Parallel()
	s := openSQLiteStore(t, newStemDB(t))
	ctx := t.Context()
	early := revoke.Entry{Namespace: "ns", TaskID: "early", Version: 1,
		IssuedAt: time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC), ExpiresAt: time.Date(1, 1, 2, 0, 0, 0, 0, time.UTC)}
	late := revoke.Entry{Namespace: "ns", TaskID: "late", Version: 2,
		IssuedAt: time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC), ExpiresAt: time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC)}
	if _, err := s.Upsert(ctx, []revoke.Entry{early, late}); err != nil {
		t.Fatal(err)
	}
	got, err := s.List(ctx, "ns")
	if err != nil || len(got) != 2 || revoketest.Same(got[0], early) != "" || revoketest.Same(got[1], late) != "" {
		t.Fatalf("List = %v, %v", got, err)
	}
	if n, err := s.Prune(ctx, "ns", time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)); err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1 (year 1 only)", n, err)
	}
}

func TestSQLiteOpenForms(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	path := filepath.Join(dir, "stem.db")
	e, err := stemsqlite.Open(t.Context(), path, stemsqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_ = e.Close()
	for _, target := range []string{"sqlite://" + path, "SQLITE://localhost" + path, "sqlite:stem.db", "sqlite:./stem.db?synchronous=NORMAL"} {
		s, err := revoke.Open(t.Context(), target, revoke.Options{})
		if err != nil {
			t.Errorf("Open(%q): %v", target, err)
			continue
		}
		if got := s.(*revoke.SQLiteStore).Path(); got != path {
			t.Errorf("Open(%q) opened %s, want %s", target, got, path)
		}
		_ = s.Close()
	}
	// OpenSQLite also takes a bare path (revoke.Open gives those to the
	// file store).
	if s, err := revoke.OpenSQLite(t.Context(), "stem.db", revoke.SQLiteOptions{}); err != nil || s.Path() != path {
		t.Fatalf("OpenSQLite(bare path) = %v", err)
	} else {
		_ = s.Close()
	}
}

func TestSQLiteOpenBadURLs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ raw, want string }{
		{"sqlite://stem.db", `names host "stem.db"`},
		{"sqlite://u:s3cret@localhost/x.db", "no user or password"},
		{"sqlite:///x.db?mode=ro", `unknown parameter "mode"`},
		{"sqlite:///x.db?busy_timeout=soon", "busy_timeout"},
		{"sqlite://", "names no database file"},
	} {
		_, err := revoke.Open(t.Context(), tc.raw, revoke.Options{URLKey: "STEM_REVOKE_STORE_URL"})
		var ce *stemerr.ConfigError
		if !errors.As(err, &ce) || ce.Key != "STEM_REVOKE_STORE_URL" || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Open(%q) = %v; want a *stemerr.ConfigError for STEM_REVOKE_STORE_URL saying %q, without the password", tc.raw, err, tc.want)
		}
	}
	if _, err := revoke.Open(t.Context(), "sqlite:///x.db?synchronous=sometimes", revoke.Options{}); err == nil || !strings.Contains(err.Error(), "sometimes") {
		t.Errorf("synchronous=sometimes: %v", err)
	}
}

// TestSQLiteOpenNotStem checks the files the store refuses, each with an
// error naming the path and saying why: it never creates a file nor
// touches another program's database.
func TestSQLiteOpenNotStem(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.db")
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	text := filepath.Join(dir, "text.db")
	if err := os.WriteFile(text, []byte(strings.Repeat("not a database\n", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	foreign := filepath.Join(dir, "foreign.db")
	db, err := sql.Open("sqlite", foreign)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE accounts (id INTEGER PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	for _, tc := range []struct{ path, want string }{
		{missing, "does not exist"},
		{empty, "empty"},
		{text, "not an SQLite database"},
		{foreign, "1 table(s) of another program"},
		{dir, "not a regular file"},
	} {
		_, err := revoke.OpenSQLite(t.Context(), "sqlite://"+tc.path, revoke.SQLiteOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.path) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("OpenSQLite(%s) = %v; want an error naming the path and %q", tc.path, err, tc.want)
		}
		if tc.path != dir && !errors.Is(err, revoke.ErrNotStemSQLite) {
			t.Errorf("OpenSQLite(%s) = %v; want ErrNotStemSQLite", tc.path, err)
		}
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OpenSQLite created %s", missing)
	}
	// The foreign database is untouched: the engine's verdict is unchanged.
	if _, err := stemsqlite.Open(t.Context(), foreign, stemsqlite.Options{}); !errors.Is(err, stemsqlite.ErrNotStemDatabase) {
		t.Errorf("engine on the foreign file: %v", err)
	}
	// An empty file stays usable by the engine.
	e, err := stemsqlite.Open(t.Context(), empty, stemsqlite.Options{})
	if err != nil {
		t.Fatalf("engine on the empty file the store refused: %v", err)
	}
	_ = e.Close()
	s, err := revoke.OpenSQLite(context.Background(), empty, revoke.SQLiteOptions{})
	if err != nil {
		t.Fatalf("store on the file the engine made a stem database: %v", err)
	}
	_ = s.Close()
}

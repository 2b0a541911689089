package sqlite

import (
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stemhq/stem/broker/conformance"
	"github.com/stemhq/stem/control/revoke"
)

// TestRevokesTwoEnginesConcurrently upserts one task from two engines on
// one file (two processes, as far as SQLite is concerned): the highest
// version wins.
func TestRevokesTwoEnginesConcurrently(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "stem.db")
	stores := []revoke.Store{openTestEngine(t, path, Options{}).Revokes(), openTestEngine(t, path, Options{}).Revokes()}
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

// TestRevokeExtremeTimes round-trips the first and last years an entry may
// carry, to the nanosecond, and prunes by them.
func TestRevokeExtremeTimes(t *testing.T) {
	t.Parallel()
	s := newTestEngine(t, Options{}).Revokes()
	ctx := t.Context()
	early := revoke.Entry{Namespace: "ns", TaskID: "early", Version: 1,
		IssuedAt: time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC), ExpiresAt: time.Date(1, 1, 2, 0, 0, 0, 0, time.UTC)}
	late := revoke.Entry{Namespace: "ns", TaskID: "late", Version: 2,
		IssuedAt: time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC), ExpiresAt: time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC)}
	if _, err := s.Upsert(ctx, []revoke.Entry{early, late}); err != nil {
		t.Fatal(err)
	}
	got, err := s.List(ctx, "ns")
	if err != nil || len(got) != 2 || conformance.SameEntry(got[0], early) != "" || conformance.SameEntry(got[1], late) != "" {
		t.Fatalf("List = %v, %v", got, err)
	}
	if n, err := s.Prune(ctx, "ns", time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)); err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1 (year 1 only)", n, err)
	}
}

// TestRevokesKeptAcrossTheUpgrade: a file whose revoke table was made by
// the revoke store of schema version 3 or older (without the sig column,
// as before records were signed) keeps its revokes when migration 4 makes
// the table the engine's.
func TestRevokesKeptAcrossTheUpgrade(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stem.db")
	e := openTestEngine(t, path, Options{})
	ctx := t.Context()
	for _, stmt := range []string{
		`DROP TABLE stem_revokes`,
		`CREATE TABLE stem_revokes (namespace TEXT NOT NULL, task_id TEXT NOT NULL, version INTEGER NOT NULL CHECK (version > 0),
			issued_at TEXT, terminate INTEGER NOT NULL DEFAULT 0, reason TEXT NOT NULL DEFAULT '', requested_by TEXT NOT NULL DEFAULT '',
			expires_at TEXT, updated_at INTEGER NOT NULL, PRIMARY KEY (namespace, task_id)) WITHOUT ROWID`,
		`INSERT INTO stem_revokes (namespace, task_id, version, terminate, reason, updated_at) VALUES ('stem', 'old', 7, 1, 'before the upgrade', 0)`,
		`DELETE FROM stem_schema_version WHERE version = 4`,
	} {
		if _, err := e.wdb.ExecContext(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	_ = e.Close()
	up := openTestEngine(t, path, Options{})
	got, err := up.Revokes().List(ctx, "stem")
	if err != nil || len(got) != 1 || got[0].TaskID != "old" || got[0].Version != 7 || !got[0].Terminate || got[0].Reason != "before the upgrade" {
		t.Fatalf("after the upgrade: List = %+v, %v; want the old revoke", got, err)
	}
	signed := revoke.Entry{Namespace: "stem", TaskID: "old", Version: 8}.Sign([]byte("k"))
	if stored, err := up.Revokes().Upsert(ctx, []revoke.Entry{signed}); err != nil || stored[0].Sig != signed.Sig {
		t.Fatalf("a signed revoke after the upgrade: %+v, %v", stored, err)
	}
}

package revoke_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/control/revoke/revoketest"
	"github.com/stemhq/stem/internal/testutil"
	"github.com/stemhq/stem/stemerr"
)

// postgresPool connects to STEM_TEST_POSTGRES_URL, or skips.
func postgresPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	raw := testutil.EnvOrSkip(t, "STEM_TEST_POSTGRES_URL")
	pool, err := pgxpool.New(context.Background(), raw)
	if err != nil {
		t.Fatalf("STEM_TEST_POSTGRES_URL: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// newPostgresStore builds a store on its own table, dropped at cleanup.
func newPostgresStore(t *testing.T, pool *pgxpool.Pool) *revoke.PostgresStore {
	t.Helper()
	table := uniqueName("stemtest_revokes_")
	s, err := revoke.NewPostgres(context.Background(), pool, revoke.PostgresOptions{Table: table})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = s.Close()
		if _, err := pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+pgx.Identifier{table}.Sanitize()); err != nil {
			t.Errorf("dropping %s: %v", table, err)
		}
	})
	return s
}

func TestPostgresContract(t *testing.T) {
	pool := postgresPool(t)
	revoketest.Run(t, func(t *testing.T) revoke.Store { return newPostgresStore(t, pool) })
}

func TestPostgresMigrationIdempotentAndConcurrent(t *testing.T) {
	pool := postgresPool(t)
	table := uniqueName("stemtest_revokes_")
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+pgx.Identifier{table}.Sanitize())
	})
	ctx := context.Background()
	// Several processes starting at once all run the migration.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			s, err := revoke.NewPostgres(ctx, pool, revoke.PostgresOptions{Table: table})
			if err == nil {
				err = s.Close()
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent migration: %v", err)
		}
	}
	s, err := revoke.NewPostgres(ctx, pool, revoke.PostgresOptions{Table: table})
	if err != nil {
		t.Fatalf("migration on an existing table: %v", err)
	}
	defer s.Close()
	// The primary key is (namespace, task_id) (defect 12 keyed on the task
	// id alone).
	var def string
	err = pool.QueryRow(ctx, `SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
		WHERE c.conrelid = $1::regclass AND c.contype = 'p'`, table).Scan(&def)
	if err != nil || def != "PRIMARY KEY (namespace, task_id)" {
		t.Fatalf("primary key = %q, %v", def, err)
	}
}

func TestPostgresSchemaQualifiedTable(t *testing.T) {
	pool := postgresPool(t)
	ctx := context.Background()
	schema := uniqueName("stemtest_schema_")
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE") })
	s, err := revoke.NewPostgres(ctx, pool, revoke.PostgresOptions{Table: schema + ".revokes"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Upsert(ctx, []revoke.Entry{{Namespace: "ns", TaskID: "t", Version: 1}}); err != nil {
		t.Fatal(err)
	}
}

func TestPostgresOptions(t *testing.T) {
	for _, table := range []string{"a.b.c", "1abc", "has space", `quo"te`, strings.Repeat("x", 51), ""} {
		o := revoke.PostgresOptions{Table: table}
		if table == "" {
			o.Table = "."
		}
		if err := o.Validate(); err == nil {
			t.Errorf("table %q accepted", o.Table)
		}
	}
	if err := (revoke.PostgresOptions{}).WithDefaults().Validate(); err != nil {
		t.Errorf("default table rejected: %v", err)
	}
}

func TestPostgresUnavailable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := revoke.OpenPostgres(ctx, "postgres://stem:s3cret@127.0.0.1:1/stem?sslmode=disable&connect_timeout=5", revoke.PostgresOptions{})
	if !errors.Is(err, stemerr.ErrUnavailable) {
		t.Fatalf("OpenPostgres on a closed port: %v; want stemerr.ErrUnavailable", err)
	}
	if strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("error %q leaks the password or does not name the server", err)
	}
	_, err = revoke.OpenPostgres(ctx, "postgres://stem:s3cret@127.0.0.1:5432/stem?sslmode=bogus", revoke.PostgresOptions{})
	var ce *stemerr.ConfigError
	if !errors.As(err, &ce) || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("bad sslmode: %v; want a *stemerr.ConfigError without the password", err)
	}
}

func TestPostgresRefusesNUL(t *testing.T) {
	s := newPostgresStore(t, postgresPool(t))
	_, err := s.Upsert(context.Background(), []revoke.Entry{{Namespace: "ns", TaskID: "t", Version: 1, Reason: "a\x00b"}})
	// Entry.Validate refuses it for every store, before any server sees it.
	if err == nil || !strings.Contains(err.Error(), "NUL byte") {
		t.Fatalf("Upsert with a NUL byte: %v; want a validation error", err)
	}
}

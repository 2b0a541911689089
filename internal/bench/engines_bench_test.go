package main

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	stempostgres "github.com/stemhq/stem/broker/postgres"
	stemsqlite "github.com/stemhq/stem/broker/sqlite"
	"github.com/stemhq/stem/internal/bench/workerbench"
	"github.com/stemhq/stem/internal/testutil"
)

// The benchmarks that run a real worker on an engine (they were in the
// engines' bench_test.go; the worker runtime stays out of broker/). Run one
// at a time on a shared machine, e.g.:
//
//	go test -run '^$' -bench 'SQLite/WorkerBurnDown' -benchtime 1x ./internal/bench/
//
// Postgres benchmarks run against STEM_TEST_POSTGRES_URL (skipped without
// it, failed under CI) under a fresh schema each, dropped afterwards.

// burnDownTasks is how many no-op tasks a burn-down drains.
const burnDownTasks = 50000

// openSQLite opens an Engine on path, closed at cleanup.
func openSQLite(b *testing.B, path string, opts stemsqlite.Options) *stemsqlite.Engine {
	b.Helper()
	e, err := stemsqlite.Open(b.Context(), path, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = e.Close() })
	return e
}

// openPostgres opens an Engine on STEM_TEST_POSTGRES_URL under namespace
// (a fresh one when empty); at cleanup it closes it and, when it made the
// namespace, drops its schema.
func openPostgres(b *testing.B, namespace string) *stempostgres.Engine {
	b.Helper()
	raw := testutil.EnvOrSkip(b, "STEM_TEST_POSTGRES_URL")
	fresh := namespace == ""
	if fresh {
		namespace = fmt.Sprintf("stembench_%d", time.Now().UnixNano())
	}
	e, err := stempostgres.Open(b.Context(), raw, stempostgres.Options{Namespace: namespace})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = e.Close()
		if !fresh {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, raw)
		if err != nil {
			b.Errorf("cleanup: %v", err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{e.Schema()}.Sanitize()+` CASCADE`); err != nil {
			b.Errorf("cleanup: drop schema %s: %v", e.Schema(), err)
		}
	})
	return e
}

// pendingLeft counts the tasks still ready in the default queue, the
// burn-down's check that nothing was left behind.
func pendingLeft(b *testing.B, e workerbench.Engine) func() (int, error) {
	return func() (int, error) {
		n, err := e.PendingCount(b.Context(), "default")
		return int(n), err
	}
}

// BenchmarkSQLite: the burn-down with each synchronous mode, two workers
// (two Engines, as two processes) draining one file, and the light-load
// latency with tasks published through a second Engine of the file (so
// the wake-up goes through the data_version watcher).
func BenchmarkSQLite(b *testing.B) {
	for _, sync := range []string{stemsqlite.SynchronousFull, stemsqlite.SynchronousNormal} {
		b.Run("WorkerBurnDown/sync="+sync, func(b *testing.B) {
			e := openSQLite(b, filepath.Join(b.TempDir(), "stem.db"), stemsqlite.Options{Synchronous: sync})
			workerbench.Drain(b, []workerbench.Engine{e}, burnDownTasks, pendingLeft(b, e))
		})
	}
	b.Run("TwoWorkersOneFile", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "stem.db")
		e := openSQLite(b, path, stemsqlite.Options{})
		workerbench.Drain(b, []workerbench.Engine{e, openSQLite(b, path, stemsqlite.Options{})}, burnDownTasks, pendingLeft(b, e))
	})
	b.Run("WorkerLightLoad", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "stem.db")
		workerbench.LightLoad(b, openSQLite(b, path, stemsqlite.Options{}), openSQLite(b, path, stemsqlite.Options{}))
	})
}

// BenchmarkPostgres: the burn-down, and the light-load latency with tasks
// published through a second Engine on the namespace (as `stem enqueue` in
// another process would; the wake-up is a NOTIFY).
func BenchmarkPostgres(b *testing.B) {
	b.Run("WorkerBurnDown", func(b *testing.B) {
		e := openPostgres(b, "")
		workerbench.Drain(b, []workerbench.Engine{e}, burnDownTasks, pendingLeft(b, e))
	})
	b.Run("WorkerLightLoad", func(b *testing.B) {
		e := openPostgres(b, "")
		workerbench.LightLoad(b, e, openPostgres(b, e.Namespace()))
	})
}

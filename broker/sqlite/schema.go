package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	sqlite3 "modernc.org/sqlite/lib"
)

// applicationID marks a stem database in the SQLite file header (PRAGMA
// application_id): "STEM" in ASCII.
const applicationID = 0x5354454d

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migration is one numbered schema change.
type migration struct {
	version     int
	description string
	sql         string
}

// migrations are the embedded migrations in version order, read from
// migrations/NNNN_description.sql.
var migrations = mustLoadMigrations(migrationFiles, "migrations")

// SchemaVersion is the schema version this binary writes: the highest
// embedded migration.
var SchemaVersion = migrations[len(migrations)-1].version

// mustLoadMigrations reads and orders the migration files; a malformed
// name or a gap in the numbering is a build mistake and panics at init.
func mustLoadMigrations(fsys fs.FS, dir string) []migration {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		panic(err)
	}
	var out []migration
	for _, ent := range entries {
		name := ent.Name()
		num, desc, ok := strings.Cut(strings.TrimSuffix(name, ".sql"), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			panic("sqlite engine: migration file " + name + " is not named NNNN_description.sql")
		}
		body, err := fs.ReadFile(fsys, path.Join(dir, name))
		if err != nil {
			panic(err)
		}
		out = append(out, migration{version: v, description: strings.ReplaceAll(desc, "_", " "), sql: string(body)})
	}
	slices.SortFunc(out, func(a, b migration) int { return a.version - b.version })
	for i, m := range out {
		if m.version != i+1 {
			panic(fmt.Sprintf("sqlite engine: migration %d is missing", i+1))
		}
	}
	return out
}

// probe checks, on a plain connection, that path is a new file, an empty
// SQLite database or a stem database, and only then switches it to WAL
// mode (a persistent property of the file): another program's database is
// refused untouched. While other processes open the same new file, SQLite
// may report the file busy without waiting (switching to WAL takes an
// exclusive lock); probe retries then, for up to the busy timeout.
func probe(ctx context.Context, path string, o Options) error {
	deadline := time.Now().Add(o.BusyTimeout)
	for {
		err := probeOnce(ctx, path, o)
		code := sqliteCode(err)
		if (code != sqlite3.SQLITE_BUSY && code != sqlite3.SQLITE_LOCKED) || time.Now().After(deadline) {
			return err
		}
		t := time.NewTimer(5 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("sqlite engine: open database %s: %w", path, ctx.Err())
		case <-t.C:
		}
	}
}

func probeOnce(ctx context.Context, path string, o Options) error {
	q := "file:" + escapePath(path) + "?_pragma=busy_timeout(" + strconv.FormatInt(o.BusyTimeout.Milliseconds(), 10) + ")"
	db, err := sql.Open("sqlite", q)
	if err != nil {
		return fmt.Errorf("sqlite engine: open database %s: %w", path, err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	appID, tables, err := identify(ctx, db)
	if err != nil {
		return identifyError(path, err)
	}
	if err := checkIdentity(path, appID, tables); err != nil {
		return err
	}
	var mode string
	if err := db.QueryRowContext(ctx, `PRAGMA journal_mode = WAL`).Scan(&mode); err != nil {
		return identifyError(path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("sqlite engine: database %s: cannot switch to WAL mode (journal mode stays %q)", path, mode)
	}
	return nil
}

// queryer is what identify needs of a *sql.DB or *sql.Tx.
type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// identify reads the file's application id and how many tables it has
// (SQLite's own excluded), in one statement, so from one snapshot.
func identify(ctx context.Context, q queryer) (appID int64, tables int, err error) {
	err = q.QueryRowContext(ctx, `SELECT
    (SELECT application_id FROM pragma_application_id),
    (SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\')`).Scan(&appID, &tables)
	return appID, tables, err
}

// identifyError explains a failure to read the file's header.
func identifyError(path string, err error) error {
	switch sqliteCode(err) {
	case sqlite3.SQLITE_NOTADB:
		return fmt.Errorf("sqlite engine: %s: %w: the file is not an SQLite database (%v)", path, ErrNotStemDatabase, err)
	case sqlite3.SQLITE_CORRUPT:
		return fmt.Errorf("sqlite engine: %s: the database is corrupt: %w", path, err)
	case sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_AUTH:
		return fmt.Errorf("sqlite engine: cannot open database %s: %w", path, err)
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return fmt.Errorf("sqlite engine: database %s stayed locked by another process: %w", path, err)
	}
	return fmt.Errorf("sqlite engine: read database %s: %w", path, err)
}

// checkIdentity accepts a stem database or an empty file.
func checkIdentity(path string, appID int64, tables int) error {
	switch {
	case appID == applicationID:
		return nil
	case appID == 0 && tables == 0:
		return nil // new: the first migration marks it
	case appID == 0:
		return fmt.Errorf("sqlite engine: %s: %w: it is an SQLite database with %d table(s) of another program; give stem a file of its own", path, ErrNotStemDatabase, tables)
	}
	return fmt.Errorf("sqlite engine: %s: %w: its application id is %#x, stem's is %#x; give stem a file of its own", path, ErrNotStemDatabase, appID, applicationID)
}

// migrate brings the schema up to SchemaVersion in one write transaction
// (so processes opening a new file at once apply each migration once),
// refusing a database that is not stem's or whose schema is newer.
func (e *Engine) migrate(ctx context.Context) error {
	tx, err := e.wdb.BeginTx(ctx, nil)
	if err != nil {
		return identifyError(e.path, err)
	}
	defer tx.Rollback()
	appID, tables, err := identify(ctx, tx)
	if err != nil {
		return identifyError(e.path, err)
	}
	if err := checkIdentity(e.path, appID, tables); err != nil {
		return err
	}
	current := 0
	if appID == applicationID {
		if err := tx.QueryRowContext(ctx, `SELECT coalesce(max(version), 0) FROM stem_schema_version`).Scan(&current); err != nil {
			return fmt.Errorf("sqlite engine: %s is marked as a stem database but its schema version cannot be read (damaged?): %w", e.path, err)
		}
	} else {
		// A new database: mark it as stem's (part of this transaction).
		if _, err := tx.ExecContext(ctx, `PRAGMA application_id = `+strconv.Itoa(applicationID)); err != nil {
			return e.fail("mark the database as stem's", err)
		}
	}
	if current > SchemaVersion {
		return fmt.Errorf("sqlite engine: %s: %w: the database has schema version %d, this binary knows versions up to %d; upgrade stem (or open a database of this version)",
			e.path, ErrSchemaTooNew, current, SchemaVersion)
	}
	if current == SchemaVersion {
		return nil // nothing to write; the deferred rollback ends the transaction
	}
	for _, m := range migrations[current:] {
		if m.version == 4 {
			if err := addRevokeSig(ctx, tx); err != nil {
				return fmt.Errorf("sqlite engine: %s: prepare schema migration 4: %w", e.path, err)
			}
		}
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			return fmt.Errorf("sqlite engine: %s: apply schema migration %d (%s): %w", e.path, m.version, m.description, err)
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO stem_schema_version (version, applied_at, description) VALUES (?, ?, ?)`,
			m.version, time.Now().UnixMilli(), m.description); err != nil {
			return fmt.Errorf("sqlite engine: %s: record schema migration %d: %w", e.path, m.version, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return e.fail("commit schema migrations", err)
	}
	return nil
}

// addRevokeSig adds the sig column to a stem_revokes table that a revoke
// store older than schema version 4 made before records were signed
// (SQLite has no ADD COLUMN IF NOT EXISTS).
func addRevokeSig(ctx context.Context, tx *sql.Tx) error {
	var table, sig int
	err := tx.QueryRowContext(ctx, `SELECT
    (SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'stem_revokes'),
    (SELECT count(*) FROM pragma_table_info('stem_revokes') WHERE name = 'sig')`).Scan(&table, &sig)
	if err != nil || table == 0 || sig == 1 {
		return err
	}
	_, err = tx.ExecContext(ctx, `ALTER TABLE stem_revokes ADD COLUMN sig TEXT NOT NULL DEFAULT ''`)
	return err
}

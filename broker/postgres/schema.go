package postgres

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migration is one numbered schema change; its SQL names tables as
// {schema}.table.
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
			panic("postgres engine: migration file " + name + " is not named NNNN_description.sql")
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
			panic(fmt.Sprintf("postgres engine: migration %d is missing", i+1))
		}
	}
	return out
}

// migrate creates the schema if needed and brings it up to SchemaVersion,
// in one transaction holding an advisory lock on the schema's name, so
// engines opening a new schema at once apply each migration once. It
// refuses a schema with tables but no schema_version (not stem's) and one
// whose version is newer than this binary's.
func (e *Engine) migrate(ctx context.Context) error {
	schema := e.opts.Schema
	quoted := pgx.Identifier{schema}.Sanitize()
	op := "migrate schema " + quoted
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return e.fail(op, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	// Params: the lock key's text. Serialises migrations of this schema.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, "stem schema "+schema); err != nil {
		return e.fail(op, err)
	}
	// Params: schema name. Returns: whether it exists, how many tables it
	// holds, and whether one of them is schema_version.
	var exists, hasVersion bool
	var tables int
	err = tx.QueryRow(ctx, `SELECT
    EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
    (SELECT count(*) FROM pg_tables WHERE schemaname = $1),
    EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'schema_version')`, schema).Scan(&exists, &tables, &hasVersion)
	if err != nil {
		return e.fail(op, err)
	}
	current := 0
	switch {
	case hasVersion:
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM `+quoted+`.schema_version`).Scan(&current); err != nil {
			return e.fail(op, err)
		}
	case tables > 0:
		return fmt.Errorf("postgres engine at %s: schema %s: %w: it holds %d table(s) but no schema_version table; choose another namespace or schema for stem",
			e.url, quoted, ErrNotStemSchema, tables)
	case !exists:
		if _, err := tx.Exec(ctx, `CREATE SCHEMA `+quoted); err != nil {
			return e.fail(op+": create it", err)
		}
	}
	if current > SchemaVersion {
		return fmt.Errorf("postgres engine at %s: schema %s: %w: the database has schema version %d, this binary knows versions up to %d; upgrade stem (or use another schema)",
			e.url, quoted, ErrSchemaTooNew, current, SchemaVersion)
	}
	if current == SchemaVersion {
		return nil // the deferred rollback only releases the lock
	}
	for _, m := range migrations[current:] {
		if _, err := tx.Exec(ctx, strings.ReplaceAll(m.sql, "{schema}", quoted)); err != nil {
			return e.fail(fmt.Sprintf("%s: apply migration %d (%s)", op, m.version, m.description), err)
		}
		// Params: version, description.
		if _, err := tx.Exec(ctx, `INSERT INTO `+quoted+`.schema_version (version, description) VALUES ($1, $2)`, m.version, m.description); err != nil {
			return e.fail(fmt.Sprintf("%s: record migration %d", op, m.version), err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return e.fail(op+": commit", err)
	}
	return nil
}

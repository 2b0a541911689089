package revoke

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/stemhq/stem/stemerr"
	msqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// SQLiteTable is the table of the SQLite store.
const SQLiteTable = "stem_revokes"

// Defaults of SQLiteOptions, the same as the SQLite engine's.
const (
	DefaultSQLiteBusyTimeout = 10 * time.Second
	SQLiteSynchronousFull    = "full"
	SQLiteSynchronousNormal  = "normal"
)

// sqliteApplicationID is what the SQLite engine (broker/sqlite) writes in
// the header of a stem database (PRAGMA application_id, "STEM" in ASCII).
// The store only opens files the engine has made stem databases; it does
// not import the engine (broker/sqlite imports the control plane).
const sqliteApplicationID = 0x5354454d

// sqliteSchema creates the store's table; it runs at every open, in a write
// transaction, so processes opening the file together do not collide.
// Times are fixed-width UTC text ("2006-01-02T15:04:05.000000000Z", NULL
// for the zero time), which orders as the times do and holds every year
// an Entry may carry, to the nanosecond.
const sqliteSchema = `CREATE TABLE IF NOT EXISTS stem_revokes (
    namespace    TEXT    NOT NULL,
    task_id      TEXT    NOT NULL,
    version      INTEGER NOT NULL CHECK (version > 0),
    issued_at    TEXT,
    terminate    INTEGER NOT NULL DEFAULT 0,
    reason       TEXT    NOT NULL DEFAULT '',
    requested_by TEXT    NOT NULL DEFAULT '',
    expires_at   TEXT,
    updated_at   INTEGER NOT NULL, -- ms since the epoch
    sig          TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (namespace, task_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS stem_revokes_expiry ON stem_revokes (namespace, expires_at) WHERE expires_at IS NOT NULL`

// sqliteAddSig adds the sig column to a table created before records were
// signed; migrate runs it when pragma_table_info lacks the column.
const sqliteAddSig = `ALTER TABLE stem_revokes ADD COLUMN sig TEXT NOT NULL DEFAULT ''`

// The store's statements, with their parameters and results.
const (
	sqliteCols = "namespace, task_id, version, issued_at, terminate, reason, requested_by, expires_at, sig"

	// sqliteUpsert stores an entry unless the stored one has an equal or
	// higher version.
	// Params: the columns of sqliteCols, updated_at (ms).
	sqliteUpsert = `INSERT INTO stem_revokes (` + sqliteCols + `, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (namespace, task_id) DO UPDATE SET
    version = excluded.version, issued_at = excluded.issued_at, terminate = excluded.terminate,
    reason = excluded.reason, requested_by = excluded.requested_by, expires_at = excluded.expires_at,
    sig = excluded.sig, updated_at = excluded.updated_at
WHERE excluded.version > stem_revokes.version`

	// sqliteGet reads one entry.
	// Params: namespace, task id. Returns: sqliteCols.
	sqliteGet = `SELECT ` + sqliteCols + ` FROM stem_revokes WHERE namespace = ? AND task_id = ?`

	// sqliteList reads a namespace's entries by version, then task id in
	// byte order (BINARY collation).
	// Params: namespace. Returns: sqliteCols.
	sqliteList = `SELECT ` + sqliteCols + ` FROM stem_revokes WHERE namespace = ? ORDER BY version, task_id`

	// sqlitePrune deletes a namespace's entries expired at now.
	// Params: namespace, now (sqliteTime).
	sqlitePrune = `DELETE FROM stem_revokes WHERE namespace = ? AND expires_at IS NOT NULL AND expires_at <= ?`

	// sqliteTrim deletes a namespace's entries beyond the newest keep.
	// Params: namespace, namespace, keep.
	sqliteTrim = `DELETE FROM stem_revokes WHERE namespace = ? AND task_id IN (
    SELECT task_id FROM stem_revokes WHERE namespace = ? ORDER BY version DESC, task_id DESC LIMIT -1 OFFSET ?)`
)

// sqliteTimeLayout is fixed-width for years 1 to 9999, so text order is
// time order.
const sqliteTimeLayout = "2006-01-02T15:04:05.000000000Z"

// SQLiteOptions configure a SQLiteStore. The URL parameters busy_timeout
// and synchronous override them, as for the SQLite engine.
type SQLiteOptions struct {
	// BusyTimeout bounds the wait for another process's write lock;
	// DefaultSQLiteBusyTimeout when zero.
	BusyTimeout time.Duration
	// Synchronous is SQLiteSynchronousFull (the default: a revoke that
	// returned survives a power cut) or SQLiteSynchronousNormal.
	Synchronous string
}

// WithDefaults returns o with empty fields set to their defaults.
func (o SQLiteOptions) WithDefaults() SQLiteOptions {
	if o.BusyTimeout == 0 {
		o.BusyTimeout = DefaultSQLiteBusyTimeout
	}
	if o.Synchronous == "" {
		o.Synchronous = SQLiteSynchronousFull
	}
	return o
}

// Validate reports options that cannot work.
func (o SQLiteOptions) Validate() error {
	switch {
	case o.BusyTimeout < time.Millisecond:
		return fmt.Errorf("sqlite revoke store: busy timeout %v is below 1ms", o.BusyTimeout)
	case o.Synchronous != SQLiteSynchronousFull && o.Synchronous != SQLiteSynchronousNormal:
		return fmt.Errorf("sqlite revoke store: synchronous %q is neither %q nor %q", o.Synchronous, SQLiteSynchronousFull, SQLiteSynchronousNormal)
	}
	return nil
}

// SQLiteStore keeps revokes in the table stem_revokes of a stem SQLite
// database, the file the SQLite engine (broker/sqlite) uses, so one file
// holds a whole single-host deployment. The primary key is (namespace,
// task_id). Upsert is one write transaction (BEGIN IMMEDIATE, so processes
// sharing the file take turns) of INSERT ... ON CONFLICT DO UPDATE ...
// WHERE the new version is higher, and a read-back of every input's row.
// Times keep nanoseconds.
//
// The store opens only a file the engine has made a stem database (an
// existing file marked with stem's application id): it creates its own
// table there, but never the engine's schema, so a store opened first on a
// new file would otherwise leave a file the engine refuses. The CLI opens
// the engine first; a library opens sqlite.Open once before.
type SQLiteStore struct {
	path   string
	wdb    *sql.DB // one connection: every write transaction
	rdb    *sql.DB // query_only connections
	closed atomic.Bool
}

var _ Store = (*SQLiteStore)(nil)

// ErrNotStemSQLite is wrapped by OpenSQLite's error for a file that is
// missing, empty, or not a stem database.
var ErrNotStemSQLite = errors.New("not a stem SQLite database")

// ParseSQLiteTarget returns the absolute path named by target, a file path
// or a URL of the forms the SQLite engine accepts (sqlite:///abs/path.db,
// sqlite://localhost/abs/path.db, sqlite:relative/path.db), and applies
// the URL parameters synchronous and busy_timeout to opts. A relative path
// is resolved against the working directory now.
func ParseSQLiteTarget(target string, opts *SQLiteOptions) (string, error) {
	if target == "" {
		return "", errors.New("empty SQLite database path")
	}
	if schemeOf(target) != "sqlite" {
		return sqliteAbs(target)
	}
	shown := stemerr.RedactURL(target)
	u, err := url.Parse(target)
	if err != nil {
		return "", fmt.Errorf("invalid URL %s (want sqlite:///absolute/path.db or sqlite:relative/path.db)", shown)
	}
	if u.User != nil {
		return "", fmt.Errorf("URL %s: a SQLite URL takes no user or password", shown)
	}
	var path string
	switch {
	case u.Opaque != "":
		if path, err = url.PathUnescape(u.Opaque); err != nil {
			return "", fmt.Errorf("URL %s: %v", shown, err)
		}
	case u.Host != "" && u.Host != "localhost":
		return "", fmt.Errorf("URL %s names host %q; use sqlite:///absolute/path.db or sqlite:relative/path.db", shown, u.Host)
	default:
		path = u.Path
	}
	if path == "" {
		return "", fmt.Errorf("URL %s names no database file", shown)
	}
	for key, vals := range u.Query() {
		v := vals[len(vals)-1]
		switch key {
		case "synchronous":
			opts.Synchronous = strings.ToLower(v)
		case "busy_timeout":
			d, err := time.ParseDuration(v)
			if err != nil {
				return "", fmt.Errorf("URL %s: busy_timeout %q is not a duration such as 10s", shown, v)
			}
			opts.BusyTimeout = d
		default:
			return "", fmt.Errorf("URL %s: unknown parameter %q (known: synchronous, busy_timeout)", shown, key)
		}
	}
	return sqliteAbs(path)
}

func sqliteAbs(p string) (string, error) {
	a, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("SQLite database path %q: %w", p, err)
	}
	return a, nil
}

// OpenSQLite opens the store in the stem SQLite database named by target
// (see ParseSQLiteTarget) and creates its table if needed. The file must
// exist and be a stem database; otherwise the error wraps ErrNotStemSQLite
// and says what to do. A database locked past the busy timeout, or a disk
// error, wraps stemerr.ErrUnavailable. Errors name the path.
func OpenSQLite(ctx context.Context, target string, opts SQLiteOptions) (*SQLiteStore, error) {
	path, err := ParseSQLiteTarget(target, &opts)
	if err != nil {
		return nil, fmt.Errorf("sqlite revoke store: %w", err)
	}
	opts = opts.WithDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("sqlite revoke store: %s: %w: the file does not exist; open it with the stem SQLite engine first (start a worker with STEM_BROKER_URL=sqlite://%s), or point the revoke store at the broker's database", path, ErrNotStemSQLite, path)
	case err != nil:
		return nil, fmt.Errorf("sqlite revoke store: %s: %w", path, err)
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("sqlite revoke store: %s is not a regular file (%s)", path, st.Mode().Type())
	}
	s := &SQLiteStore{path: path}
	if s.wdb, err = sql.Open("sqlite", sqliteDSN(path, opts, true)); err != nil {
		return nil, fmt.Errorf("sqlite revoke store: open %s: %w", path, err)
	}
	s.wdb.SetMaxOpenConns(1)
	s.wdb.SetConnMaxIdleTime(0)
	if s.rdb, err = sql.Open("sqlite", sqliteDSN(path, opts, false)); err != nil {
		_ = s.wdb.Close()
		return nil, fmt.Errorf("sqlite revoke store: open %s: %w", path, err)
	}
	s.rdb.SetMaxOpenConns(4)
	s.rdb.SetMaxIdleConns(4)
	if err := s.migrate(ctx); err != nil {
		_ = s.wdb.Close()
		_ = s.rdb.Close()
		return nil, err
	}
	return s, nil
}

// sqliteDSN is the modernc.org/sqlite data source for path: read-write
// without creating the file, the busy timeout and synchronous mode, and
// BEGIN IMMEDIATE for the write connection (query_only for the others).
func sqliteDSN(path string, o SQLiteOptions, write bool) string {
	q := url.Values{}
	q.Set("mode", "rw")
	q.Add("_pragma", "busy_timeout("+strconv.FormatInt(o.BusyTimeout.Milliseconds(), 10)+")")
	q.Add("_pragma", "synchronous("+strings.ToUpper(o.Synchronous)+")")
	if write {
		q.Set("_txlock", "immediate")
	} else {
		q.Add("_pragma", "query_only(1)")
	}
	esc := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
	return "file:" + esc + "?" + q.Encode()
}

// migrate checks the file is a stem database and creates the table, in one
// write transaction.
func (s *SQLiteStore) migrate(ctx context.Context) error {
	tx, err := s.wdb.BeginTx(ctx, nil)
	if err != nil {
		return s.openFail(err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	var appID int64
	var tables int
	err = tx.QueryRowContext(ctx, `SELECT
    (SELECT application_id FROM pragma_application_id),
    (SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\')`).Scan(&appID, &tables)
	if err != nil {
		return s.openFail(err)
	}
	switch {
	case appID == sqliteApplicationID:
	case appID == 0 && tables == 0:
		return fmt.Errorf("sqlite revoke store: %s: %w: the database is empty; open it with the stem SQLite engine first (start a worker with STEM_BROKER_URL=sqlite://%s), which creates stem's schema", s.path, ErrNotStemSQLite, s.path)
	case appID == 0:
		return fmt.Errorf("sqlite revoke store: %s: %w: it is an SQLite database with %d table(s) of another program; give stem a file of its own", s.path, ErrNotStemSQLite, tables)
	default:
		return fmt.Errorf("sqlite revoke store: %s: %w: its application id is %#x, stem's is %#x", s.path, ErrNotStemSQLite, appID, sqliteApplicationID)
	}
	if _, err := tx.ExecContext(ctx, sqliteSchema); err != nil {
		return s.fail(ctx, "create table "+SQLiteTable, err)
	}
	var hasSig int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM pragma_table_info('stem_revokes') WHERE name = 'sig'`).Scan(&hasSig); err != nil {
		return s.fail(ctx, "read the columns of "+SQLiteTable, err)
	}
	if hasSig == 0 {
		if _, err := tx.ExecContext(ctx, sqliteAddSig); err != nil {
			return s.fail(ctx, "add column sig to "+SQLiteTable, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return s.fail(ctx, "create table "+SQLiteTable, err)
	}
	return nil
}

// openFail explains a failure to read the file at open.
func (s *SQLiteStore) openFail(err error) error {
	switch sqliteErrCode(err) {
	case sqlite3.SQLITE_NOTADB:
		return fmt.Errorf("sqlite revoke store: %s: %w: the file is not an SQLite database (%v)", s.path, ErrNotStemSQLite, err)
	case sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_AUTH:
		return fmt.Errorf("sqlite revoke store: cannot open %s (the file and its directory must be writable by uid %d): %w", s.path, os.Getuid(), err)
	}
	return s.fail(context.Background(), "open", err)
}

// Path returns the absolute path of the database file.
func (s *SQLiteStore) Path() string { return s.path }

// Upsert implements Store.
func (s *SQLiteStore) Upsert(ctx context.Context, entries []Entry) ([]Entry, error) {
	if err := checkCall(ctx, s.closed.Load()); err != nil {
		return nil, err
	}
	if err := validateAll(entries); err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return []Entry{}, nil
	}
	// One row per key: the highest version, the first of equals.
	best := make(map[key]Entry, len(entries))
	for _, e := range entries {
		if cur, ok := best[keyOf(e)]; !ok || e.Version > cur.Version {
			best[keyOf(e)] = e
		}
	}
	rows := make([]Entry, 0, len(best))
	for _, e := range best {
		rows = append(rows, e)
	}
	slices.SortFunc(rows, func(a, b Entry) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.TaskID, b.TaskID))
	})
	latest := make(map[key]Entry, len(rows))
	err := s.write(ctx, func(tx *sql.Tx) error {
		up, err := tx.PrepareContext(ctx, sqliteUpsert)
		if err != nil {
			return err
		}
		defer up.Close()
		get, err := tx.PrepareContext(ctx, sqliteGet)
		if err != nil {
			return err
		}
		defer get.Close()
		now := time.Now().UnixMilli()
		for _, e := range rows {
			if _, err := up.ExecContext(ctx, e.Namespace, e.TaskID, e.Version, sqliteTime(e.IssuedAt), e.Terminate,
				e.Reason, e.RequestedBy, sqliteTime(e.ExpiresAt), e.Sig, now); err != nil {
				return err
			}
		}
		for _, e := range rows {
			stored, err := scanSQLiteEntry(get.QueryRowContext(ctx, e.Namespace, e.TaskID))
			if err != nil {
				return err
			}
			latest[keyOf(e)] = stored
		}
		return nil
	})
	if err != nil {
		return nil, s.fail(ctx, fmt.Sprintf("upsert %d revoke(s)", len(entries)), err)
	}
	return resultsFor(entries, latest), nil
}

// write runs fn in one write transaction.
func (s *SQLiteStore) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.wdb.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// List implements Store.
func (s *SQLiteStore) List(ctx context.Context, namespace string) ([]Entry, error) {
	if err := checkCall(ctx, s.closed.Load()); err != nil {
		return nil, err
	}
	if err := checkNamespace("list", namespace); err != nil {
		return nil, err
	}
	op := "list namespace " + namespace
	rows, err := s.rdb.QueryContext(ctx, sqliteList, namespace)
	if err != nil {
		return nil, s.fail(ctx, op, err)
	}
	defer rows.Close()
	out := []Entry{}
	for rows.Next() {
		e, err := scanSQLiteEntry(rows)
		if err != nil {
			return nil, s.fail(ctx, op, err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(ctx, op, err)
	}
	return out, nil
}

// Prune implements Store.
func (s *SQLiteStore) Prune(ctx context.Context, namespace string, now time.Time) (int, error) {
	if err := checkCall(ctx, s.closed.Load()); err != nil {
		return 0, err
	}
	if err := checkNamespace("prune", namespace); err != nil {
		return 0, err
	}
	var n int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, sqlitePrune, namespace, sqliteTime(now))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, s.fail(ctx, "prune namespace "+namespace, err)
	}
	return int(n), nil
}

// Trim implements Store.
func (s *SQLiteStore) Trim(ctx context.Context, namespace string, keep int) (int, error) {
	if err := checkTrim(ctx, s.closed.Load(), namespace, keep); err != nil {
		return 0, err
	}
	var n int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, sqliteTrim, namespace, namespace, keep)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, s.fail(ctx, "trim namespace "+namespace, err)
	}
	return int(n), nil
}

// Close closes the database connections; later calls return ErrClosed.
// Closing twice is safe.
func (s *SQLiteStore) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if err := errors.Join(s.wdb.Close(), s.rdb.Close()); err != nil {
		return fmt.Errorf("sqlite revoke store: close %s: %w", s.path, err)
	}
	return nil
}

// fail wraps an error of operation op: ErrClosed after Close, the
// context's error when it ended, stemerr.ErrUnavailable when the database
// stayed locked or the disk failed, the plain cause otherwise; the path is
// named.
func (s *SQLiteStore) fail(ctx context.Context, op string, err error) error {
	switch {
	case s.closed.Load():
		return ErrClosed
	case ctx.Err() != nil:
		return fmt.Errorf("sqlite revoke store at %s: %s: %w", s.path, op, ctx.Err())
	}
	switch sqliteErrCode(err) {
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL,
		sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL:
		return fmt.Errorf("sqlite revoke store at %s: %s: %w: %w", s.path, op, stemerr.ErrUnavailable, err)
	}
	return fmt.Errorf("sqlite revoke store at %s: %s: %w", s.path, op, err)
}

// sqliteErrCode returns the primary result code of a SQLite error, or 0.
func sqliteErrCode(err error) int {
	var se *msqlite.Error
	if errors.As(err, &se) {
		return se.Code() & 0xff
	}
	return 0
}

// sqliteTime encodes t for the table: NULL for the zero time.
func sqliteTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format(sqliteTimeLayout)
}

// scanSQLiteEntry reads one row of sqliteCols.
func scanSQLiteEntry(row interface{ Scan(...any) error }) (Entry, error) {
	var (
		e               Entry
		issued, expires sql.NullString
	)
	if err := row.Scan(&e.Namespace, &e.TaskID, &e.Version, &issued, &e.Terminate, &e.Reason, &e.RequestedBy, &expires, &e.Sig); err != nil {
		return Entry{}, err
	}
	for _, f := range []struct {
		in  sql.NullString
		out *time.Time
	}{{issued, &e.IssuedAt}, {expires, &e.ExpiresAt}} {
		if !f.in.Valid {
			continue
		}
		t, err := time.Parse(sqliteTimeLayout, f.in.String)
		if err != nil {
			return Entry{}, fmt.Errorf("revoke of task %s/%s: stored time %q: %w", e.Namespace, e.TaskID, f.in.String, err)
		}
		*f.out = t
	}
	return e, nil
}

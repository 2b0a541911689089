package revoke

import (
	"cmp"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stemhq/stem/stemerr"
)

// DefaultPostgresTable is the table of the Postgres store unless
// PostgresOptions.Table says otherwise.
const DefaultPostgresTable = "stem_revokes"

//go:embed postgres_schema.sql
var postgresSchema string

// PostgresStore keeps revokes in a Postgres table whose primary key is
// (namespace, task_id). Upsert is one INSERT ... ON CONFLICT DO UPDATE ...
// WHERE excluded.version > stored version, followed in the same round trip
// (and implicit transaction) by a read-back of every input's row, so it
// returns the entries as stored. Times are kept to the microsecond.
type PostgresStore struct {
	pool   *pgxpool.Pool
	owns   bool
	url    string // redacted, for errors
	table  string // as configured, for errors
	q      postgresQueries
	closed atomic.Bool
}

// postgresQueries are the store's statements for its table.
type postgresQueries struct {
	upsert, readBack, list, prune, trim string
}

// PostgresOptions configure a PostgresStore.
type PostgresOptions struct {
	// Table is the table's name, optionally schema-qualified
	// ("ops.revokes"); DefaultPostgresTable when empty. Each part is made
	// of letters, digits and underscores, does not start with a digit, and
	// is at most 50 characters long.
	Table string
}

// WithDefaults returns o with empty fields set to their defaults.
func (o PostgresOptions) WithDefaults() PostgresOptions {
	if o.Table == "" {
		o.Table = DefaultPostgresTable
	}
	return o
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,49}$`)

// Validate reports options that cannot work.
func (o PostgresOptions) Validate() error {
	parts := strings.Split(o.Table, ".")
	if len(parts) > 2 {
		return fmt.Errorf("postgres revoke store: table %q: want table or schema.table", o.Table)
	}
	for _, p := range parts {
		if !identRE.MatchString(p) {
			return fmt.Errorf("postgres revoke store: table %q: %q must be letters, digits and underscores, not start with a digit, and be at most 50 characters", o.Table, p)
		}
	}
	return nil
}

// OpenPostgres connects to the Postgres server at rawURL (postgres:// or
// postgresql://, pgx connection-string syntax), checks that it answers,
// and creates the table if it does not exist. A URL that does not parse is
// a *stemerr.ConfigError; a server that does not answer is an error wrapping
// stemerr.ErrUnavailable that names the URL with its password redacted.
// Close closes the connection pool.
func OpenPostgres(ctx context.Context, rawURL string, opts PostgresOptions) (*PostgresStore, error) {
	x, err := openPostgres(ctx, rawURL, opts)
	// Drivers may quote the URL or its password in their errors.
	return x, stemerr.RedactError(err, rawURL)
}

func openPostgres(ctx context.Context, rawURL string, opts PostgresOptions) (*PostgresStore, error) {
	opts = opts.WithDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	shown := stemerr.RedactURL(rawURL)
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		return nil, &stemerr.ConfigError{Key: "revoke store URL", Value: shown, Msg: stemerr.RedactError(err, rawURL).Error()}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres revoke store at %s: %w: %w", shown, stemerr.ErrUnavailable, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres revoke store at %s: connect: %w: %w", shown, stemerr.ErrUnavailable, err)
	}
	s, err := newPostgres(ctx, pool, true, shown, opts)
	if err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// NewPostgres builds a store on an existing pool, for tests and programs
// that configure pgx themselves, and creates the table if it does not
// exist. Close does not close the pool.
func NewPostgres(ctx context.Context, pool *pgxpool.Pool, opts PostgresOptions) (*PostgresStore, error) {
	opts = opts.WithDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	shown := "postgres (pool supplied)"
	if c := pool.Config().ConnConfig; c != nil {
		shown = fmt.Sprintf("postgres://%s:%d/%s", c.Host, c.Port, c.Database)
	}
	return newPostgres(ctx, pool, false, shown, opts)
}

func newPostgres(ctx context.Context, pool *pgxpool.Pool, owns bool, shown string, opts PostgresOptions) (*PostgresStore, error) {
	ident := pgx.Identifier(strings.Split(opts.Table, "."))
	table := ident.Sanitize()
	index := pgx.Identifier{ident[len(ident)-1] + "_expiry_idx"}.Sanitize()
	s := &PostgresStore{pool: pool, owns: owns, url: shown, table: opts.Table}
	const cols = "namespace, task_id, version, issued_at, terminate, reason, requested_by, expires_at, sig"
	s.q = postgresQueries{
		upsert: `INSERT INTO ` + table + ` AS r (` + cols + `)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::boolean[], $6::text[], $7::text[], $8::timestamptz[], $9::text[])
ON CONFLICT (namespace, task_id) DO UPDATE SET
  version = excluded.version, issued_at = excluded.issued_at, terminate = excluded.terminate,
  reason = excluded.reason, requested_by = excluded.requested_by, expires_at = excluded.expires_at,
  sig = excluded.sig, updated_at = now()
WHERE excluded.version > r.version`,
		readBack: `SELECT ` + cols + ` FROM ` + table + `
WHERE (namespace, task_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))`,
		// COLLATE "C" orders task ids by bytes, as every store does.
		list:  `SELECT ` + cols + ` FROM ` + table + ` WHERE namespace = $1 ORDER BY version, task_id COLLATE "C"`,
		prune: `DELETE FROM ` + table + ` WHERE namespace = $1 AND expires_at IS NOT NULL AND expires_at <= $2`,
		trim: `DELETE FROM ` + table + ` WHERE namespace = $1 AND task_id IN (
  SELECT task_id FROM ` + table + ` WHERE namespace = $1 ORDER BY version DESC, task_id COLLATE "C" DESC OFFSET $2)`,
	}
	if err := s.migrate(ctx, table, index); err != nil {
		return nil, err
	}
	return s, nil
}

// migrate creates the table and its index if they do not exist, under an
// advisory lock so that concurrent first starts do not collide.
func (s *PostgresStore) migrate(ctx context.Context, table, index string) error {
	ddl := strings.NewReplacer("{{table}}", table, "{{index}}", index).Replace(postgresSchema)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, "stem revoke store "+s.table); err != nil {
			return err
		}
		for _, stmt := range strings.Split(ddl, ";\n") {
			if strings.TrimSpace(stripSQLComments(stmt)) == "" {
				continue
			}
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return s.fail(ctx, "create table "+s.table, err)
	}
	return nil
}

func stripSQLComments(s string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		if !strings.HasPrefix(strings.TrimSpace(line), "--") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// Upsert implements Store.
func (s *PostgresStore) Upsert(ctx context.Context, entries []Entry) ([]Entry, error) {
	if err := checkCall(ctx, s.closed.Load()); err != nil {
		return nil, err
	}
	if err := validateAll(entries); err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return []Entry{}, nil
	}
	// One row per key (ON CONFLICT cannot touch a row twice in one
	// statement): the highest version, the first of equals. Sorted, so
	// concurrent calls lock rows in the same order and never deadlock.
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
	n := len(rows)
	var (
		nss, tasks, reasons, requesters = make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		sigs                            = make([]string, n)
		versions                        = make([]int64, n)
		issued, expires                 = make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n)
		terminates                      = make([]bool, n)
	)
	for i, e := range rows {
		nss[i], tasks[i], versions[i] = e.Namespace, e.TaskID, e.Version
		issued[i], expires[i] = pgTime(e.IssuedAt), pgTime(e.ExpiresAt)
		terminates[i], reasons[i], requesters[i], sigs[i] = e.Terminate, e.Reason, e.RequestedBy, e.Sig
	}
	var b pgx.Batch
	b.Queue(s.q.upsert, nss, tasks, versions, issued, terminates, reasons, requesters, expires, sigs)
	b.Queue(s.q.readBack, nss, tasks)
	br := s.pool.SendBatch(ctx, &b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return nil, s.fail(ctx, "upsert into "+s.table, err)
	}
	r, err := br.Query()
	if err != nil {
		return nil, s.fail(ctx, "read back from "+s.table, err)
	}
	stored, err := scanEntries(r)
	if err != nil {
		return nil, s.fail(ctx, "read back from "+s.table, err)
	}
	if err := br.Close(); err != nil {
		return nil, s.fail(ctx, "upsert into "+s.table, err)
	}
	latest := make(map[key]Entry, len(stored))
	for _, e := range stored {
		latest[keyOf(e)] = e
	}
	for _, e := range rows {
		if _, ok := latest[keyOf(e)]; !ok {
			// Only a concurrent Prune between the two statements could do
			// this, and it cannot: they run in one transaction.
			return nil, fmt.Errorf("postgres revoke store at %s: %s: row %s/%s missing after upsert", s.url, s.table, e.Namespace, e.TaskID)
		}
	}
	return resultsFor(entries, latest), nil
}

// List implements Store.
func (s *PostgresStore) List(ctx context.Context, namespace string) ([]Entry, error) {
	if err := checkCall(ctx, s.closed.Load()); err != nil {
		return nil, err
	}
	if err := checkNamespace("list", namespace); err != nil {
		return nil, err
	}
	r, err := s.pool.Query(ctx, s.q.list, namespace)
	if err != nil {
		return nil, s.fail(ctx, "list "+s.table, err)
	}
	out, err := scanEntries(r)
	if err != nil {
		return nil, s.fail(ctx, "list "+s.table, err)
	}
	return out, nil
}

// Prune implements Store.
func (s *PostgresStore) Prune(ctx context.Context, namespace string, now time.Time) (int, error) {
	if err := checkCall(ctx, s.closed.Load()); err != nil {
		return 0, err
	}
	if err := checkNamespace("prune", namespace); err != nil {
		return 0, err
	}
	tag, err := s.pool.Exec(ctx, s.q.prune, namespace, now)
	if err != nil {
		return 0, s.fail(ctx, "prune "+s.table, err)
	}
	return int(tag.RowsAffected()), nil
}

// Trim implements Store.
func (s *PostgresStore) Trim(ctx context.Context, namespace string, keep int) (int, error) {
	if err := checkTrim(ctx, s.closed.Load(), namespace, keep); err != nil {
		return 0, err
	}
	tag, err := s.pool.Exec(ctx, s.q.trim, namespace, keep)
	if err != nil {
		return 0, s.fail(ctx, "trim "+s.table, err)
	}
	return int(tag.RowsAffected()), nil
}

// Close closes the pool when OpenPostgres made it; later calls return
// ErrClosed. Closing twice is safe.
func (s *PostgresStore) Close() error {
	if s.closed.Swap(true) || !s.owns {
		return nil
	}
	s.pool.Close()
	return nil
}

// fail turns a pgx error into the store's: ErrClosed after Close, the
// context's error when it ended, a server error as is, and a connection
// failure (refused, broken, or a server refusing connections) wrapping
// stemerr.ErrUnavailable. Every one names the redacted URL and what failed.
func (s *PostgresStore) fail(ctx context.Context, op string, err error) error {
	var pgErr *pgconn.PgError
	switch {
	case s.closed.Load():
		return ErrClosed
	case ctx.Err() != nil:
		return fmt.Errorf("postgres revoke store at %s: %s: %w", s.url, op, ctx.Err())
	case errors.As(err, &pgErr) && !unavailableCode(pgErr.Code):
		return fmt.Errorf("postgres revoke store at %s: %s: %w", s.url, op, err)
	default:
		return fmt.Errorf("postgres revoke store at %s: %s: %w: %w", s.url, op, stemerr.ErrUnavailable, err)
	}
}

// unavailableCode reports SQLSTATEs that mean the server cannot serve now:
// class 08 (connection exception), 53300 (too many connections), 57P01-03
// (shutting down, cannot connect now).
func unavailableCode(code string) bool {
	return strings.HasPrefix(code, "08") || code == "53300" || code == "57P01" || code == "57P02" || code == "57P03"
}

// pgTime maps the zero time to NULL.
func pgTime(t time.Time) pgtype.Timestamptz {
	if t.IsZero() {
		return pgtype.Timestamptz{}
	}
	return pgtype.Timestamptz{Time: t, Valid: true}
}

// scanEntries reads rows of the store's columns, mapping NULL times to the
// zero time.
func scanEntries(r pgx.Rows) ([]Entry, error) {
	defer r.Close()
	out := []Entry{}
	for r.Next() {
		var (
			e               Entry
			issued, expires pgtype.Timestamptz
		)
		if err := r.Scan(&e.Namespace, &e.TaskID, &e.Version, &issued, &e.Terminate, &e.Reason, &e.RequestedBy, &expires, &e.Sig); err != nil {
			return nil, err
		}
		if issued.Valid {
			e.IssuedAt = issued.Time
		}
		if expires.Valid {
			e.ExpiresAt = expires.Time
		}
		out = append(out, e)
	}
	return out, r.Err()
}

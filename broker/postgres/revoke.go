package postgres

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/stemhq/stem/control/revoke"
)

// The revoke store's statements ({schema}.revokes, migration 0004).
const (
	revokeCols = "namespace, task_id, version, issued_at, terminate, reason, requested_by, expires_at, sig"

	// tplRevokeUpsert stores each row unless the stored one has an equal
	// or higher version.
	// Params: the columns of revokeCols as arrays.
	tplRevokeUpsert = `INSERT INTO {schema}.revokes AS r (` + revokeCols + `)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::boolean[], $6::text[], $7::text[], $8::timestamptz[], $9::text[])
ON CONFLICT (namespace, task_id) DO UPDATE SET
  version = excluded.version, issued_at = excluded.issued_at, terminate = excluded.terminate,
  reason = excluded.reason, requested_by = excluded.requested_by, expires_at = excluded.expires_at,
  sig = excluded.sig, updated_at = now()
WHERE excluded.version > r.version`

	// tplRevokeReadBack reads the rows of the given keys.
	// Params: $1 namespaces text[], $2 task ids text[]. Returns: revokeCols.
	tplRevokeReadBack = `SELECT ` + revokeCols + ` FROM {schema}.revokes
WHERE (namespace, task_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))`

	// tplRevokeList reads a namespace's rows by version, then task id in
	// byte order (COLLATE "C", as every store orders them).
	// Params: $1 namespace. Returns: revokeCols.
	tplRevokeList = `SELECT ` + revokeCols + ` FROM {schema}.revokes WHERE namespace = $1 ORDER BY version, task_id COLLATE "C"`

	// tplRevokePrune deletes a namespace's rows expired at $2.
	tplRevokePrune = `DELETE FROM {schema}.revokes WHERE namespace = $1 AND expires_at IS NOT NULL AND expires_at <= $2`

	// tplRevokeTrim deletes a namespace's rows beyond the newest $2.
	tplRevokeTrim = `DELETE FROM {schema}.revokes WHERE namespace = $1 AND task_id IN (
  SELECT task_id FROM {schema}.revokes WHERE namespace = $1 ORDER BY version DESC, task_id COLLATE "C" DESC OFFSET $2)`
)

// revokeStore is the engine's revoke store: the table revokes of the
// engine's schema, primary key (namespace, task_id). Upsert is one INSERT
// ... ON CONFLICT DO UPDATE ... WHERE the new version is higher, then a
// read-back of every input's row in the same round trip and implicit
// transaction. Times keep microseconds.
type revokeStore struct {
	e                                   *Engine
	upsert, readBack, list, prune, trim string
	revoke.View
}

var _ revoke.Store = (*revokeStore)(nil)

// Revokes returns the engine's revoke store. Its Close ends the store,
// not the engine.
func (e *Engine) Revokes() revoke.Store {
	f := strings.NewReplacer("{schema}", pgx.Identifier{e.opts.Schema}.Sanitize()).Replace
	return &revokeStore{e: e, upsert: f(tplRevokeUpsert), readBack: f(tplRevokeReadBack),
		list: f(tplRevokeList), prune: f(tplRevokePrune), trim: f(tplRevokeTrim)}
}

// Upsert implements revoke.Store.
func (s *revokeStore) Upsert(ctx context.Context, entries []revoke.Entry) ([]revoke.Entry, error) {
	if err := revoke.CheckUpsert(ctx, s.Closed(), entries); err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return []revoke.Entry{}, nil
	}
	rows := revoke.Newest(entries)
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
	b.Queue(s.upsert, nss, tasks, versions, issued, terminates, reasons, requesters, expires, sigs)
	b.Queue(s.readBack, nss, tasks)
	br := s.e.pool.SendBatch(ctx, &b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return nil, s.fail("upsert revokes", err)
	}
	r, err := br.Query()
	if err != nil {
		return nil, s.fail("read back revokes", err)
	}
	stored, err := scanRevokes(r)
	if err != nil {
		return nil, s.fail("read back revokes", err)
	}
	if err := br.Close(); err != nil {
		return nil, s.fail("upsert revokes", err)
	}
	latest := make(map[revoke.Key]revoke.Entry, len(stored))
	for _, e := range stored {
		latest[revoke.KeyOf(e)] = e
	}
	for _, e := range rows {
		if _, ok := latest[revoke.KeyOf(e)]; !ok {
			// Only a concurrent Prune between the two statements could do
			// this, and it cannot: they run in one transaction.
			return nil, fmt.Errorf("postgres engine at %s: revoke %s/%s missing after upsert", s.e.url, e.Namespace, e.TaskID)
		}
	}
	return revoke.ResultsFor(entries, latest), nil
}

// List implements revoke.Store.
func (s *revokeStore) List(ctx context.Context, namespace string) ([]revoke.Entry, error) {
	if err := revoke.CheckCall(ctx, s.Closed()); err != nil {
		return nil, err
	}
	if err := revoke.CheckNamespace("list", namespace); err != nil {
		return nil, err
	}
	r, err := s.e.pool.Query(ctx, s.list, namespace)
	if err != nil {
		return nil, s.fail("list revokes", err)
	}
	out, err := scanRevokes(r)
	if err != nil {
		return nil, s.fail("list revokes", err)
	}
	return out, nil
}

// Prune implements revoke.Store.
func (s *revokeStore) Prune(ctx context.Context, namespace string, now time.Time) (int, error) {
	if err := revoke.CheckCall(ctx, s.Closed()); err != nil {
		return 0, err
	}
	if err := revoke.CheckNamespace("prune", namespace); err != nil {
		return 0, err
	}
	tag, err := s.e.pool.Exec(ctx, s.prune, namespace, now)
	if err != nil {
		return 0, s.fail("prune revokes", err)
	}
	return int(tag.RowsAffected()), nil
}

// Trim implements revoke.Store.
func (s *revokeStore) Trim(ctx context.Context, namespace string, keep int) (int, error) {
	if err := revoke.CheckTrim(ctx, s.Closed(), namespace, keep); err != nil {
		return 0, err
	}
	tag, err := s.e.pool.Exec(ctx, s.trim, namespace, keep)
	if err != nil {
		return 0, s.fail("trim revokes", err)
	}
	return int(tag.RowsAffected()), nil
}

// fail is revoke.ErrClosed after Close, else the engine's classification.
func (s *revokeStore) fail(op string, err error) error {
	if s.Closed() {
		return revoke.ErrClosed
	}
	return s.e.fail(op, err)
}

// pgTime maps the zero time to NULL.
func pgTime(t time.Time) pgtype.Timestamptz {
	if t.IsZero() {
		return pgtype.Timestamptz{}
	}
	return pgtype.Timestamptz{Time: t, Valid: true}
}

// scanRevokes reads rows of revokeCols, mapping NULL times to the zero
// time.
func scanRevokes(r pgx.Rows) ([]revoke.Entry, error) {
	defer r.Close()
	out := []revoke.Entry{}
	for r.Next() {
		var (
			e               revoke.Entry
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

package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/stemhq/stem/control/revoke"
)

// The revoke store's statements (table stem_revokes, migration 0004).
const (
	revokeCols = "namespace, task_id, version, issued_at, terminate, reason, requested_by, expires_at, sig"

	// sqlRevokeUpsert stores an entry unless the stored one has an equal
	// or higher version.
	// Params: the columns of revokeCols, updated_at (ms).
	sqlRevokeUpsert = `INSERT INTO stem_revokes (` + revokeCols + `, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (namespace, task_id) DO UPDATE SET
    version = excluded.version, issued_at = excluded.issued_at, terminate = excluded.terminate,
    reason = excluded.reason, requested_by = excluded.requested_by, expires_at = excluded.expires_at,
    sig = excluded.sig, updated_at = excluded.updated_at
WHERE excluded.version > stem_revokes.version`

	// sqlRevokeGet reads one entry.
	// Params: namespace, task id. Returns: revokeCols.
	sqlRevokeGet = `SELECT ` + revokeCols + ` FROM stem_revokes WHERE namespace = ? AND task_id = ?`

	// sqlRevokeList reads a namespace's entries by version, then task id
	// in byte order (BINARY collation).
	// Params: namespace. Returns: revokeCols.
	sqlRevokeList = `SELECT ` + revokeCols + ` FROM stem_revokes WHERE namespace = ? ORDER BY version, task_id`

	// sqlRevokePrune deletes a namespace's entries expired at now.
	// Params: namespace, now (revokeTime).
	sqlRevokePrune = `DELETE FROM stem_revokes WHERE namespace = ? AND expires_at IS NOT NULL AND expires_at <= ?`

	// sqlRevokeTrim deletes a namespace's entries beyond the newest keep.
	// Params: namespace, namespace, keep.
	sqlRevokeTrim = `DELETE FROM stem_revokes WHERE namespace = ? AND task_id IN (
    SELECT task_id FROM stem_revokes WHERE namespace = ? ORDER BY version DESC, task_id DESC LIMIT -1 OFFSET ?)`
)

// revokeTimeLayout is fixed-width for years 1 to 9999, so text order is
// time order.
const revokeTimeLayout = "2006-01-02T15:04:05.000000000Z"

// revokeStore is the engine's revoke store: the table stem_revokes of the
// database, so one file holds a whole single-host deployment. Upsert is one
// write transaction (processes sharing the file take turns) of INSERT ...
// ON CONFLICT DO UPDATE ... WHERE the new version is higher, and a
// read-back of every input's row. Times keep nanoseconds.
type revokeStore struct {
	e *Engine
	revoke.View
}

var _ revoke.Store = (*revokeStore)(nil)

// Revokes returns the engine's revoke store. Its Close ends the store,
// not the engine.
func (e *Engine) Revokes() revoke.Store { return &revokeStore{e: e} }

// Upsert implements revoke.Store.
func (s *revokeStore) Upsert(ctx context.Context, entries []revoke.Entry) ([]revoke.Entry, error) {
	if err := revoke.CheckUpsert(ctx, s.Closed(), entries); err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return []revoke.Entry{}, nil
	}
	rows := revoke.Newest(entries)
	latest := make(map[revoke.Key]revoke.Entry, len(rows))
	err := s.e.write(ctx, func(tx *sql.Tx) error {
		up, err := tx.PrepareContext(ctx, sqlRevokeUpsert)
		if err != nil {
			return err
		}
		defer up.Close()
		get, err := tx.PrepareContext(ctx, sqlRevokeGet)
		if err != nil {
			return err
		}
		defer get.Close()
		now := nowMs()
		for _, e := range rows {
			if _, err := up.ExecContext(ctx, e.Namespace, e.TaskID, e.Version, revokeTime(e.IssuedAt), e.Terminate,
				e.Reason, e.RequestedBy, revokeTime(e.ExpiresAt), e.Sig, now); err != nil {
				return err
			}
		}
		for _, e := range rows {
			stored, err := scanRevoke(get.QueryRowContext(ctx, e.Namespace, e.TaskID))
			if err != nil {
				return err
			}
			latest[revoke.KeyOf(e)] = stored
		}
		return nil
	})
	if err != nil {
		return nil, s.fail(fmt.Sprintf("upsert %d revoke(s)", len(entries)), err)
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
	op := "list the revokes of namespace " + namespace
	rows, err := s.e.rdb.QueryContext(ctx, sqlRevokeList, namespace)
	if err != nil {
		return nil, s.fail(op, err)
	}
	defer rows.Close()
	out := []revoke.Entry{}
	for rows.Next() {
		e, err := scanRevoke(rows)
		if err != nil {
			return nil, s.fail(op, err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(op, err)
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
	n, err := s.exec(ctx, sqlRevokePrune, namespace, revokeTime(now))
	if err != nil {
		return 0, s.fail("prune the revokes of namespace "+namespace, err)
	}
	return n, nil
}

// Trim implements revoke.Store.
func (s *revokeStore) Trim(ctx context.Context, namespace string, keep int) (int, error) {
	if err := revoke.CheckTrim(ctx, s.Closed(), namespace, keep); err != nil {
		return 0, err
	}
	n, err := s.exec(ctx, sqlRevokeTrim, namespace, namespace, keep)
	if err != nil {
		return 0, s.fail("trim the revokes of namespace "+namespace, err)
	}
	return n, nil
}

// exec runs one statement in a write transaction and returns the rows it
// changed.
func (s *revokeStore) exec(ctx context.Context, query string, args ...any) (int, error) {
	var n int64
	err := s.e.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, query, args...)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return int(n), err
}

// fail is revoke.ErrClosed after Close, else the engine's classification.
func (s *revokeStore) fail(op string, err error) error {
	if s.Closed() {
		return revoke.ErrClosed
	}
	return s.e.fail("revoke store: "+op, err)
}

// revokeTime maps the zero time to NULL, others to revokeTimeLayout.
func revokeTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format(revokeTimeLayout)
}

// scanRevoke reads one row of revokeCols.
func scanRevoke(row interface{ Scan(...any) error }) (revoke.Entry, error) {
	var (
		e               revoke.Entry
		issued, expires sql.NullString
	)
	if err := row.Scan(&e.Namespace, &e.TaskID, &e.Version, &issued, &e.Terminate, &e.Reason, &e.RequestedBy, &expires, &e.Sig); err != nil {
		return revoke.Entry{}, err
	}
	for _, f := range []struct {
		in  sql.NullString
		out *time.Time
	}{{issued, &e.IssuedAt}, {expires, &e.ExpiresAt}} {
		if !f.in.Valid {
			continue
		}
		t, err := time.Parse(revokeTimeLayout, f.in.String)
		if err != nil {
			return revoke.Entry{}, fmt.Errorf("revoke of task %s/%s: stored time %q: %w", e.Namespace, e.TaskID, f.in.String, err)
		}
		*f.out = t
	}
	return e, nil
}

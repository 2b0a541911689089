package postgres

import (
	"context"
	"net/url"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestRevokesKeptAcrossTheUpgrade: revokes that a revoke store of schema
// version 3 or older kept in its own table (stem_revokes in the search
// path, with or without the sig column) are copied into the engine's
// schema by migration 4.
func TestRevokesKeptAcrossTheUpgrade(t *testing.T) {
	raw := testURL(t)
	for _, withSig := range []bool{false, true} {
		old := randomNamespace()
		conn, err := pgx.Connect(t.Context(), raw)
		if err != nil {
			t.Fatal(err)
		}
		sig := ""
		if withSig {
			sig = ", sig text NOT NULL DEFAULT ''"
		}
		for _, stmt := range []string{
			`CREATE SCHEMA ` + old,
			`CREATE TABLE ` + old + `.stem_revokes (namespace text NOT NULL, task_id text NOT NULL, version bigint NOT NULL,
				issued_at timestamptz, terminate boolean NOT NULL DEFAULT false, reason text NOT NULL DEFAULT '',
				requested_by text NOT NULL DEFAULT '', expires_at timestamptz, updated_at timestamptz NOT NULL DEFAULT now()` + sig + `,
				PRIMARY KEY (namespace, task_id))`,
			`INSERT INTO ` + old + `.stem_revokes (namespace, task_id, version, terminate, reason) VALUES ('stem', 'old', 7, true, 'before the upgrade')`,
		} {
			if _, err := conn.Exec(t.Context(), stmt); err != nil {
				t.Fatalf("%s: %v", stmt, err)
			}
		}
		_ = conn.Close(t.Context())
		t.Cleanup(func() { dropSchema(t, raw, old) })
		// The old store found its table through the search path.
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		q := u.Query()
		q.Set("search_path", old)
		u.RawQuery = q.Encode()
		e := openTestEngine(t, u.String(), Options{})
		got, err := e.Revokes().List(context.Background(), "stem")
		if err != nil || len(got) != 1 || got[0].TaskID != "old" || got[0].Version != 7 || !got[0].Terminate || got[0].Reason != "before the upgrade" {
			t.Fatalf("with sig column %v: after the upgrade List = %+v, %v; want the old revoke", withSig, got, err)
		}
	}
}

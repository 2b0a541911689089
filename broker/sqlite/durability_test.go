package sqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

func TestSQLiteDurabilityJudgement(t *testing.T) {
	tests := []struct {
		mode    string
		sync    int
		durable bool
		detail  string
	}{
		{"wal", 2, true, "synchronous=full"},
		{"wal", 3, true, "synchronous=extra"},
		{"wal", 1, false, "power loss"},
		{"delete", 0, false, "not synced"},
		{"memory", 2, false, "journal is not on disk"},
	}
	for _, tt := range tests {
		d := sqliteDurability(tt.mode, tt.sync)
		if d.Durable != tt.durable || !strings.Contains(d.Detail, tt.detail) {
			t.Errorf("sqliteDurability(%q, %d) = %+v", tt.mode, tt.sync, d)
		}
	}
}

// TestDurabilityFollowsURL: the default file is durable; synchronous=normal
// in the URL is reported as such.
func TestDurabilityFollowsURL(t *testing.T) {
	dir := t.TempDir()
	for i, tt := range []struct {
		query   string
		durable bool
	}{{"", true}, {"?synchronous=normal", false}} {
		e, err := Open(context.Background(), "sqlite://"+filepath.Join(dir, fmt.Sprintf("d%d.db", i))+tt.query, Options{})
		if err != nil {
			t.Fatal(err)
		}
		d, err := e.Durability(context.Background())
		_ = e.Close()
		if err != nil || d.Durable != tt.durable || !strings.Contains(d.Detail, "journal_mode=wal") {
			t.Errorf("%q: Durability = %+v, %v; want durable=%v in WAL mode", tt.query, d, err, tt.durable)
		}
	}
}

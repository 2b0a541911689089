package sqlite

import (
	"context"
	"fmt"
	"strings"

	"github.com/stemhq/stem/broker"
)

var _ broker.DurabilityReporter = (*Engine)(nil)

// Durability reads the database's journal mode and synchronous setting.
// The Engine is durable when a commit is on disk before it returns:
// synchronous FULL or EXTRA with a rollback or WAL journal. With
// synchronous NORMAL (the URL's synchronous=normal) a commit survives a
// crash of stem but a power loss or kernel crash may lose the last ones.
func (e *Engine) Durability(ctx context.Context) (broker.Durability, error) {
	var mode string
	var sync int
	if err := e.rdb.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return broker.Durability{}, fmt.Errorf("sqlite engine at %s: read journal_mode: %w", e.path, err)
	}
	if err := e.rdb.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync); err != nil {
		return broker.Durability{}, fmt.Errorf("sqlite engine at %s: read synchronous: %w", e.path, err)
	}
	return sqliteDurability(strings.ToLower(mode), sync), nil
}

// sqliteDurability judges a journal mode and a synchronous level (0 OFF,
// 1 NORMAL, 2 FULL, 3 EXTRA).
func sqliteDurability(mode string, sync int) broker.Durability {
	names := map[int]string{0: "off", 1: "normal", 2: "full", 3: "extra"}
	found := fmt.Sprintf("journal_mode=%s, synchronous=%s", mode, names[sync])
	switch {
	case mode == "memory" || mode == "off":
		return broker.Durability{Detail: found + ": the journal is not on disk; a crash can lose or corrupt the database"}
	case sync < 1:
		return broker.Durability{Detail: found + ": commits are not synced to disk; a power loss can lose or corrupt them"}
	case sync == 1:
		return broker.Durability{Detail: found + ": commits survive a crash of stem, but a power loss or kernel crash may lose the last ones (drop synchronous=normal from the URL for full)"}
	}
	return broker.Durability{Durable: true, Detail: found + ": every commit is on disk before it returns"}
}

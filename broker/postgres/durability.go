package postgres

import (
	"context"
	"fmt"

	"github.com/stemhq/stem/broker"
)

var _ broker.DurabilityReporter = (*Engine)(nil)

// Durability reads fsync and synchronous_commit with SHOW, as they apply
// to the Engine's connections (a role or database may override
// synchronous_commit). The Engine is durable unless fsync is off (a crash
// can corrupt the cluster) or synchronous_commit is off (a crash loses
// the last commits, up to three times wal_writer_delay).
func (e *Engine) Durability(ctx context.Context) (broker.Durability, error) {
	var fsync, syncCommit string
	if err := e.pool.QueryRow(ctx, "SHOW fsync").Scan(&fsync); err != nil {
		return broker.Durability{}, e.fail("show fsync", err)
	}
	if err := e.pool.QueryRow(ctx, "SHOW synchronous_commit").Scan(&syncCommit); err != nil {
		return broker.Durability{}, e.fail("show synchronous_commit", err)
	}
	return postgresDurability(fsync, syncCommit), nil
}

// postgresDurability judges the two settings.
func postgresDurability(fsync, syncCommit string) broker.Durability {
	found := fmt.Sprintf("fsync=%s, synchronous_commit=%s", fsync, syncCommit)
	switch {
	case fsync == "off":
		return broker.Durability{Detail: found + ": a crash of the server or host can lose or corrupt data; set fsync = on"}
	case syncCommit == "off":
		return broker.Durability{Detail: found + ": a crash loses the last commits; set synchronous_commit = on (or local)"}
	}
	return broker.Durability{Durable: true, Detail: found}
}

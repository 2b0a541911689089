package redis

import (
	"context"
	"fmt"
	"strings"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/broker"
)

var _ broker.DurabilityReporter = (*Engine)(nil)

// ErrAOFRequired is wrapped by Open's error when Options.RequireAOF is set
// and the server has AOF persistence off. It is also stem.ErrIncompatible
// (exit 78).
var ErrAOFRequired = stem.Incompatible(fmt.Errorf("redis: AOF persistence required"))

// Durability reads INFO persistence (and CONFIG GET appendfsync and
// maxmemory* where the server allows it). The Engine is durable when AOF
// is on (appendonly yes) with appendfsync everysec (at most a second lost
// in a crash) or always, and the server does not evict keys without a TTL
// (an allkeys-* maxmemory-policy with a maxmemory set would drop tasks).
// With AOF off, a crash loses every write since the last RDB snapshot, if
// snapshots are on at all.
func (e *Engine) Durability(ctx context.Context) (broker.Durability, error) {
	d, _, err := readDurability(ctx, e.client)
	if err != nil {
		return broker.Durability{}, fmt.Errorf("redis engine at %s: %w", e.url, err)
	}
	return d, nil
}

// readDurability returns the server's durability and whether AOF is on.
func readDurability(ctx context.Context, client *goredis.Client) (broker.Durability, bool, error) {
	info, err := client.Info(ctx, "persistence").Result()
	if err != nil {
		return broker.Durability{}, false, fmt.Errorf("INFO persistence: %w", err)
	}
	aof, ok := infoField(info, "aof_enabled")
	if !ok {
		return broker.Durability{}, false, fmt.Errorf("INFO persistence has no aof_enabled field")
	}
	// CONFIG may be renamed or forbidden (managed Redis): then the fsync
	// policy is unknown and not held against the server.
	fsync, evicting := "", ""
	if cfg, err := client.ConfigGet(ctx, "appendfsync").Result(); err == nil {
		fsync = cfg["appendfsync"]
	}
	if cfg, err := client.ConfigGet(ctx, "maxmemory*").Result(); err == nil {
		if p := cfg["maxmemory-policy"]; cfg["maxmemory"] != "0" && cfg["maxmemory"] != "" && strings.HasPrefix(p, "allkeys-") {
			evicting = p
		}
	}
	d := redisDurability(aof == "1", fsync)
	if evicting != "" && d.Durable {
		d = broker.Durability{Detail: "maxmemory-policy " + evicting + " with a maxmemory set: under memory pressure the server evicts queued and leased tasks (and the queues' epoch keys); set maxmemory-policy noeviction (or a volatile-* policy)"}
	}
	return d, aof == "1", nil
}

// redisDurability judges AOF on or off and the appendfsync policy ("" when
// unknown).
func redisDurability(aof bool, fsync string) broker.Durability {
	switch {
	case !aof:
		return broker.Durability{Detail: "appendonly no (aof_enabled:0): a crash loses every task since the last RDB snapshot; set appendonly yes and appendfsync everysec (or always)"}
	case fsync == "no":
		return broker.Durability{Detail: "appendonly yes, appendfsync no: the kernel decides when the AOF reaches the disk, so a host crash can lose about 30 seconds of tasks; set appendfsync everysec (or always)"}
	case fsync == "":
		return broker.Durability{Durable: true, Detail: "appendonly yes (appendfsync not readable: CONFIG is not allowed)"}
	}
	return broker.Durability{Durable: true, Detail: "appendonly yes, appendfsync " + fsync}
}

// checkAOF runs at Open: with AOF off it refuses (opts.RequireAOF) or hands
// a warning to opts.Warn. A server whose persistence cannot be read is
// refused only when AOF is required.
func checkAOF(ctx context.Context, client *goredis.Client, shown string, opts Options) error {
	d, aof, err := readDurability(ctx, client)
	switch {
	case err != nil && opts.RequireAOF:
		return fmt.Errorf("redis engine at %s: AOF is required (STEM_REDIS_REQUIRE_AOF) but cannot be checked: %v: %w", shown, err, ErrAOFRequired)
	case err != nil:
		warn(opts, fmt.Errorf("redis engine at %s: cannot check persistence (%v); make sure the server has appendonly yes", shown, err))
	case !aof && opts.RequireAOF:
		return fmt.Errorf("redis engine at %s: AOF is required (STEM_REDIS_REQUIRE_AOF) but the server has %s: %w", shown, d.Detail, ErrAOFRequired)
	case !d.Durable:
		warn(opts, fmt.Errorf("redis engine at %s: tasks are not durable: %s", shown, d.Detail))
	}
	return nil
}

func warn(opts Options, err error) {
	if opts.Warn != nil {
		opts.Warn(err)
	}
}

// infoField returns the value of "key:value" in an INFO reply.
func infoField(info, key string) (string, bool) {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key+":"); ok {
			return v, true
		}
	}
	return "", false
}

package broker

import "context"

// Durability says whether an engine keeps what it has accepted (published
// tasks, states, revokes) when its server or host crashes: power loss,
// kill -9 of the server, a kernel panic. A broker that is not durable
// loses tasks that producers were told were enqueued.
type Durability struct {
	// Durable is true when an accepted write survives a crash of the
	// server, give or take the last second (Redis appendfsync everysec).
	Durable bool `json:"durable"`
	// Detail names the settings found and, when not durable, the ones to
	// change: "appendonly no (set appendonly yes and appendfsync everysec
	// or always)".
	Detail string `json:"detail"`
}

// DurabilityReporter is implemented by engines that can tell whether they
// are durable. It is optional: callers ask for it with a type assertion
// (`stem worker diagnose --connect`, `stem worker stats`).
type DurabilityReporter interface {
	// Durability reads the server's settings now; an error means they
	// could not be read (no permission, server unreachable), not that
	// the engine is not durable.
	Durability(ctx context.Context) (Durability, error)
}

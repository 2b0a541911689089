package control

import (
	"time"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/control/revoke"
)

// Control request arguments and reply data. These are the documented,
// stable JSON schemas of `stem worker ... --json` (see docs/control.md); a
// client decodes replies with them without importing the worker runtime.

// InspectArgs are the arguments of an inspect request.
type InspectArgs struct {
	IncludeRevoked bool `json:"includeRevoked"`
}

// InFlightTask is one task a worker holds.
type InFlightTask struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Queue   string `json:"queue"`
	Attempt int    `json:"attempt"`
	// State is "running" or "prefetched" (claimed, waiting for a slot).
	State          string    `json:"state"`
	StartedAt      time.Time `json:"startedAt,omitzero"`
	RuntimeSeconds float64   `json:"runtimeSeconds"`
	// LastCheckpoint is the last Heartbeat/ExtendLease/Progress call.
	LastCheckpoint time.Time `json:"lastCheckpoint,omitzero"`
	Progress       float64   `json:"progress"`
}

// InspectData is a worker's inspect reply.
type InspectData struct {
	Tasks   []InFlightTask `json:"tasks"`
	Revoked []revoke.Entry `json:"revoked,omitempty"`
	// Ignored are revoke records the worker does not apply, with why
	// (with a signing key: unsigned or mis-signed).
	Ignored []IgnoredRevoke `json:"ignored,omitempty"`
}

// IgnoredRevoke is a revoke record a worker refused, and why.
type IgnoredRevoke struct {
	Entry revoke.Entry `json:"entry"`
	Why   string       `json:"why"`
}

// PauseStatus is one stored pause as a worker sees it: whether it applies
// to this worker, and why (or why not).
type PauseStatus struct {
	Queue string `json:"queue"`
	// Scope is the record's worker scope: "" for every worker, a node
	// name, or a worker id.
	Scope       string    `json:"scope,omitempty"`
	PausedAt    time.Time `json:"pausedAt,omitzero"`
	RequestedBy string    `json:"requestedBy,omitempty"`
	Applied     bool      `json:"applied"`
	Why         string    `json:"why"`
}

// StatsData is a worker's stats reply.
type StatsData struct {
	Worker  string   `json:"worker"`
	Node    string   `json:"node"`
	Host    string   `json:"host"`
	PID     int      `json:"pid"`
	Version string   `json:"version,omitempty"`
	Queues  []string `json:"queues"`
	Paused  []string `json:"paused"`
	// Pauses are the stored pauses that apply to this worker, and those it
	// ignores for their signature, each with why.
	Pauses            []PauseStatus    `json:"pauses,omitempty"`
	Broadcasts        []string         `json:"broadcasts"`
	InFlight          int              `json:"inFlight"`
	Prefetched        int              `json:"prefetched"`
	ActiveConcurrency int              `json:"activeConcurrency"`
	MinConcurrency    int              `json:"minConcurrency"`
	MaxConcurrency    int              `json:"maxConcurrency"`
	Autoscale         bool             `json:"autoscale"`
	Prefetch          int              `json:"prefetch"`
	QueueDepth        map[string]int64 `json:"queueDepth"`
	// ChildRecycles counts isolation children replaced, by reason.
	ChildRecycles map[string]int64 `json:"childRecycles"`
	Counters      Counters         `json:"counters"`
	// BrokerDurability says whether the broker keeps accepted tasks across
	// a crash of its server (absent when the engine cannot tell, or the
	// settings could not be read).
	BrokerDurability *broker.Durability `json:"brokerDurability,omitempty"`
	StartedAt        time.Time          `json:"startedAt"`
	UptimeSeconds    float64            `json:"uptimeSeconds"`
}

// RevokeArgs are the arguments of a revoke request.
type RevokeArgs struct {
	Entries []revoke.Entry `json:"entries"`
}

// RevokeData is a worker's revoke reply.
type RevokeData struct {
	// Revoked are the task ids now in the worker's revoke cache.
	Revoked []string `json:"revoked"`
	// Terminated are the running tasks the worker cancelled.
	Terminated []string `json:"terminated,omitempty"`
}

// AutoscaleArgs are the arguments of an autoscale request: new bounds.
type AutoscaleArgs struct {
	Min int `json:"min"`
	Max int `json:"max"`
}

// ShutdownArgs are the arguments of a shutdown request.
type ShutdownArgs struct {
	Mode string `json:"mode"`
}

// QueuesArgs are the arguments of pause and resume.
type QueuesArgs struct {
	Queues []string `json:"queues"`
}

// PingData is a worker's ping reply.
type PingData struct {
	State         string  `json:"state"`
	UptimeSeconds float64 `json:"uptimeSeconds"`
}

// serveControl answers control requests until sub is closed.

// Counters are the worker's cumulative task counts.
type Counters struct {
	Processed int64 `json:"processed"`
	Succeeded int64 `json:"succeeded"`
	Failed    int64 `json:"failed"`
	Retried   int64 `json:"retried"`
	Revoked   int64 `json:"revoked"`
	// LeasesLost counts tasks (running or prefetched) this worker stopped
	// because it could not prove it still held their lease.
	LeasesLost int64 `json:"leasesLost"`
}

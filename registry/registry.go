// Package registry defines the worker registry: each live worker writes a
// heartbeat record with a TTL, so operators (and the control plane) know who
// is alive, what it consumes and how busy it is.
//
// Implementations live with their engine (broker/memory, broker/redis, ...).
package registry

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// WorkerInfo is one worker's heartbeat record.
type WorkerInfo struct {
	// ID is "<node>@<hostname>".
	ID          string    `json:"id"`
	Node        string    `json:"node"`
	Host        string    `json:"host"`
	PID         int       `json:"pid"`
	Namespace   string    `json:"namespace"`
	Queues      []string  `json:"queues"`
	Broadcasts  []string  `json:"broadcasts,omitempty"`
	Concurrency int       `json:"concurrency"`
	InFlight    int       `json:"inFlight"`
	StartedAt   time.Time `json:"startedAt"`
	LastSeen    time.Time `json:"lastSeen"`
	// State is "running", "draining" or "stopped".
	State   string `json:"state"`
	Version string `json:"version,omitempty"`
}

// ValidateHeartbeat reports a heartbeat no registry accepts: an empty
// namespace or one with whitespace or braces, an empty id, a TTL below
// 1ms. Every registry's Heartbeat calls it first.
func ValidateHeartbeat(info WorkerInfo, ttl time.Duration) error {
	switch {
	case info.Namespace == "" || strings.ContainsAny(info.Namespace, " \t\r\n{}"):
		return fmt.Errorf("heartbeat of worker %q: namespace %q is empty or contains whitespace or braces", info.ID, info.Namespace)
	case info.ID == "":
		return fmt.Errorf("heartbeat in namespace %q: empty worker id", info.Namespace)
	case ttl < time.Millisecond:
		return fmt.Errorf("heartbeat of worker %q: ttl %v is below 1ms", info.ID, ttl)
	}
	return nil
}

// Registry stores heartbeats. Implementations must be safe for concurrent
// use.
type Registry interface {
	// Heartbeat upserts info under (info.Namespace, info.ID), valid for ttl.
	Heartbeat(ctx context.Context, info WorkerInfo, ttl time.Duration) error
	// Remove deletes a worker's record (clean shutdown).
	Remove(ctx context.Context, namespace, id string) error
	// List returns the records of a namespace whose TTL has not run out,
	// sorted by ID.
	List(ctx context.Context, namespace string) ([]WorkerInfo, error)
	// Close releases resources.
	Close() error
}

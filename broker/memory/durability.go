package memory

import (
	"context"

	"github.com/stemhq/stem/broker"
)

var _ broker.DurabilityReporter = (*Engine)(nil)

// Durability reports that the memory engine is never durable: tasks live
// in this process only and are gone when it exits.
func (e *Engine) Durability(context.Context) (broker.Durability, error) {
	return broker.Durability{Durable: false, Detail: "memory:// keeps tasks in this process only: they are gone when it exits"}, nil
}

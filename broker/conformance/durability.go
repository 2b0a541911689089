package conformance

import (
	"testing"

	"github.com/stemhq/stem/broker"
)

// runDurability checks that the engine's broker says whether it keeps
// tasks across a crash (broker.DurabilityReporter), with the settings it
// judged by, and gives the same answer when asked twice.
func runDurability(t *testing.T, newEngine NewEngine) {
	b := brokerOf(t, newEngine)
	dr, ok := b.(broker.DurabilityReporter)
	if !ok {
		t.Fatalf("%T does not implement broker.DurabilityReporter", b)
	}
	ctx := testContext(t)
	first, err := dr.Durability(ctx)
	if err != nil {
		t.Fatalf("Durability: %v", err)
	}
	if first.Detail == "" {
		t.Fatalf("Durability = %+v: no detail naming the settings", first)
	}
	again, err := dr.Durability(ctx)
	if err != nil || again != first {
		t.Fatalf("Durability asked twice = %+v, %v; first %+v", again, err, first)
	}
}

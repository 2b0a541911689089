package conformance

import (
	"testing"

	"github.com/stemhq/stem/broker"
)

// runDurability checks that the engine's broker says whether it keeps
// tasks across a crash (broker.DurabilityReporter), with the settings it
// judged by, and gives the same answer when asked twice.
func runDurability(t *testing.T, newEngine NewEngine) {
	e := newEngine(t, Options{})
	if e.Broker == nil {
		t.Skip("no broker role")
	}
	dr, ok := e.Broker.(broker.DurabilityReporter)
	if !ok {
		t.Fatalf("%T does not implement broker.DurabilityReporter", e.Broker)
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

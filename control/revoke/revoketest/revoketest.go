// Package revoketest runs the revoke area of the one contract suite,
// broker/conformance, on a bare revoke.Store. It only forwards, for the
// stores whose tests call it (control/revoke's); an engine's revoke store
// runs the area through conformance.Exercise (Engine.Revokes) instead.
package revoketest

import (
	"testing"

	"github.com/stemhq/stem/broker/conformance"
	"github.com/stemhq/stem/control/revoke"
)

// NewStore builds a fresh, empty store for one test (see
// conformance.RevokeStore for its cleanup).
type NewStore func(t *testing.T) revoke.Store

// Run runs the revoke contract against stores built by newStore: it is
// conformance.RevokeStore.
func Run(t *testing.T, newStore NewStore) {
	conformance.RevokeStore(t, newStore)
}

// Same reports how a differs from b, or "" when they are equal: it is
// conformance.SameEntry.
func Same(a, b revoke.Entry) string {
	return conformance.SameEntry(a, b)
}

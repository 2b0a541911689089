package revoke_test

import (
	"context"
	"testing"

	"github.com/stemhq/stem/broker/conformance"
	"github.com/stemhq/stem/control/revoke"
)

func TestMemoryContract(t *testing.T) {
	conformance.RevokeStore(t, func(t *testing.T) revoke.Store {
		s := revoke.NewMemory()
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

func TestMemoryURLShared(t *testing.T) {
	ctx := context.Background()
	a := revoke.SharedMemory("memory://shared-test")
	b := revoke.SharedMemory("memory://shared-test")
	other := revoke.SharedMemory("memory://other-test")
	e := revoke.Entry{Namespace: "ns", TaskID: "t", Version: 1}
	if _, err := a.Upsert(ctx, []revoke.Entry{e}); err != nil {
		t.Fatal(err)
	}
	if got, err := b.List(ctx, "ns"); err != nil || len(got) != 1 {
		t.Fatalf("second handle on the same URL: List = %v, %v; want the entry", got, err)
	}
	if got, err := other.List(ctx, "ns"); err != nil || len(got) != 0 {
		t.Fatalf("handle on another URL: List = %v, %v; want nothing", got, err)
	}
	// Closing one handle leaves the records to the others.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if got, err := b.List(ctx, "ns"); err != nil || len(got) != 1 {
		t.Fatalf("after closing the first handle: List = %v, %v; want the entry", got, err)
	}
	_ = b.Close()
	_ = other.Close()
}

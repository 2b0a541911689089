package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run when a benchmark leaves a goroutine behind (the
// engines' worker benchmarks start workers, listeners and watchers).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

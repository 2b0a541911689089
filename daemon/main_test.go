package daemon

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run when a test leaves a goroutine behind (the
// supervisor's pidfile watchers and process waiters included).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

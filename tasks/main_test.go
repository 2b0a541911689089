package tasks

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// Exec tasks re-execute this test binary (/proc/self/exe) as their
	// supervisor.
	ServeSupervisorIfRequested()
	goleak.VerifyTestMain(m)
}

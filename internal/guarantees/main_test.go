package guarantees_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/stemhq/stem/tasks"
	"github.com/stemhq/stem/worker"
)

func TestMain(m *testing.M) {
	// Exec tasks' supervisors and isolated handlers run in this test
	// binary re-executed.
	tasks.ServeSupervisorIfRequested()
	worker.ServeChildIfRequested(childRegistry())
	goleak.VerifyTestMain(m)
}

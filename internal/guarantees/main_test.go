package guarantees_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/stemhq/stem/worker"
)

func TestMain(m *testing.M) {
	// Isolated handlers run in this test binary re-executed as a child.
	worker.ServeChildIfRequested(childRegistry())
	goleak.VerifyTestMain(m)
}

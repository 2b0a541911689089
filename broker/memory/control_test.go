package memory_test

import (
	"testing"

	"github.com/stemhq/stem/broker/memory"
	"github.com/stemhq/stem/control/controltest"
)

func TestControlContract(t *testing.T) {
	m := memory.New(memory.Options{})
	controltest.Run(t, func(t *testing.T) controltest.Engine { return m })
}

package control_test

import (
	"testing"

	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/control/controltest"
)

func TestMemoryContract(t *testing.T) {
	m := control.NewMemory()
	controltest.Run(t, func(t *testing.T) controltest.Engine { return m })
}

package cli

import (
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestScriptsUnits runs the black-box scripts of `stem units`
// (testdata/units): generate and install under a temporary root. They need
// no broker and no systemd.
func TestScriptsUnits(t *testing.T) {
	testscript.Run(t, scriptParams(t, "testdata/units", ""))
}

package cli

import (
	"github.com/sirupsen/logrus"

	"github.com/stemhq/stem/daemon"
	"github.com/stemhq/stem/units"
	"github.com/stemhq/stem/worker"
)

// exitRestart is the exit status of `worker run` after a warm restart asked
// for with SIGHUP. It is the units package's RestartExitStatus (129, 128+1:
// "ended by SIGHUP"), which the packaged unit lists in
// RestartForceExitStatus= and SuccessExitStatus=, so the two cannot drift.
const exitRestart = ExitRestart

// The unit's RestartForceExitStatus= must name the same status.
var _ = [1]struct{}{}[exitRestart-units.RestartExitStatus]

// restartExit returns what `worker run` returns: err, or, when the run
// ended cleanly after a SIGHUP asked for a warm restart (daemon.Shutdown),
// an exit with status exitRestart (nothing printed on stderr), so the
// service manager starts a new process that reads the env files and the
// tasks file afresh.
func restartExit(p *daemon.Shutdown[worker.Mode], err error, log logrus.FieldLogger) error {
	if err != nil || !p.Restart() {
		return err
	}
	if log != nil {
		log.WithField("status", exitRestart).Info("exiting for the warm restart")
	}
	return &ExitError{Code: exitRestart}
}

package cli

import (
	"github.com/sirupsen/logrus"

	"github.com/stemhq/stem/daemon"
	"github.com/stemhq/stem/units"
	"github.com/stemhq/stem/worker"
)

// ExitRestart is the units package's RestartExitStatus, which the packaged
// unit lists in RestartForceExitStatus= and SuccessExitStatus=: this does
// not compile if the two drift.
var _ = [1]struct{}{}[ExitRestart-units.RestartExitStatus]

// restartExit returns what `worker run` returns: err, or, when the run
// ended cleanly after a SIGHUP asked for a warm restart (daemon.Shutdown),
// an exit with status ExitRestart (nothing printed on stderr), so the
// service manager starts a new process that reads the env files and the
// tasks file afresh.
func restartExit(p *daemon.Shutdown[worker.Mode], err error, log logrus.FieldLogger) error {
	if err != nil || !p.Restart() {
		return err
	}
	if log != nil {
		log.WithField("status", ExitRestart).Info("exiting for the warm restart")
	}
	return &ExitError{Code: ExitRestart}
}

package cli

import (
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/sirupsen/logrus"

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

// restartOnHUP implements `systemctl reload` for `worker run`: a warm
// restart. On SIGHUP the worker shuts down warm (stops claiming, hands
// back prefetched tasks, lets running tasks finish) and exits with
// exitRestart; the service manager then starts a new process, which reads
// the env files and the tasks file afresh. A second signal escalates as
// usual (warm → soft → hard).
//
// It is off when --signals (STEM_WORKER_SIGNALS) maps HUP itself: the
// operator's mapping wins, and SIGHUP is then an ordinary shutdown signal.
//
// worker run uses it in three places:
//
//	restart := newRestartOnHUP(signalModes, log)
//	restart.notify(sigs)                   // after signal.Notify of the mapped signals
//	m := restart.mode(s, signalModes)      // instead of signalModes[s]
//	return restart.exit(w.Run(ctx))        // and restart.exit(nil) when a signal ended the broker retry loop
type restartOnHUP struct {
	enabled   bool
	requested atomic.Bool
	log       logrus.FieldLogger
}

func newRestartOnHUP(modes map[os.Signal]worker.Mode, log logrus.FieldLogger) *restartOnHUP {
	_, mapped := modes[syscall.SIGHUP]
	return &restartOnHUP{enabled: !mapped, log: log}
}

// notify makes ch receive SIGHUP too, unless --signals maps it.
func (r *restartOnHUP) notify(ch chan<- os.Signal) {
	if r.enabled {
		signal.Notify(ch, syscall.SIGHUP)
	}
}

// mode returns the shutdown mode signal s asks for: warm for SIGHUP (and
// the restart is remembered), else the mapping's.
func (r *restartOnHUP) mode(s os.Signal, modes map[os.Signal]worker.Mode) worker.Mode {
	if r.enabled && s == syscall.SIGHUP {
		if !r.requested.Swap(true) && r.log != nil {
			r.log.Info("SIGHUP: warm restart (running tasks finish, then the service manager starts a new worker)")
		}
		return worker.Warm
	}
	return modes[s]
}

// exit returns what `worker run` should return: err, or, when the run
// ended cleanly after a SIGHUP, an exit with status exitRestart (nothing
// printed on stderr).
func (r *restartOnHUP) exit(err error) error {
	if err != nil || !r.requested.Load() {
		return err
	}
	if r.log != nil {
		r.log.WithField("status", exitRestart).Info("exiting for the warm restart")
	}
	return &ExitError{Code: exitRestart}
}

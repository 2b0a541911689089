package cli

import (
	"errors"
	"syscall"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/stemhq/stem/daemon"
	"github.com/stemhq/stem/units"
	"github.com/stemhq/stem/worker"
)

// TestRestartExit: after an unmapped SIGHUP a clean run exits 129
// silently; a failed run keeps its error; without SIGHUP nil stays nil.
func TestRestartExit(t *testing.T) {
	modes, err := daemon.ParseSignals(DefaultSignals, worker.ParseMode)
	if err != nil {
		t.Fatal(err)
	}
	log, hook := test.NewNullLogger()
	p := daemon.NewShutdown(modes, worker.Warm, worker.Hard)
	p.Signal(syscall.SIGTERM)
	if err := restartExit(p, nil, log); err != nil {
		t.Errorf("no SIGHUP yet: exit(nil) = %v, want nil", err)
	}
	p = daemon.NewShutdown(modes, worker.Warm, worker.Hard)
	p.Signal(syscall.SIGHUP)
	var ee *ExitError
	if err := restartExit(p, nil, log); !errors.As(err, &ee) || ee.Code != units.RestartExitStatus || ee.Err != nil {
		t.Errorf("after SIGHUP: exit(nil) = %v, want a silent exit %d", err, units.RestartExitStatus)
	}
	if ExitCode(restartExit(p, nil, log)) != 129 {
		t.Errorf("exit code %d, want 129", ExitCode(restartExit(p, nil, log)))
	}
	boom := errors.New("boom")
	if err := restartExit(p, boom, log); err != boom {
		t.Errorf("exit(boom) = %v", err)
	}
	n := 0
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.InfoLevel {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d info lines, want 2 (one per clean exit after SIGHUP)", n)
	}
}

package cli

import (
	"errors"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/stemhq/stem/units"
	"github.com/stemhq/stem/worker"
)

func TestRestartOnHUPMode(t *testing.T) {
	modes, err := parseSignals(DefaultSignals)
	if err != nil {
		t.Fatal(err)
	}
	log, hook := test.NewNullLogger()
	r := newRestartOnHUP(modes, log)
	if got := r.mode(syscall.SIGTERM, modes); got != worker.Warm {
		t.Errorf("SIGTERM: mode %v, want warm", got)
	}
	if err := r.exit(nil); err != nil {
		t.Errorf("no SIGHUP yet: exit(nil) = %v, want nil", err)
	}
	if got := r.mode(syscall.SIGHUP, modes); got != worker.Warm {
		t.Errorf("SIGHUP: mode %v, want warm", got)
	}
	r.mode(syscall.SIGHUP, modes) // a second one logs nothing more
	var ee *ExitError
	if err := r.exit(nil); !errors.As(err, &ee) || ee.Code != units.RestartExitStatus || ee.Err != nil {
		t.Errorf("after SIGHUP: exit(nil) = %v, want a silent exit %d", err, units.RestartExitStatus)
	}
	if ExitCode(r.exit(nil)) != 129 {
		t.Errorf("exit code %d, want 129", ExitCode(r.exit(nil)))
	}
	// A run that failed keeps its error.
	boom := errors.New("boom")
	if err := r.exit(boom); err != boom {
		t.Errorf("exit(boom) = %v", err)
	}
	n := 0
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.InfoLevel {
			n++
		}
	}
	if n != 3 {
		t.Errorf("%d info lines, want 3 (SIGHUP once, then one per clean exit)", n)
	}
}

// TestRestartOnHUPMappedByOperator: when --signals maps HUP, the mapping
// wins and no restart is requested.
func TestRestartOnHUPMappedByOperator(t *testing.T) {
	modes, err := parseSignals("TERM=warm,HUP=soft")
	if err != nil {
		t.Fatal(err)
	}
	r := newRestartOnHUP(modes, nil)
	if got := r.mode(syscall.SIGHUP, modes); got != worker.Soft {
		t.Errorf("mapped SIGHUP: mode %v, want soft", got)
	}
	if err := r.exit(nil); err != nil {
		t.Errorf("mapped SIGHUP: exit(nil) = %v, want nil", err)
	}
	ch := make(chan os.Signal, 1)
	r.notify(ch) // does nothing: the mapping registered HUP already
	signal.Stop(ch)
}

// TestRestartOnHUPNotify checks that notify really subscribes to SIGHUP.
func TestRestartOnHUPNotify(t *testing.T) {
	modes, _ := parseSignals(DefaultSignals)
	r := newRestartOnHUP(modes, nil)
	ch := make(chan os.Signal, 1)
	r.notify(ch)
	defer signal.Stop(ch)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-ch:
		if s != syscall.SIGHUP {
			t.Errorf("got %v", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("SIGHUP not delivered to the channel within 5s")
	}
}

package daemon

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
)

// signalNames are the signals a shutdown mapping may name.
var signalNames = map[string]syscall.Signal{"TERM": syscall.SIGTERM, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT,
	"HUP": syscall.SIGHUP, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2}

// ParseSignals parses a signal → shutdown mode mapping such as
// "TERM=warm,INT=soft,QUIT=hard" (signals TERM, INT, QUIT, HUP, USR1, USR2,
// with or without SIG, any case); parseMode parses each mode.
func ParseSignals[M any](spec string, parseMode func(string) (M, error)) (map[os.Signal]M, error) {
	out := map[os.Signal]M{}
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, mode, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want SIGNAL=mode", part)
		}
		sig, known := signalNames[strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(name)), "SIG")]
		if !known {
			return nil, fmt.Errorf("%q: unknown signal %q (TERM, INT, QUIT, HUP, USR1 or USR2)", part, name)
		}
		m, err := parseMode(strings.TrimSpace(mode))
		if err != nil {
			return nil, fmt.Errorf("%q: %v", part, err)
		}
		if _, dup := out[sig]; dup {
			return nil, fmt.Errorf("%q: signal %s mapped twice", part, name)
		}
		out[sig] = m
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no signal mapped")
	}
	return out, nil
}

// Shutdown is the signal policy of a long-running node: which shutdown
// mode (warm < soft < hard, as ordered integers) each signal asks for.
//
//   - A signal asks for its mapped mode; one that asks for no more than
//     the mode already under way escalates one step, up to Hard (a second
//     SIGTERM after a warm one is soft, a third hard).
//   - SIGHUP, unless the mapping names it, is a warm restart (`systemctl
//     reload`): a warm shutdown after which the process exits with a
//     status that tells the service manager to start it again (Restart).
//
// It is safe for concurrent use.
type Shutdown[M ~int] struct {
	modes      map[os.Signal]M
	warm, hard M
	hupRestart bool

	mu      sync.Mutex
	cur     M
	restart bool
}

// NewShutdown returns the policy of mapping modes, whose weakest and
// strongest modes are warm and hard.
func NewShutdown[M ~int](modes map[os.Signal]M, warm, hard M) *Shutdown[M] {
	_, mapped := modes[syscall.SIGHUP]
	return &Shutdown[M]{modes: modes, warm: warm, hard: hard, hupRestart: !mapped}
}

// Signals are the signals to subscribe to: the mapped ones, and SIGHUP
// when it is the warm restart.
func (s *Shutdown[M]) Signals() []os.Signal {
	out := slices.Collect(maps.Keys(s.modes))
	if s.hupRestart {
		out = append(out, syscall.SIGHUP)
	}
	return out
}

// Signal records sig and returns the mode to shut down in now; first is
// true when sig is the first SIGHUP asking for a warm restart.
func (s *Shutdown[M]) Signal(sig os.Signal) (m M, firstRestart bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hupRestart && sig == syscall.SIGHUP {
		m, firstRestart = s.warm, !s.restart
		s.restart = true
	} else {
		m = s.modes[sig]
	}
	if m <= s.cur {
		m = min(s.cur+1, s.hard)
	}
	s.cur = m
	return m, firstRestart
}

// Mode is the mode under way (0 before any signal).
func (s *Shutdown[M]) Mode() M {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// Restart reports whether a SIGHUP asked for a warm restart.
func (s *Shutdown[M]) Restart() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restart
}

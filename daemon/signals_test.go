package daemon

import (
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mode is a shutdown mode for the tests: 1 warm, 2 soft, 3 hard.
type mode int

const (
	warm mode = iota + 1
	soft
	hard
)

func parseMode(s string) (mode, error) {
	if i := slices.Index([]string{"warm", "soft", "hard"}, s); i >= 0 {
		return mode(i + 1), nil
	}
	return 0, fmt.Errorf("unknown shutdown mode %q", s)
}

func TestParseSignals(t *testing.T) {
	m, err := ParseSignals("TERM=warm,INT=soft,QUIT=hard", parseMode)
	if err != nil || m[syscall.SIGTERM] != warm || m[syscall.SIGINT] != soft || m[syscall.SIGQUIT] != hard {
		t.Fatalf("default: %v %v", m, err)
	}
	m, err = ParseSignals(" sigterm=soft , HUP=warm", parseMode)
	if err != nil || len(m) != 2 || m[syscall.SIGTERM] != soft || m[syscall.SIGHUP] != warm {
		t.Fatalf("custom: %v %v", m, err)
	}
	for spec, want := range map[string]string{
		"TERM":                "want SIGNAL=mode",
		"KILL=hard":           "unknown signal",
		"TERM=gentle":         "unknown shutdown mode",
		"TERM=warm,TERM=hard": "mapped twice",
		" , ":                 "no signal mapped",
	} {
		if _, err := ParseSignals(spec, parseMode); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", spec, err, want)
		}
	}
}

// TestShutdownEscalates: each signal asks for its mode; one that asks for
// no more than the mode under way escalates one step, up to hard.
func TestShutdownEscalates(t *testing.T) {
	modes, _ := ParseSignals("TERM=warm,INT=soft,QUIT=hard", parseMode)
	for _, tc := range []struct {
		sigs []os.Signal
		want []mode
	}{
		{[]os.Signal{syscall.SIGTERM, syscall.SIGTERM, syscall.SIGTERM, syscall.SIGTERM}, []mode{warm, soft, hard, hard}},
		{[]os.Signal{syscall.SIGINT, syscall.SIGTERM}, []mode{soft, hard}},
		{[]os.Signal{syscall.SIGQUIT}, []mode{hard}},
		{[]os.Signal{syscall.SIGTERM, syscall.SIGQUIT}, []mode{warm, hard}},
	} {
		p := NewShutdown(modes, warm, hard)
		var got []mode
		for _, s := range tc.sigs {
			m, restart := p.Signal(s)
			if restart {
				t.Errorf("%v: a restart without SIGHUP", tc.sigs)
			}
			got = append(got, m)
		}
		if !slices.Equal(got, tc.want) || p.Mode() != tc.want[len(tc.want)-1] || p.Restart() {
			t.Errorf("%v: modes %v (now %v), want %v", tc.sigs, got, p.Mode(), tc.want)
		}
	}
}

// TestShutdownHUPRestart: an unmapped SIGHUP is a warm shutdown that asks
// for a restart (reported once); a mapped one is an ordinary signal.
func TestShutdownHUPRestart(t *testing.T) {
	modes, _ := ParseSignals("TERM=warm,INT=soft,QUIT=hard", parseMode)
	p := NewShutdown(modes, warm, hard)
	if !slices.Contains(p.Signals(), os.Signal(syscall.SIGHUP)) || len(p.Signals()) != 4 {
		t.Errorf("signals %v: want the three mapped and SIGHUP", p.Signals())
	}
	if m, first := p.Signal(syscall.SIGHUP); m != warm || !first || !p.Restart() {
		t.Errorf("SIGHUP: mode %v first %v restart %v; want warm, true, true", m, first, p.Restart())
	}
	if m, first := p.Signal(syscall.SIGHUP); m != soft || first {
		t.Errorf("second SIGHUP: mode %v first %v; want soft (escalated), false", m, first)
	}

	modes, _ = ParseSignals("TERM=warm,HUP=soft", parseMode)
	p = NewShutdown(modes, warm, hard)
	if len(p.Signals()) != 2 {
		t.Errorf("signals %v: want TERM and HUP once", p.Signals())
	}
	if m, first := p.Signal(syscall.SIGHUP); m != soft || first || p.Restart() {
		t.Errorf("mapped SIGHUP: mode %v first %v restart %v; want soft, no restart", m, first, p.Restart())
	}
}

// TestShutdownSignalsSubscribe checks that the SIGHUP of Signals is really
// delivered.
func TestShutdownSignalsSubscribe(t *testing.T) {
	modes, _ := ParseSignals("USR2=warm", parseMode)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, NewShutdown(modes, warm, hard).Signals()...)
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

package cli

import (
	"strings"
	"syscall"
	"testing"

	"github.com/stemhq/stem/worker"
)

func TestParseSignals(t *testing.T) {
	m, err := parseSignals(DefaultSignals)
	if err != nil || m[syscall.SIGTERM] != worker.Warm || m[syscall.SIGINT] != worker.Soft || m[syscall.SIGQUIT] != worker.Hard {
		t.Fatalf("default: %v %v", m, err)
	}
	m, err = parseSignals(" sigterm=soft , HUP=warm")
	if err != nil || len(m) != 2 || m[syscall.SIGTERM] != worker.Soft || m[syscall.SIGHUP] != worker.Warm {
		t.Fatalf("custom: %v %v", m, err)
	}
	for spec, want := range map[string]string{
		"TERM":                "want SIGNAL=mode",
		"KILL=hard":           "unknown signal",
		"TERM=gentle":         "unknown shutdown mode",
		"TERM=warm,TERM=hard": "mapped twice",
		" , ":                 "no signal mapped",
	} {
		if _, err := parseSignals(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", spec, err, want)
		}
	}
}

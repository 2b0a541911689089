package cli

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/daemon"
)

// TestExitCode checks the one place that maps errors to exit codes.
func TestExitCode(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, ExitOK},
		{"explicit", &ExitError{Code: ExitPartial}, ExitPartial},
		{"wrapped explicit", fmt.Errorf("ctx: %w", withCode(ExitNotRunning, errors.New("x"))), ExitNotRunning},
		{"usage", usageErrorf("bad"), ExitUsage},
		{"config", &stem.ConfigError{Key: "K", Value: "v", Msg: "m"}, ExitConfig},
		{"wrapped config", fmt.Errorf("load: %w", stem.Configf("f:1: x")), ExitConfig},
		{"unavailable", fmt.Errorf("redis://h: %w", stem.ErrUnavailable), ExitUnavailable},
		{"incompatible store", fmt.Errorf("sqlite /x.db: %w", stem.ErrIncompatible), ExitConfig},
		{"refused pidfile", fmt.Errorf("alpha: %w", &daemon.RefusedError{What: "pidfile", Path: "/run/stem/a.pid", Reason: "r"}), ExitRefused},
		{"other", errors.New("surprise"), ExitInternal},
	}
	for _, tt := range tests {
		if got := ExitCode(tt.err); got != tt.want {
			t.Errorf("%s: ExitCode = %d, want %d", tt.name, got, tt.want)
		}
	}
	seen := map[int]bool{}
	for _, e := range ExitCodes {
		if seen[e.Code] {
			t.Errorf("code %d listed twice", e.Code)
		}
		seen[e.Code] = true
	}
}

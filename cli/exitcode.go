package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"github.com/stemhq/stem"
	"github.com/stemhq/stem/daemon"
)

// The exit codes of every stem command. This is the one table; the README's
// table is checked against it by TestExitCodeTableInREADME.
const (
	// ExitOK: success.
	ExitOK = 0
	// ExitFailure: unhealthy (healthcheck), a task that failed
	// (enqueue --wait), or a target that replied with an error.
	ExitFailure = 1
	// ExitNotRunning: not running (LSB; multi status, healthcheck).
	ExitNotRunning = 3
	// ExitUsage: bad command line (unknown flag, bad argument, bad --args).
	ExitUsage = 64
	// ExitUnavailable: the broker is unreachable, or no worker replied.
	ExitUnavailable = 69
	// ExitInternal: a bug or an unexpected failure.
	ExitInternal = 70
	// ExitPartial: some targets did not answer.
	ExitPartial = 75
	// ExitRefused: a pidfile, pid directory or logfile that stem refuses
	// to use: unsafe (a symlink, another user's, writable by group or
	// others) or not proving that its process is the node
	// (daemon.RefusedError). Nothing was signalled.
	ExitRefused = 77
	// ExitConfig: bad configuration (env file, URL, variable, tasks or
	// routing file).
	ExitConfig = 78
	// ExitRestart: `worker run` stopped for a warm restart asked for with
	// SIGHUP (`systemctl reload`); the unit restarts it. It is
	// units.RestartExitStatus (128+SIGHUP).
	ExitRestart = 129
)

// ExitCodes describes each code; it feeds `stem help exit-codes` and the
// README table test.
var ExitCodes = []struct {
	Code    int
	Meaning string
}{
	{ExitOK, "success"},
	{ExitFailure, "unhealthy, a task that failed (`enqueue --wait`), or a target replied with an error"},
	{ExitNotRunning, "not running (LSB: `multi status`, `healthcheck`)"},
	{ExitUsage, "usage error: unknown flag or command, bad argument, malformed `--args` or an `--args @FILE` that cannot be read"},
	{ExitUnavailable, "unavailable: broker unreachable, or no worker replied"},
	{ExitInternal, "internal error"},
	{ExitPartial, "partial reply: some targets did not answer"},
	{ExitRefused, "refused: a pidfile, pid directory or logfile that is unsafe (symlink, another user's, group/world-writable) or whose lock or identity does not match its process; nothing was signalled"},
	{ExitConfig, "configuration error: bad variable, env file, URL, tasks or routing file"},
	{ExitRestart, "`worker run` stopped for a warm restart (SIGHUP, `systemctl reload`); the unit starts it again"},
}

// ExitError carries an explicit exit code with an error. A nil Err means
// "exit with Code, print nothing" (the command already reported).
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// withCode wraps err so that it exits with code.
func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &ExitError{Code: code, Err: err}
}

// usageErrorf returns a usage error (exit 64).
func usageErrorf(format string, args ...any) error {
	return &ExitError{Code: ExitUsage, Err: fmt.Errorf(format, args...)}
}

// ExitCode maps any error returned by a stem command to its exit code. It is
// the only place that does so.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	var ce *stem.ConfigError
	var re *daemon.RefusedError
	var ue *daemon.UsageError
	switch {
	case errors.As(err, &re):
		return ExitRefused
	case errors.As(err, &ue):
		return ExitUsage
	case errors.As(err, &ce), errors.Is(err, stem.ErrIncompatible):
		return ExitConfig
	case errors.Is(err, stem.ErrUnavailable):
		return ExitUnavailable
	}
	return ExitInternal
}

func newExitCodesHelp() *cobra.Command {
	c := &cobra.Command{
		Use:   "exit-codes",
		Short: "The exit codes of every stem command",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			for _, e := range ExitCodes {
				fmt.Fprintf(w, "%3d  %s\n", e.Code, e.Meaning)
			}
			return nil
		},
	}
	return c
}

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
	ExitOK          = 0   // success
	ExitFailure     = 1   // unhealthy, a failed task, a reply with an error
	ExitNotRunning  = 3   // not running (LSB)
	ExitUsage       = 64  // bad command line
	ExitUnavailable = 69  // broker unreachable, or no worker replied
	ExitInternal    = 70  // a bug or an unexpected failure
	ExitPartial     = 75  // some targets did not answer
	ExitRefused     = 77  // an unsafe or unproven pidfile, pid directory or logfile (daemon.RefusedError)
	ExitConfig      = 78  // bad configuration
	ExitRestart     = 129 // `worker run` stopped for a warm restart (units.RestartExitStatus)
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
	return &cobra.Command{
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
}

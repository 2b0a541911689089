// Package healthcheck is stem's local liveness probe: does the pidfile
// exist and name the node's live process? It reads a pidfile and /proc and
// nothing else: no network, no broker, a few milliseconds, so that it fits
// systemd's ExecStartPost=, a container's liveness probe or a cron job.
//
// Identity is checked as `stem worker multi` checks it before a signal
// (daemon.Proc.Inspect). A readiness check, which needs the broker, plugs
// in as Probe.Readiness.
package healthcheck

import (
	"context"
	"time"

	"github.com/stemhq/stem/daemon"
)

// Status values of a Result.
const (
	StatusHealthy   = "healthy"
	StatusUnhealthy = "unhealthy"
)

// Error codes of an unhealthy Result. They are part of the JSON schema.
const (
	// CodePidfileMissing: there is no pidfile (the node is not running).
	CodePidfileMissing = "pidfile-missing"
	// CodeInvalidPID: the pidfile is empty or does not hold a PID.
	CodeInvalidPID = "invalid-pid"
	// CodeNotRunning: the pidfile names a process that is not running.
	CodeNotRunning = "process-not-running"
	// CodePidReused: the pidfile names a live process that is not the node.
	CodePidReused = "pid-reused"
	// CodePidfileUnreadable: the pidfile or /proc could not be read.
	CodePidfileUnreadable = "pidfile-unreadable"
	// CodePidfileRefused: the pidfile is refused (daemon.Refused).
	CodePidfileRefused = "pidfile-refused"
	// CodeNotReady: the process runs but the readiness check failed.
	CodeNotReady = "not-ready"
)

// stateCodes are the codes of the states that are not Running (any other
// is CodePidfileUnreadable).
var stateCodes = map[daemon.State]string{daemon.NotRunning: CodePidfileMissing, daemon.Invalid: CodeInvalidPID,
	daemon.Dead: CodeNotRunning, daemon.Reused: CodePidReused, daemon.Refused: CodePidfileRefused}

// Target says what to check.
type Target struct {
	// Node is reported as is (it is not checked against the process).
	Node string
	// Pidfile is the expanded path of the node's pidfile.
	Pidfile string
	// Logfile is reported as is.
	Logfile string
}

// Result is the outcome of a check; its JSON form is the documented schema
// of `stem worker healthcheck --json`.
type Result struct {
	// Status is "healthy" or "unhealthy".
	Status string `json:"status"`
	Node   string `json:"node,omitempty"`
	// PID is the PID the pidfile names, when it names one.
	PID     int    `json:"pid,omitempty"`
	Pidfile string `json:"pidfile"`
	Logfile string `json:"logfile,omitempty"`
	// Timestamp is the process's start time (RFC 3339, UTC), when the
	// process is alive.
	Timestamp string `json:"timestamp,omitempty"`
	// UptimeSeconds is how long the process has run, in whole seconds,
	// when it is alive.
	UptimeSeconds *int64 `json:"uptimeSeconds,omitempty"`
	// Error is one of the Code* constants when Status is "unhealthy".
	Error string `json:"error,omitempty"`
	// Message explains Error in one line.
	Message string `json:"message,omitempty"`
}

// Healthy reports whether the check passed.
func (r Result) Healthy() bool { return r.Status == StatusHealthy }

// Probe checks targets.
type Probe struct {
	// Proc reads /proc; its zero value is the real system.
	Proc daemon.Proc
	// Now is the clock for the uptime; nil means time.Now.
	Now func() time.Time
	// Readiness, when set, runs after the liveness check passed; an error
	// makes the result unhealthy with CodeNotReady.
	Readiness func(ctx context.Context, r Result) error
}

// Check probes t.
func (p Probe) Check(ctx context.Context, t Target) Result {
	r := Result{Status: StatusUnhealthy, Node: t.Node, Pidfile: t.Pidfile, Logfile: t.Logfile}
	in := p.Proc.Inspect(t.Pidfile)
	r.PID = in.Pidfile.PID
	if in.Process.PID != 0 && !in.Process.Start.IsZero() {
		now := time.Now
		if p.Now != nil {
			now = p.Now
		}
		up := int64(max(now().Sub(in.Process.Start), 0) / time.Second)
		r.Timestamp = in.Process.Start.UTC().Format(time.RFC3339)
		r.UptimeSeconds = &up
	}
	if in.State != daemon.Running {
		r.Error, r.Message = CodePidfileUnreadable, in.Err.Error()
		if c, ok := stateCodes[in.State]; ok {
			r.Error = c
		}
		return r
	}
	if p.Readiness != nil {
		if err := p.Readiness(ctx, r); err != nil {
			r.Error, r.Message = CodeNotReady, err.Error()
			return r
		}
	}
	r.Status = StatusHealthy
	return r
}

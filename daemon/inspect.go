package daemon

import (
	"errors"
	"fmt"
	"os"
	"time"
)

// State is what a pidfile and the process it names say about a node.
type State int

// The states of a node. The LSB status code of each is given by LSBCode.
const (
	// NotRunning: there is no pidfile.
	NotRunning State = iota
	// Running: the pidfile is locked and names a live process.
	Running
	// Dead: the pidfile names a process that is not running.
	Dead
	// Reused: the pidfile is not locked and names a live process: not the node.
	Reused
	// Invalid: the pidfile does not hold a PID (empty, garbage).
	Invalid
	// Unknown: the pidfile or the process could not be read.
	Unknown
	// Refused: the pidfile cannot be trusted (see RefusedError).
	Refused
)

var stateNames = [...]string{"not running", "running", "dead", "pid reused", "invalid pidfile", "unknown", "refused"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// LSBCode is the LSB `status` exit code of the state: 0 running, 3 not
// running, 1 dead with a pidfile left (dead, reused, invalid), 4 unknown
// or refused.
func (s State) LSBCode() int {
	switch s {
	case Running:
		return 0
	case NotRunning:
		return 3
	case Unknown, Refused:
		return 4
	}
	return 1
}

// Stale reports whether the state leaves a pidfile that no node owns.
func (s State) Stale() bool { return s == Dead || s == Reused || s == Invalid }

// Inspection is the result of Inspect.
type Inspection struct {
	State State
	// Pidfile is what the pidfile says (zero when missing or invalid).
	Pidfile PidfileInfo
	// Process is the process the pidfile names, when it is alive.
	Process ProcessInfo
	// Err explains every state but Running, naming the pidfile and PID.
	Err error
}

// StartSlack is how much later than its pidfile's write time a process may
// seem to have started and still be taken for the node. A process's start
// time is derived from the boot time, which has one-second resolution and
// moves when the wall clock is stepped; the slack absorbs small steps.
const StartSlack = 2 * time.Second

// Inspect reads the pidfile at path and checks the process it names, in
// the order of the package documentation: CheckPath (else Refused), a live
// process (else Dead), the lock (else Reused), HoldsLock and the recorded
// identity, or for the old format a start within StartSlack of the write
// (else Refused).
func (p Proc) Inspect(path string) Inspection {
	if err := CheckPath(path, os.Geteuid()); err != nil {
		return Inspection{State: Refused, Err: err}
	}
	info, err := ReadPidfile(path)
	var ie *InvalidPidfileError
	var re *RefusedError
	switch {
	case errors.Is(err, ErrPidfileMissing):
		return Inspection{State: NotRunning, Err: fmt.Errorf("pidfile %s does not exist", path)}
	case errors.As(err, &re):
		return Inspection{State: Refused, Err: err}
	case errors.As(err, &ie):
		return Inspection{State: Invalid, Err: err}
	case err != nil:
		return Inspection{State: Unknown, Err: err}
	}
	in := Inspection{Pidfile: info}
	set := func(st State, err error) Inspection {
		in.State, in.Err = st, err
		return in
	}
	dead := fmt.Errorf("pidfile %s names PID %d, which is not running", path, info.PID)
	var proc ProcessInfo
	alive, err := p.Alive(info.PID)
	if alive && err == nil {
		proc, err = p.Process(info.PID)
	}
	switch {
	case errors.Is(err, ErrNoProcess), !alive && err == nil:
		return set(Dead, dead)
	case err != nil:
		return set(Unknown, fmt.Errorf("pidfile %s: %w", path, err))
	}
	in.Process = proc
	mismatch := p.identityMismatch(info, proc)
	if !info.Locked {
		if mismatch != "" {
			return set(Reused, fmt.Errorf("pidfile %s names PID %d, but %s: the PID was reused", path, info.PID, mismatch))
		}
		return set(Reused, fmt.Errorf("pidfile %s names PID %d (%s), but no process holds the pidfile's lock, so the node that wrote it is gone and the PID was reused", path, info.PID, proc.Comm))
	}
	held, err := p.HoldsLock(info.PID, info.Dev, info.Ino)
	switch {
	case errors.Is(err, ErrNoProcess):
		return set(Dead, dead)
	case err != nil:
		return set(Refused, &RefusedError{What: "pidfile", Path: path, Reason: err.Error() + "; not signalled"})
	case !held:
		return set(Refused, &RefusedError{What: "pidfile", Path: path, Reason: fmt.Sprintf("it is locked, but not by PID %d (%s), the process it names; it was not written for that process, which is not signalled", info.PID, proc.Comm)})
	case mismatch != "":
		return set(Refused, &RefusedError{What: "pidfile", Path: path, Reason: fmt.Sprintf("PID %d holds its lock, but %s; not signalled", info.PID, mismatch)})
	}
	return set(Running, nil)
}

// identityMismatch compares the process the pidfile names with what the
// pidfile records, and says how they differ ("" when they do not). A
// pidfile of the old format records only its write time.
func (p Proc) identityMismatch(info PidfileInfo, proc ProcessInfo) string {
	const layout = "2006-01-02T15:04:05Z"
	r := info.Record
	if r == nil {
		if proc.Start.After(info.Written.Add(StartSlack)) {
			return fmt.Sprintf("that process (%s) started at %s, after the pidfile was written at %s",
				proc.Comm, proc.Start.UTC().Format(layout), info.Written.UTC().Format("2006-01-02T15:04:05.000Z"))
		}
		return ""
	}
	if boot, err := p.BootID(); err != nil || boot != r.BootID {
		return fmt.Sprintf("the pidfile was written during another boot (boot id %s)", r.BootID)
	}
	if proc.StartTicks != r.StartTicks {
		return fmt.Sprintf("that process (%s) started at %s (%d ticks after boot), not at %d ticks as recorded",
			proc.Comm, proc.Start.UTC().Format(layout), proc.StartTicks, r.StartTicks)
	}
	exe, err := p.Exe(info.PID)
	if err != nil {
		return fmt.Sprintf("its program cannot be checked (%v)", err)
	}
	if !exe.Same(r.Exe) {
		return fmt.Sprintf("it runs %s, not %s that was started (if the node's command replaces itself with another program, make that program the command)", exe, r.Exe)
	}
	return ""
}

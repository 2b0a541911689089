package daemon

import (
	"errors"
	"fmt"
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
	// Reused: the pidfile names a live process that is not the node (the
	// pidfile is not locked, so the process that wrote it is gone, and the
	// PID was handed to another process).
	Reused
	// Invalid: the pidfile does not hold a PID (empty, garbage).
	Invalid
	// Unknown: the pidfile or the process could not be read.
	Unknown
)

var stateNames = [...]string{"not running", "running", "dead", "pid reused", "invalid pidfile", "unknown"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// LSBCode is the LSB `status` exit code of the state: 0 running, 3 not
// running, 1 dead with a pidfile left (dead, reused, invalid), 4 unknown.
func (s State) LSBCode() int {
	switch s {
	case Running:
		return 0
	case NotRunning:
		return 3
	case Unknown:
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

// Inspect reads the pidfile at path and checks the process it names. A
// node is Running only if its pidfile is locked (every stem pidfile is,
// for as long as its node runs), names a live process, and that process
// started no later than the pidfile was written (within StartSlack). A
// pidfile failing either test while naming a live process is Reused: the
// lock is released when the node dies, and a process that started after
// the pidfile was written cannot be the one that wrote it.
func (p Proc) Inspect(path string) Inspection {
	info, err := ReadPidfile(path)
	var ie *InvalidPidfileError
	switch {
	case errors.Is(err, ErrPidfileMissing):
		return Inspection{State: NotRunning, Err: fmt.Errorf("pidfile %s does not exist", path)}
	case errors.As(err, &ie):
		return Inspection{State: Invalid, Err: err}
	case err != nil:
		return Inspection{State: Unknown, Err: err}
	}
	in := Inspection{Pidfile: info}
	alive, err := p.Alive(info.PID)
	if err != nil {
		in.State, in.Err = Unknown, fmt.Errorf("pidfile %s: %w", path, err)
		return in
	}
	if !alive {
		in.State, in.Err = Dead, fmt.Errorf("pidfile %s names PID %d, which is not running", path, info.PID)
		return in
	}
	proc, err := p.Process(info.PID)
	if errors.Is(err, ErrNoProcess) {
		in.State, in.Err = Dead, fmt.Errorf("pidfile %s names PID %d, which is not running", path, info.PID)
		return in
	}
	if err != nil {
		in.State, in.Err = Unknown, fmt.Errorf("pidfile %s: %w", path, err)
		return in
	}
	in.Process = proc
	switch {
	case proc.Start.After(info.Written.Add(StartSlack)):
		in.State = Reused
		in.Err = fmt.Errorf("pidfile %s names PID %d, but that process (%s) started at %s, after the pidfile was written at %s: the PID was reused",
			path, info.PID, proc.Comm, proc.Start.UTC().Format("2006-01-02T15:04:05Z"), info.Written.UTC().Format("2006-01-02T15:04:05.000Z"))
	case !info.Locked:
		in.State = Reused
		in.Err = fmt.Errorf("pidfile %s names PID %d (%s), but no process holds the pidfile's lock, so the node that wrote it is gone and the PID was reused", path, info.PID, proc.Comm)
	default:
		in.State = Running
	}
	return in
}

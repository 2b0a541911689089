package daemon

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoProcess reports that no live process has the PID asked about (it
// never existed, it exited, or it is a zombie waiting to be reaped).
var ErrNoProcess = errors.New("no such process")

// Proc reads process information from a proc filesystem and signals
// processes. The zero value uses /proc and the real kill(2); tests point
// Root at a fixture directory and replace Kill.
type Proc struct {
	// Root is the proc filesystem's mount point; "" means "/proc".
	Root string
	// ClockTicks is USER_HZ, the unit of /proc/<pid>/stat's start time;
	// 0 means 100, which is what Linux reports on every architecture.
	ClockTicks int64
	// Kill sends a signal by PID; nil means syscall.Kill. When set, Signal
	// uses it instead of a pidfd (tests).
	Kill func(pid int, sig syscall.Signal) error
}

func (p Proc) root() string {
	return cmp.Or(p.Root, "/proc")
}

func (p Proc) ticks() int64 {
	if p.ClockTicks <= 0 {
		return 100
	}
	return p.ClockTicks
}

func (p Proc) kill(pid int, sig syscall.Signal) error {
	if p.Kill != nil {
		return p.Kill(pid, sig)
	}
	return syscall.Kill(pid, sig)
}

// ProcessInfo identifies a process. PID and StartTicks together name one
// process for the life of the system: a reused PID has a later start.
type ProcessInfo struct {
	PID int
	// Comm is the command name from /proc/<pid>/stat.
	Comm string
	// State is the one-letter state (R, S, D, Z, ...).
	State byte
	// StartTicks is the start time in clock ticks since boot (field 22).
	StartTicks uint64
	// Start is StartTicks as wall-clock time (boot time + ticks). Boot time
	// has one-second resolution, so Start may be up to a second early.
	Start time.Time
}

// BootTime returns the system's boot time from the "btime" line of
// <root>/stat.
func (p Proc) BootTime() (time.Time, error) {
	path := filepath.Join(p.root(), "stat")
	data, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, fmt.Errorf("reading boot time: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "btime "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
			if err != nil || n <= 0 {
				return time.Time{}, fmt.Errorf("%s: bad btime line %q", path, line)
			}
			return time.Unix(n, 0), nil
		}
	}
	return time.Time{}, fmt.Errorf("%s: no btime line", path)
}

// Process reads /proc/<pid>/stat. It returns ErrNoProcess when the
// process does not exist.
func (p Proc) Process(pid int) (ProcessInfo, error) {
	if pid <= 0 {
		return ProcessInfo{}, fmt.Errorf("PID %d: %w", pid, ErrNoProcess)
	}
	path := filepath.Join(p.root(), strconv.Itoa(pid), "stat")
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return ProcessInfo{}, fmt.Errorf("PID %d: %w", pid, ErrNoProcess)
	}
	if err != nil {
		return ProcessInfo{}, fmt.Errorf("reading process %d: %w", pid, err)
	}
	info, err := parseStat(pid, data)
	if err != nil {
		return ProcessInfo{}, fmt.Errorf("%s: %w", path, err)
	}
	boot, err := p.BootTime()
	if err != nil {
		return ProcessInfo{}, err
	}
	t := p.ticks()
	info.Start = boot.Add(time.Duration(info.StartTicks/uint64(t))*time.Second +
		time.Duration(info.StartTicks%uint64(t))*time.Second/time.Duration(t))
	return info, nil
}

// parseStat parses the fields stem needs from a /proc/<pid>/stat line. The
// command name sits in parentheses and may itself contain spaces and
// parentheses, so the fields are counted from the last ')'.
func parseStat(pid int, data []byte) (ProcessInfo, error) {
	open := bytes.IndexByte(data, '(')
	end := bytes.LastIndexByte(data, ')')
	if open < 0 || end < open {
		return ProcessInfo{}, errors.New("malformed stat: no command name")
	}
	fields := strings.Fields(string(data[end+1:]))
	// fields[0] is field 3 (state); start time is field 22.
	if len(fields) < 20 {
		return ProcessInfo{}, fmt.Errorf("malformed stat: %d fields after the command name, want at least 20", len(fields))
	}
	start, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return ProcessInfo{}, fmt.Errorf("malformed stat: start time %q", fields[19])
	}
	if len(fields[0]) != 1 {
		return ProcessInfo{}, fmt.Errorf("malformed stat: state %q", fields[0])
	}
	return ProcessInfo{PID: pid, Comm: string(data[open+1 : end]), State: fields[0][0], StartTicks: start}, nil
}

// Alive reports whether pid names a live process, with kill(pid, 0)
// semantics: EPERM (a process of another user) counts as alive, ESRCH as
// dead. A zombie counts as dead. It never signals PIDs below 1, which
// kill(2) would read as process groups.
func (p Proc) Alive(pid int) (bool, error) {
	if pid <= 0 {
		return false, nil
	}
	err := p.kill(pid, 0)
	switch {
	case err == nil, errors.Is(err, syscall.EPERM):
	case errors.Is(err, syscall.ESRCH):
		return false, nil
	default:
		return false, fmt.Errorf("probing PID %d: %w", pid, err)
	}
	info, err := p.Process(pid)
	switch {
	case errors.Is(err, ErrNoProcess):
		return false, nil
	case err != nil:
		// /proc hidden (hidepid) or unreadable: trust kill(2).
		return true, nil
	}
	return info.State != 'Z' && info.State != 'X' && info.State != 'x', nil
}

// ReusedError reports that a PID now belongs to another process than the
// one expected, so it was not signalled.
type ReusedError struct {
	PID                 int
	WantTicks, GotTicks uint64
}

func (e *ReusedError) Error() string {
	return fmt.Sprintf("PID %d now belongs to another process (start %d ticks after boot, expected %d): not signalled", e.PID, e.GotTicks, e.WantTicks)
}

// Signal sends sig to pid only if the process still has the start time
// startTicks, that is, if it is still the process that was inspected. It
// returns a *ReusedError, and sends nothing, when the PID now names another
// process, and an error wrapping ErrNoProcess when it is gone.
//
// On Linux 5.3 and later the check and the signal go through a pidfd, so a
// PID recycled between the check and the signal cannot be hit.
func (p Proc) Signal(pid int, startTicks uint64, sig syscall.Signal) error {
	if pid <= 0 {
		return fmt.Errorf("refusing to signal PID %d", pid)
	}
	fd := -1
	if p.Kill == nil {
		var err error
		fd, err = unix.PidfdOpen(pid, 0)
		switch {
		case errors.Is(err, syscall.ESRCH):
			return fmt.Errorf("PID %d: %w", pid, ErrNoProcess)
		case err != nil:
			fd = -1 // ENOSYS and friends: fall back to kill(2)
		default:
			defer unix.Close(fd)
		}
	}
	info, err := p.Process(pid)
	if err != nil {
		return err
	}
	if info.StartTicks != startTicks {
		return &ReusedError{PID: pid, WantTicks: startTicks, GotTicks: info.StartTicks}
	}
	if fd >= 0 {
		err = unix.PidfdSendSignal(fd, unix.Signal(sig), nil, 0)
	} else {
		err = p.kill(pid, sig)
	}
	if errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("PID %d: %w", pid, ErrNoProcess)
	}
	if err != nil {
		return fmt.Errorf("sending %v to PID %d: %w", sig, pid, err)
	}
	return nil
}

// WaitExit waits until the process pid with start time startTicks has
// exited or deadline passes, and reports whether it exited. It waits on a
// pidfd where the kernel offers one and polls /proc otherwise.
func (p Proc) WaitExit(pid int, startTicks uint64, deadline time.Time) bool {
	gone := func() bool {
		info, err := p.Process(pid)
		if errors.Is(err, ErrNoProcess) {
			return true
		}
		return err == nil && (info.StartTicks != startTicks || info.State == 'Z' || info.State == 'X')
	}
	if p.Kill == nil {
		if fd, err := unix.PidfdOpen(pid, 0); err == nil {
			defer unix.Close(fd)
			if gone() {
				return true
			}
			for {
				ms := min(time.Until(deadline).Milliseconds(), 1<<30)
				if ms <= 0 {
					return gone()
				}
				fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
				n, err := unix.Poll(fds, int(ms))
				if errors.Is(err, syscall.EINTR) {
					continue
				}
				if err != nil {
					break // fall back to polling
				}
				if n > 0 {
					return true
				}
			}
		} else if errors.Is(err, syscall.ESRCH) {
			return true
		}
	}
	for {
		if gone() {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		wait := min(20*time.Millisecond, time.Until(deadline))
		<-time.After(wait) // polling interval, not synchronisation: no event to wait on
	}
}

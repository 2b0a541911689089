package daemon

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// MaxPID is the largest PID Linux hands out (PID_MAX_LIMIT on 64-bit).
const MaxPID = 1 << 22

// ErrPidfileMissing reports that a pidfile does not exist. It wraps
// fs.ErrNotExist.
var ErrPidfileMissing = fmt.Errorf("pidfile missing: %w", fs.ErrNotExist)

// InvalidPidfileError reports a pidfile whose content is not a PID.
type InvalidPidfileError struct {
	Path string
	// Content is the start of the file, for the message.
	Content string
	// Reason says what is wrong: "empty", "not a number", "out of range".
	Reason string
}

func (e *InvalidPidfileError) Error() string {
	if e.Reason == "empty" {
		return fmt.Sprintf("pidfile %s is empty", e.Path)
	}
	return fmt.Sprintf("pidfile %s holds %q, not a PID (%s)", e.Path, e.Content, e.Reason)
}

// ExistsError reports that a pidfile already exists and is held by a
// running node, so a second one was not created.
type ExistsError struct {
	Path string
	PID  int
}

func (e *ExistsError) Error() string {
	return fmt.Sprintf("pidfile %s exists and is locked by PID %d", e.Path, e.PID)
}

// PidfileInfo is what a pidfile says.
type PidfileInfo struct {
	Path string
	// PID is the process the file names.
	PID int
	// Written is the file's modification time: when the PID was written.
	Written time.Time
	// Locked reports whether some process holds the file's lock. Every
	// pidfile stem writes is locked for as long as its node runs, so an
	// unlocked pidfile was left behind by a node that is gone.
	Locked bool
}

// ReadPidfile reads and validates a pidfile. It returns an error wrapping
// ErrPidfileMissing when there is no file, an *InvalidPidfileError when the
// content is not one PID (empty, garbage, out of range), and otherwise the
// PID with the file's write time and whether it is locked. It never
// modifies the file.
func ReadPidfile(path string) (PidfileInfo, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return PidfileInfo{}, fmt.Errorf("%s: %w", path, ErrPidfileMissing)
	}
	if err != nil {
		return PidfileInfo{}, fmt.Errorf("opening pidfile: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return PidfileInfo{}, fmt.Errorf("pidfile %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return PidfileInfo{}, &InvalidPidfileError{Path: path, Reason: "not a regular file", Content: st.Mode().String()}
	}
	data, err := io.ReadAll(io.LimitReader(f, 64))
	if err != nil {
		return PidfileInfo{}, fmt.Errorf("reading pidfile %s: %w", path, err)
	}
	pid, err := parsePID(path, data)
	if err != nil {
		return PidfileInfo{}, err
	}
	locked, err := isLocked(f)
	if err != nil {
		return PidfileInfo{}, fmt.Errorf("pidfile %s: %w", path, err)
	}
	return PidfileInfo{Path: path, PID: pid, Written: st.ModTime(), Locked: locked}, nil
}

func parsePID(path string, data []byte) (int, error) {
	s := bytes.TrimSpace(data)
	if len(s) == 0 {
		return 0, &InvalidPidfileError{Path: path, Reason: "empty"}
	}
	content := string(s)
	if len(content) > 32 {
		content = content[:32] + "..."
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, &InvalidPidfileError{Path: path, Content: content, Reason: "not a number"}
		}
	}
	pid, err := strconv.Atoi(string(s))
	if err != nil || pid < 1 || pid > MaxPID {
		return 0, &InvalidPidfileError{Path: path, Content: content, Reason: fmt.Sprintf("out of range 1..%d", MaxPID)}
	}
	return pid, nil
}

// isLocked reports whether another open file description holds a lock on
// f's file, by trying a shared lock without blocking.
func isLocked(f *os.File) (bool, error) {
	err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("probing lock: %w", err)
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false, nil
}

// Pidfile is a pidfile this process created and locks. The lock lives on
// the open file description, so a child that inherits File (as an extra
// file of os/exec, or across exec) keeps the pidfile locked for as long as
// it runs, even after this process exits.
type Pidfile struct {
	path      string
	tmp       string
	f         *os.File
	pid       int
	committed bool
	adopted   bool
}

// PreparePidfile creates a locked, still unnamed pidfile for path: a
// temporary file beside it, opened with O_EXCL and locked with flock. Hand
// File to the process to start, then call Commit with its PID. The
// directory must exist.
func PreparePidfile(path string) (*Pidfile, error) {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("creating pidfile %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("locking pidfile %s: %w", path, err)
	}
	return &Pidfile{path: path, tmp: tmp, f: f}, nil
}

// File is the locked file, to pass to a child that should hold the lock.
// It is nil for an adopted pidfile.
func (p *Pidfile) File() *os.File { return p.f }

// Path is the pidfile's path.
func (p *Pidfile) Path() string { return p.path }

// Commit writes pid into the prepared file and gives it its name, which it
// takes only if no file has it (link(2) is exclusive). If a pidfile naming
// pid already exists (the child wrote its own first), Commit accepts it.
// Otherwise it returns an *ExistsError, or an error for a stale file the
// caller should clean first.
func (p *Pidfile) Commit(pid int) error {
	if p.committed {
		return fmt.Errorf("pidfile %s already committed", p.path)
	}
	if pid < 1 {
		return fmt.Errorf("pidfile %s: invalid PID %d", p.path, pid)
	}
	p.pid = pid
	if _, err := p.f.WriteAt([]byte(strconv.Itoa(pid)+"\n"), 0); err != nil {
		return fmt.Errorf("writing pidfile %s: %w", p.path, err)
	}
	if err := p.f.Sync(); err != nil {
		return fmt.Errorf("writing pidfile %s: %w", p.path, err)
	}
	err := os.Link(p.tmp, p.path)
	os.Remove(p.tmp)
	if err == nil {
		p.committed = true
		return nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("creating pidfile %s: %w", p.path, err)
	}
	info, rerr := ReadPidfile(p.path)
	switch {
	case rerr == nil && info.PID == pid && info.Locked:
		p.adopted = true
		p.committed = true
		return nil
	case rerr == nil && info.Locked:
		return &ExistsError{Path: p.path, PID: info.PID}
	}
	return fmt.Errorf("pidfile %s already exists (stale: remove it first)", p.path)
}

// CreatePidfile creates the pidfile path naming pid, exclusively, and locks
// it until Remove or until the process exits. This is the function a node
// calls to write its own pidfile (`stem worker run --pidfile`): call it
// with os.Getpid() once the worker starts, and Remove at exit.
//
// If path already names pid and is locked, the pidfile was written for this
// process by its launcher (`stem worker multi`, which passes the locked
// file on): CreatePidfile adopts it and Remove will delete it. A stale
// pidfile (unlocked: its node is gone) is removed and replaced. A pidfile
// locked by a live node gives an *ExistsError.
func CreatePidfile(path string, pid int) (*Pidfile, error) {
	if info, err := ReadPidfile(path); err == nil {
		if info.Locked && info.PID == pid {
			return &Pidfile{path: path, pid: pid, committed: true, adopted: true}, nil
		}
		if info.Locked {
			return nil, &ExistsError{Path: path, PID: info.PID}
		}
		if err := RemoveStale(path); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		var ie *InvalidPidfileError
		if !errors.As(err, &ie) || ie.Reason == "not a regular file" {
			return nil, err
		}
		if err := RemoveStale(path); err != nil {
			return nil, err
		}
	}
	p, err := PreparePidfile(path)
	if err != nil {
		return nil, err
	}
	if err := p.Commit(pid); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// Close releases this process's hold on the pidfile without removing it:
// children that inherited File keep it locked. An uncommitted file is
// deleted.
func (p *Pidfile) Close() error {
	if p == nil {
		return nil
	}
	if !p.committed && p.tmp != "" {
		os.Remove(p.tmp)
	}
	if p.f == nil {
		return nil
	}
	err := p.f.Close()
	p.f = nil
	return err
}

// Remove deletes the pidfile, if it still names this Pidfile's PID, and
// releases the lock. Calling it twice is safe.
func (p *Pidfile) Remove() error {
	if p == nil {
		return nil
	}
	var err error
	if p.committed {
		if data, rerr := os.ReadFile(p.path); rerr == nil {
			if pid, perr := parsePID(p.path, data); perr == nil && pid == p.pid {
				if rmErr := os.Remove(p.path); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) {
					err = fmt.Errorf("removing pidfile: %w", rmErr)
				}
			}
		}
		p.committed = false
	}
	if cerr := p.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return err
}

// RemoveStale deletes the pidfile at path if no process holds its lock. It
// returns an *ExistsError, leaving the file, if the file is locked, and nil
// if there is no file.
func RemoveStale(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening pidfile: %w", err)
	}
	defer f.Close()
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		data, _ := io.ReadAll(io.LimitReader(f, 64))
		pid, _ := parsePID(path, data)
		return &ExistsError{Path: path, PID: pid}
	}
	if err != nil {
		return fmt.Errorf("locking pidfile %s: %w", path, err)
	}
	// Holding the lock, make sure the name still refers to this file before
	// removing it: another process may have replaced it meanwhile.
	st1, err1 := f.Stat()
	st2, err2 := os.Stat(path)
	if err1 != nil || err2 != nil || !os.SameFile(st1, st2) {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale pidfile: %w", err)
	}
	return nil
}

// PidfileFDEnv is the variable `stem worker multi` sets in a node's
// environment to the descriptor number (always 3) through which the node
// inherits its locked pidfile.
const PidfileFDEnv = "STEM_WORKER_PIDFILE_FD"

// ProtectInheritedPidfile marks the pidfile descriptor inherited from
// `stem worker multi` (named by PidfileFDEnv) close-on-exec, so the node's
// own children do not inherit the lock and cannot keep the pidfile locked
// after the node dies. A node calls it once at start; it does nothing when
// the variable is unset or malformed.
func ProtectInheritedPidfile(getenv func(string) string) {
	v := getenv(PidfileFDEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return
	}
	unix.CloseOnExec(fd)
}

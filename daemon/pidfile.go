package daemon

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stemhq/stem/internal/fileperm"
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

// pidfileMagic is the second line of a pidfile in stem's current format.
const pidfileMagic = "stem-pidfile 2"

// Record is what a pidfile in the current format records about its
// process, besides the PID, so that the process can be recognised before
// it is signalled.
type Record struct {
	// StartTicks is the process's start time, in clock ticks since boot
	// (/proc/<pid>/stat field 22).
	StartTicks uint64
	// BootID is the kernel's boot id when the pidfile was written.
	BootID string
	// Exe is the program the process was started with.
	Exe ExeID
}

// PidfileInfo is what a pidfile says.
type PidfileInfo struct {
	Path string
	// PID is the process the file names.
	PID int
	// Record is the identity recorded with the PID; nil for a pidfile of
	// the old one-line format.
	Record *Record
	// Dev and Ino identify the pidfile itself (for the lock-holder check).
	Dev, Ino uint64
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
	// O_NOFOLLOW: a symbolic link is refused; O_NONBLOCK: a FIFO planted
	// there does not block the open.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return PidfileInfo{}, fmt.Errorf("%s: %w", path, ErrPidfileMissing)
	}
	if errors.Is(err, syscall.ELOOP) {
		return PidfileInfo{}, &RefusedError{What: "pidfile", Path: path, Reason: "it is a symbolic link; stem opens pidfiles with O_NOFOLLOW (remove the link)"}
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
	data, err := io.ReadAll(io.LimitReader(f, maxPidfileSize))
	if err != nil {
		return PidfileInfo{}, fmt.Errorf("reading pidfile %s: %w", path, err)
	}
	pid, rec, err := parsePidfile(path, data)
	if err != nil {
		return PidfileInfo{}, err
	}
	locked, err := isLocked(f)
	if err != nil {
		return PidfileInfo{}, fmt.Errorf("pidfile %s: %w", path, err)
	}
	info := PidfileInfo{Path: path, PID: pid, Record: rec, Written: st.ModTime(), Locked: locked}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		info.Dev, info.Ino = sys.Dev, sys.Ino
	}
	return info, nil
}

// maxPidfileSize bounds what is read of a pidfile.
const maxPidfileSize = 4096

// parsePidfile parses a pidfile: the PID on the first line (all that the
// old format holds, and all that other tools read), then, in the current
// format, the line "stem-pidfile 2" and one "key value" line each for
// start, boot and exe.
func parsePidfile(path string, data []byte) (int, *Record, error) {
	first, rest, _ := bytes.Cut(data, []byte("\n"))
	if len(bytes.TrimSpace(rest)) == 0 {
		pid, err := parsePID(path, data)
		return pid, nil, err
	}
	pid, err := parsePID(path, first)
	if err != nil {
		if ie := (*InvalidPidfileError)(nil); errors.As(err, &ie) && ie.Reason == "not a number" {
			ie.Content = truncateContent(bytes.TrimSpace(data))
		}
		return 0, nil, err
	}
	bad := func(why string) (int, *Record, error) {
		return 0, nil, &InvalidPidfileError{Path: path, Content: truncateContent(bytes.TrimSpace(data)), Reason: why}
	}
	lines := strings.Split(strings.TrimRight(string(rest), "\n"), "\n")
	if lines[0] != pidfileMagic {
		return bad("not a number")
	}
	rec := &Record{}
	seen := map[string]bool{}
	for _, line := range lines[1:] {
		key, val, _ := strings.Cut(line, " ")
		if seen[key] {
			return bad("duplicate " + key + " line")
		}
		seen[key] = true
		switch key {
		case "start":
			n, err := strconv.ParseUint(val, 10, 64)
			if err != nil {
				return bad("bad start line")
			}
			rec.StartTicks = n
		case "boot":
			if val == "" || strings.ContainsAny(val, " \t") {
				return bad("bad boot line")
			}
			rec.BootID = val
		case "exe":
			id, err := parseExe(val)
			if err != nil {
				return bad("bad exe line")
			}
			rec.Exe = id
		default:
			return bad(fmt.Sprintf("unknown line %q", truncateContent([]byte(key))))
		}
	}
	if !seen["start"] || !seen["boot"] || !seen["exe"] {
		return bad("start, boot or exe line missing")
	}
	return pid, rec, nil
}

// formatPidfile renders a pidfile in the current format.
func formatPidfile(pid int, r Record) []byte {
	return []byte(fmt.Sprintf("%d\n%s\nstart %d\nboot %s\nexe %d:%d %s\n",
		pid, pidfileMagic, r.StartTicks, r.BootID, r.Exe.Dev, r.Exe.Ino, strconv.Quote(r.Exe.Path)))
}

func parseExe(v string) (ExeID, error) {
	ids, name, ok := strings.Cut(v, " ")
	d, i, ok2 := strings.Cut(ids, ":")
	if !ok || !ok2 {
		return ExeID{}, errors.New("malformed")
	}
	dev, err1 := strconv.ParseUint(d, 10, 64)
	ino, err2 := strconv.ParseUint(i, 10, 64)
	path, err3 := strconv.Unquote(name)
	if err1 != nil || err2 != nil || err3 != nil {
		return ExeID{}, errors.New("malformed")
	}
	return ExeID{Dev: dev, Ino: ino, Path: path}, nil
}

func truncateContent(s []byte) string {
	content := strings.ReplaceAll(string(s), "\n", `\n`)
	if len(content) > 32 {
		content = content[:32] + "..."
	}
	return content
}

func parsePID(path string, data []byte) (int, error) {
	s := bytes.TrimSpace(data)
	if len(s) == 0 {
		return 0, &InvalidPidfileError{Path: path, Reason: "empty"}
	}
	content := truncateContent(s)
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
	exe       ExeID
	committed bool
	adopted   bool
}

// PreparePidfile creates a locked, still unnamed pidfile for path: a
// temporary file beside it, opened with O_EXCL and locked with flock, mode
// 0640 (minus the umask; see package fileperm). Hand File to the process to
// start, then call Commit with its PID. The directory must exist and pass
// CheckPath.
func PreparePidfile(path string) (*Pidfile, error) {
	if err := CheckPath(path, os.Geteuid()); err != nil {
		return nil, err
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, fileperm.CreateMode())
	if err != nil {
		return nil, fmt.Errorf("creating pidfile %s: %w", path, err)
	}
	if err := fileperm.Fix(f, true); err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("creating pidfile %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("locking pidfile %s: %w", path, err)
	}
	return &Pidfile{path: path, tmp: tmp, f: f}, nil
}

// SetExe sets the program recorded by Commit. Without it, Commit records
// what /proc/<pid>/exe names when it runs; multi sets it to the program it
// starts (ResolveExe), so that the record does not depend on how far the
// child got.
func (p *Pidfile) SetExe(id ExeID) { p.exe = id }

// File is the locked file, to pass to a child that should hold the lock.
// It is nil for an adopted pidfile.
func (p *Pidfile) File() *os.File { return p.f }

// Path is the pidfile's path.
func (p *Pidfile) Path() string { return p.path }

// record gathers what the pidfile records about pid.
func record(pid int, exe ExeID) (Record, error) {
	var proc Proc
	info, err := proc.Process(pid)
	if err != nil {
		return Record{}, err
	}
	boot, err := proc.BootID()
	if err != nil {
		return Record{}, err
	}
	if exe.IsZero() {
		if exe, err = proc.Exe(pid); err != nil {
			return Record{}, err
		}
	}
	return Record{StartTicks: info.StartTicks, BootID: boot, Exe: exe}, nil
}

// Commit writes pid and its identity (start time, boot id, program) into
// the prepared file and gives it its name, which it takes only if no file
// has it (link(2) is exclusive). If a pidfile naming pid already exists
// (the child wrote its own first), Commit accepts it. Otherwise it returns
// an *ExistsError, or an error for a stale file the caller should clean
// first.
func (p *Pidfile) Commit(pid int) error {
	if p.committed {
		return fmt.Errorf("pidfile %s already committed", p.path)
	}
	if pid < 1 {
		return fmt.Errorf("pidfile %s: invalid PID %d", p.path, pid)
	}
	p.pid = pid
	rec, err := record(pid, p.exe)
	if err != nil {
		return fmt.Errorf("pidfile %s: %w", p.path, err)
	}
	if _, err := p.f.WriteAt(formatPidfile(pid, rec), 0); err != nil {
		return fmt.Errorf("writing pidfile %s: %w", p.path, err)
	}
	if err := p.f.Sync(); err != nil {
		return fmt.Errorf("writing pidfile %s: %w", p.path, err)
	}
	err = os.Link(p.tmp, p.path)
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

// CreatePidfile creates the pidfile path naming pid (a node's own,
// `stem worker run --pidfile`), exclusively, locked until Remove or exit.
// A pidfile that already names pid under pid's lock (written by `stem
// worker multi`) is adopted, its record brought up to date; a stale one is
// replaced. One locked by a live node gives an *ExistsError; an unsafe one
// (see CheckPath) a *RefusedError.
func CreatePidfile(path string, pid int) (*Pidfile, error) {
	return createPidfile(path, pid, ExeID{})
}

func createPidfile(path string, pid int, exe ExeID) (*Pidfile, error) {
	if err := CheckPath(path, os.Geteuid()); err != nil {
		return nil, err
	}
	if info, err := ReadPidfile(path); err == nil {
		if info.Locked && info.PID == pid {
			if err := adopt(info, pid, exe); err != nil {
				return nil, err
			}
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
	p.exe = exe
	if err := p.Commit(pid); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// adopt checks that pid (this process) really holds the lock of the
// pidfile info describes, and rewrites its record when the program it runs
// is not the recorded one.
func adopt(info PidfileInfo, pid int, exe ExeID) error {
	var proc Proc
	held, err := proc.HoldsLock(pid, info.Dev, info.Ino)
	if err != nil {
		return fmt.Errorf("pidfile %s: %w", info.Path, err)
	}
	if !held {
		return &RefusedError{What: "pidfile", Path: info.Path, Reason: fmt.Sprintf("it names this process (PID %d) and is locked, but not by this process", pid)}
	}
	rec, err := record(pid, exe)
	if err != nil {
		return fmt.Errorf("pidfile %s: %w", info.Path, err)
	}
	if info.Record != nil && *info.Record == rec {
		return nil
	}
	f, err := os.OpenFile(info.Path, os.O_WRONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("updating pidfile %s: %w", info.Path, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Dev != info.Dev || st.Ino != info.Ino {
		return fmt.Errorf("updating pidfile %s: it was replaced meanwhile", info.Path)
	}
	data := formatPidfile(pid, rec)
	if _, err := f.WriteAt(data, 0); err != nil {
		return fmt.Errorf("updating pidfile %s: %w", info.Path, err)
	}
	if err := f.Truncate(int64(len(data))); err != nil {
		return fmt.Errorf("updating pidfile %s: %w", info.Path, err)
	}
	return nil
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
		err = removeIfNames(p.path, p.pid)
		p.committed = false
	}
	return cmp.Or(err, p.Close())
}

// removeIfNames removes the pidfile at path if it names pid.
func removeIfNames(path string, pid int) error {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading pidfile: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxPidfileSize))
	f.Close()
	if err != nil {
		return fmt.Errorf("reading pidfile: %w", err)
	}
	if got, _, err := parsePidfile(path, data); err != nil || got != pid {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing pidfile: %w", err)
	}
	return nil
}

// RemoveStale deletes the pidfile at path if no process holds its lock. It
// returns an *ExistsError, leaving the file, if the file is locked, and nil
// if there is no file.
func RemoveStale(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if errors.Is(err, syscall.ELOOP) {
		return &RefusedError{What: "pidfile", Path: path, Reason: "it is a symbolic link; stem opens pidfiles with O_NOFOLLOW (remove the link)"}
	}
	if err != nil {
		return fmt.Errorf("opening pidfile: %w", err)
	}
	defer f.Close()
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		data, _ := io.ReadAll(io.LimitReader(f, maxPidfileSize))
		pid, _, _ := parsePidfile(path, data)
		return &ExistsError{Path: path, PID: pid}
	}
	if err != nil {
		return fmt.Errorf("locking pidfile %s: %w", path, err)
	}
	// Holding the lock, make sure the name still refers to this file before
	// removing it: another process may have replaced it meanwhile.
	st1, err1 := f.Stat()
	st2, err2 := os.Lstat(path)
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
	fd, err := strconv.Atoi(getenv(PidfileFDEnv))
	if err != nil || fd < 3 {
		return
	}
	unix.CloseOnExec(fd)
}

package daemon

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// RefusedError reports a pidfile, pid directory or logfile that stem will
// not use: it is unsafe (a symbolic link, owned by another user, writable by
// group or others), or the pidfile does not prove that its process is the
// node (its lock is held by someone else, or the process runs another
// program than the one started). Nothing is signalled or removed. The CLI
// exits 77 for it.
type RefusedError struct {
	// What is "pidfile", "pid directory" or "logfile".
	What string
	Path string
	// Reason says what is wrong, for the message.
	Reason string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("refusing %s %s: %s", e.What, e.Path, e.Reason)
}

// ExeID identifies an executable file: its device and inode, and the path
// it was found at (for messages; the device and inode are what is
// compared).
type ExeID struct {
	Dev, Ino uint64
	Path     string
}

// IsZero reports whether id is unset.
func (id ExeID) IsZero() bool { return id.Dev == 0 && id.Ino == 0 }

// Same reports whether id and o name the same file.
func (id ExeID) Same(o ExeID) bool { return id.Dev == o.Dev && id.Ino == o.Ino }

func (id ExeID) String() string {
	return fmt.Sprintf("%s (device %d:%d, inode %d)", id.Path, unix.Major(id.Dev), unix.Minor(id.Dev), id.Ino)
}

// statExe stats path, following links, into an ExeID named name.
func statExe(path, name string) (ExeID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ExeID{}, err
	}
	return ExeID{Dev: st.Dev, Ino: st.Ino, Path: name}, nil
}

// ResolveExe returns the identity of the program the kernel runs when path
// is executed, which is what /proc/<pid>/exe of the new process will name:
// the file itself, or for a "#!" script its interpreter (followed through
// nested scripts, as execve(2) does, up to four levels).
func ResolveExe(path string) (ExeID, error) {
	for range 5 {
		abs, err := filepath.Abs(path)
		if err != nil {
			return ExeID{}, err
		}
		f, err := os.Open(abs)
		if err != nil {
			return ExeID{}, fmt.Errorf("identifying %s: %w", path, err)
		}
		head := make([]byte, 256)
		n, _ := f.Read(head)
		f.Close()
		head = head[:n]
		if !bytes.HasPrefix(head, []byte("#!")) {
			real, err := filepath.EvalSymlinks(abs)
			if err != nil {
				real = abs
			}
			id, err := statExe(abs, real)
			if err != nil {
				return ExeID{}, fmt.Errorf("identifying %s: %w", path, err)
			}
			return id, nil
		}
		line, _, _ := bytes.Cut(head[2:], []byte("\n"))
		fields := strings.Fields(string(line))
		if len(fields) == 0 {
			return ExeID{}, fmt.Errorf("identifying %s: a #! line without an interpreter", path)
		}
		path = fields[0]
	}
	return ExeID{}, fmt.Errorf("identifying %s: too many levels of #! interpreters", path)
}

// Exe returns the identity of the program process pid runs now, from
// <root>/<pid>/exe.
func (p Proc) Exe(pid int) (ExeID, error) {
	link := filepath.Join(p.root(), strconv.Itoa(pid), "exe")
	name, err := os.Readlink(link)
	if err != nil {
		return ExeID{}, fmt.Errorf("reading the executable of PID %d: %w", pid, err)
	}
	id, err := statExe(link, strings.TrimSuffix(name, " (deleted)"))
	if err != nil {
		return ExeID{}, fmt.Errorf("reading the executable of PID %d: %w", pid, err)
	}
	return id, nil
}

// BootID returns the kernel's boot id (<root>/sys/kernel/random/boot_id),
// which changes at every boot.
func (p Proc) BootID() (string, error) {
	data, err := os.ReadFile(filepath.Join(p.root(), "sys", "kernel", "random", "boot_id"))
	if err != nil {
		return "", fmt.Errorf("reading the boot id: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}

// HoldsLock reports whether process pid holds the flock(2) lock of the
// file with device dev and inode ino, from /proc/<pid>/fdinfo (see the
// package documentation). A process whose descriptors cannot be read
// (another user's, without privilege) gives an error.
func (p Proc) HoldsLock(pid int, dev, ino uint64) (bool, error) {
	dir := filepath.Join(p.root(), strconv.Itoa(pid))
	ents, err := os.ReadDir(filepath.Join(dir, "fd"))
	if errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("PID %d: %w", pid, ErrNoProcess)
	}
	if err != nil {
		return false, fmt.Errorf("cannot read the descriptors of PID %d to check that it holds the pidfile's lock: %w", pid, unwrapPath(err))
	}
	for _, e := range ents {
		var st unix.Stat_t
		if unix.Stat(filepath.Join(dir, "fd", e.Name()), &st) != nil || st.Dev != dev || st.Ino != ino {
			continue
		}
		f, err := os.Open(filepath.Join(dir, "fdinfo", e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// lock:	1: FLOCK  ADVISORY  WRITE 1234 fe:00:9980820 0 EOF
			if len(fields) >= 7 && fields[0] == "lock:" && fields[2] == "FLOCK" && fields[4] == "WRITE" &&
				strings.HasSuffix(fields[6], ":"+strconv.FormatUint(ino, 10)) {
				f.Close()
				return true, nil
			}
		}
		f.Close()
	}
	return false, nil
}

// CheckPath refuses a pidfile that stem may not trust: its directory and
// the file itself (when it exists) must belong to uid or to root and must
// not be writable by group or others, and the file must not be a symbolic
// link. It returns a *RefusedError naming the path and the problem.
func CheckPath(path string, uid int) error {
	dir := filepath.Dir(path)
	if err := checkOwner("pid directory", dir, uid); err != nil {
		return err
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return nil // missing: nothing to trust yet; other errors surface on open
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return &RefusedError{What: "pidfile", Path: path, Reason: "it is a symbolic link; stem opens pidfiles with O_NOFOLLOW (remove the link)"}
	}
	return checkOwner("pidfile", path, uid)
}

func checkOwner(what, path string, uid int) error {
	stat := os.Lstat
	if what == "pid directory" {
		// Followed: a directory reached through a symbolic link (/var/run
		// -> /run, or a link planted under /tmp) is as safe as the
		// directory it leads to, where the pidfiles are.
		stat = os.Stat
	}
	fi, err := stat(path)
	if err != nil || (what == "pid directory" && !fi.IsDir()) {
		return nil // open reports it
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if int(st.Uid) != uid && st.Uid != 0 {
		return &RefusedError{What: what, Path: path, Reason: fmt.Sprintf("it belongs to uid %d, not to this user (uid %d) or root; another user could have planted it", st.Uid, uid)}
	}
	if m := fi.Mode().Perm(); m&0o022 != 0 {
		return &RefusedError{What: what, Path: path, Reason: fmt.Sprintf("it is writable by group or others (mode %04o); run chmod go-w %s", m, path)}
	}
	return nil
}

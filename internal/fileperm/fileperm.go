// Package fileperm creates the files stem writes (pidfiles, logfiles,
// revoke files and their lock sidecars, SQLite databases) private, whatever
// the umask, and says what happens to a file that already exists.
//
// The rule:
//
//   - A file stem creates gets mode 0640 minus the process umask: created
//     with that mode, then fchmod'ed to it, because the mode given to
//     open(2) is not the last word (a default ACL on the directory replaces
//     the umask, and some creators, such as SQLite, force their own mode).
//     So it is 0640 or tighter, never looser, under any umask, including 0.
//   - A file that already exists keeps its mode: stem never loosens it, and
//     does not tighten an operator's choice either, with one exception: a
//     world-writable file loses its world-write bit.
//   - Directories stem creates are 0750 (minus the umask).
package fileperm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Private is the widest mode of a file stem creates: owner read-write,
// group read.
const Private fs.FileMode = 0o640

// Dir is the mode of the directories stem creates.
const Dir fs.FileMode = 0o750

// Umask returns the process's file mode creation mask, read from
// /proc/self/status without changing it (umask(2) can only be read by
// setting it, which races with other goroutines). When it cannot be read it
// returns 0o027, the mask that leaves Private as it is.
func Umask() fs.FileMode {
	data, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "Umask:"); ok {
				if n, err := strconv.ParseUint(strings.TrimSpace(rest), 8, 32); err == nil {
					return fs.FileMode(n) & fs.ModePerm
				}
			}
		}
	}
	return 0o027
}

// CreateMode is the mode a new file gets: Private minus the umask.
func CreateMode() fs.FileMode { return Private &^ Umask() }

// KeepMode is the mode an existing file of mode m keeps: m without the
// world-write bit.
func KeepMode(m fs.FileMode) fs.FileMode { return m.Perm() &^ 0o002 }

// OpenFile opens path with flag (O_RDONLY, O_WRONLY or O_RDWR, plus
// O_APPEND or O_TRUNC), creating it when missing, never through a symbolic
// link (O_NOFOLLOW: a symlink is refused with ELOOP). A file it creates
// gets CreateMode; an existing world-writable file loses its world-write
// bit; any other existing file is left as it is. created reports whether
// the file was created by this call.
func OpenFile(path string, flag int) (f *os.File, created bool, err error) {
	flag &^= os.O_CREATE | os.O_EXCL
	for range 3 {
		f, err = os.OpenFile(path, flag|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, CreateMode())
		if err == nil {
			if err := Fix(f, true); err != nil {
				f.Close()
				return nil, false, err
			}
			return f, true, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, false, symlinkError(path, err)
		}
		f, err = os.OpenFile(path, flag|syscall.O_NOFOLLOW, 0)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed in between: create it
		}
		if err != nil {
			return nil, false, symlinkError(path, err)
		}
		if err := Fix(f, false); err != nil {
			f.Close()
			return nil, false, err
		}
		return f, false, nil
	}
	return nil, false, fmt.Errorf("%s: created and removed repeatedly by another process", path)
}

// Fix applies the rule to an open file: when created, it trims the mode to
// CreateMode (fchmod); otherwise it removes the world-write bit, if set,
// and leaves every other mode alone.
func Fix(f *os.File, created bool) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	m := st.Mode().Perm()
	want := KeepMode(m)
	if created {
		want = m & CreateMode()
	}
	if want == m {
		return nil
	}
	if err := unix.Fchmod(int(f.Fd()), uint32(want)); err != nil {
		return fmt.Errorf("%s: chmod %04o: %w", f.Name(), want, err)
	}
	return nil
}

// IsSymlinkError reports whether err is what open(2) with O_NOFOLLOW
// returns for a symbolic link (ELOOP).
func IsSymlinkError(err error) bool { return errors.Is(err, syscall.ELOOP) }

func symlinkError(path string, err error) error {
	if IsSymlinkError(err) {
		return &SymlinkError{Path: path}
	}
	return err
}

// SymlinkError reports a path that is a symbolic link where stem refuses
// to follow one (pidfiles and logfiles: a link planted there could make
// stem write or chmod a file elsewhere).
type SymlinkError struct{ Path string }

func (e *SymlinkError) Error() string {
	return fmt.Sprintf("%s is a symbolic link; refusing to follow it (replace it with a regular file)", e.Path)
}

// Package proctree finds and kills the descendants of a process by reading
// /proc. It is how stem makes sure nothing a task started outlives it: the
// exec-task supervisor and the isolation child are child subreapers
// (PR_SET_CHILD_SUBREAPER), so every orphan of their subtree is reparented
// to them and stays visible as their descendant, and KillTree repeats its
// walk until that subtree is empty.
package proctree

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Proc is one process as /proc/<pid>/stat describes it.
type Proc struct {
	PID   int
	PPID  int
	PGID  int
	State byte // R, S, D, Z, T, ...
}

// ParseStat parses the content of /proc/<pid>/stat. The command name, in
// parentheses, may itself hold spaces and parentheses: fields are read
// after its last ')'.
func ParseStat(b []byte) (Proc, error) {
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 1 || end < open {
		return Proc{}, fmt.Errorf("malformed stat line %q", truncate(b))
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil {
		return Proc{}, fmt.Errorf("malformed pid in stat line %q", truncate(b))
	}
	f := bytes.Fields(b[end+1:])
	if len(f) < 4 || len(f[0]) != 1 {
		return Proc{}, fmt.Errorf("malformed stat line %q", truncate(b))
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	pgid, err2 := strconv.Atoi(string(f[2]))
	if err1 != nil || err2 != nil {
		return Proc{}, fmt.Errorf("malformed ppid or pgid in stat line %q", truncate(b))
	}
	return Proc{PID: pid, PPID: ppid, PGID: pgid, State: f[0][0]}, nil
}

func truncate(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}

// List reads every process under procRoot (normally "/proc"). Processes
// that exit while it reads are skipped.
func List(procRoot string) ([]Proc, error) {
	d, err := os.Open(procRoot)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", procRoot, err)
	}
	out := make([]Proc, 0, len(names))
	for _, n := range names {
		if n == "" || n[0] < '0' || n[0] > '9' {
			continue
		}
		b, err := os.ReadFile(procRoot + "/" + n + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		p, err := ParseStat(b)
		if err != nil {
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// Descendants returns the live (not zombie) descendants of root among
// procs, parents before their children. root itself is not included.
func Descendants(procs []Proc, root int) []Proc {
	children := map[int][]Proc{}
	for _, p := range procs {
		if p.PID != root {
			children[p.PPID] = append(children[p.PPID], p)
		}
	}
	var out []Proc
	queue := []int{root}
	seen := map[int]bool{root: true}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			if seen[c.PID] {
				continue
			}
			seen[c.PID] = true
			queue = append(queue, c.PID)
			if c.State != 'Z' && c.State != 'X' {
				out = append(out, c)
			}
		}
	}
	return out
}

// KillTree SIGKILLs every descendant of root (not root itself) and walks
// again until none is left alive, or within passes. Between walks it calls
// reap (may be nil), which a subreaper uses to collect the zombies that
// were reparented to it. It returns how many processes it signalled.
//
// The walk sees a whole subtree only while every orphan of that subtree is
// reparented to root: root must be a child subreaper or the caller must
// accept that orphans of processes killed first leave the tree (they are
// still signalled when they were seen in an earlier walk).
func KillTree(procRoot string, root int, within time.Duration, reap func()) (int, error) {
	deadline := time.Now().Add(within)
	killed := map[int]bool{}
	pause := 100 * time.Microsecond
	for {
		procs, err := List(procRoot)
		if err != nil {
			return len(killed), err
		}
		d := Descendants(procs, root)
		if len(d) == 0 {
			return len(killed), nil
		}
		for _, p := range d {
			if err := syscall.Kill(p.PID, syscall.SIGKILL); err == nil || !errors.Is(err, syscall.ESRCH) {
				killed[p.PID] = true
			}
		}
		if reap != nil {
			reap()
		}
		if time.Now().After(deadline) {
			return len(killed), fmt.Errorf("%d descendants of pid %d still alive after %s (uninterruptible sleep?)", len(d), root, within)
		}
		// A SIGKILLed process takes a moment to become a zombie; this is a
		// bounded poll, not synchronisation by sleeping.
		time.Sleep(pause)
		pause = min(2*pause, 5*time.Millisecond)
	}
}

// HasChildren reports whether pid has any child process, reading
// procRoot/<pid>/task/*/children, which is much cheaper than List. ok is
// false when the kernel does not provide those files (CONFIG_PROC_CHILDREN);
// call List then.
func HasChildren(procRoot string, pid int) (has, ok bool) {
	dir := procRoot + "/" + strconv.Itoa(pid) + "/task"
	d, err := os.Open(dir)
	if err != nil {
		return false, false
	}
	defer d.Close()
	tids, err := d.Readdirnames(-1)
	if err != nil {
		return false, false
	}
	for _, tid := range tids {
		b, err := os.ReadFile(dir + "/" + tid + "/children")
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // the thread exited meanwhile, or no such file at all
			}
			return false, false
		}
		if len(bytes.TrimSpace(b)) > 0 {
			return true, true
		}
		ok = true
	}
	return false, ok
}

// CloseOnExecFrom marks every descriptor of this process from first up
// close-on-exec, so that a program it starts inherits only the
// descriptors handed to it explicitly, not those this process inherited
// from whatever started it (close_range(2), Linux 5.11; descriptor by
// descriptor from /proc/self/fd on older kernels).
func CloseOnExecFrom(first int) {
	if unix.CloseRange(uint(first), ^uint(0), unix.CLOSE_RANGE_CLOEXEC) == nil {
		return
	}
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	for _, n := range names {
		if fd, err := strconv.Atoi(n); err == nil && fd >= first {
			unix.CloseOnExec(fd)
		}
	}
}

// WaitExited blocks until the child pid has exited, without reaping it
// (waitid with WNOWAIT): until it is reaped, its pid, and so the id of a
// process group it leads, cannot be given to another process, so the
// caller can still signal the group safely. An error means pid is not a
// waitable child of this process.
func WaitExited(pid int) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return err
		}
	}
}

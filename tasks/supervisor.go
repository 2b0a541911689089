package tasks

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/stemhq/stem/internal/proctree"
)

// SupervisorEnv is the variable that puts a stem binary in exec-supervisor
// mode: the worker re-executes its own binary with SupervisorEnv=1 to
// supervise one exec task's command (see the package documentation). A
// program that runs exec tasks and does not use cli.Main must call
// ServeSupervisorIfRequested first thing in main.
const SupervisorEnv = "STEM_EXEC_SUPERVISOR"

// supervisorArg0 is the supervisor's argv[0], so ps shows what it is.
const supervisorArg0 = "stem-exec-supervisor"

// lifelineFD is the supervisor's end of the socket whose other end only the
// worker holds: EOF on it means the worker is gone.
const lifelineFD = 3

// ServeSupervisorIfRequested supervises one exec task's command and exits
// the process, with the command's exit status, when this process was
// started as an exec supervisor; otherwise it returns at once. cli.Main
// calls it for you.
func ServeSupervisorIfRequested() {
	if os.Getenv(SupervisorEnv) != "1" {
		return
	}
	os.Exit(supervise(os.Args[1:]))
}

// supervise runs args (dir, path, argv...) and never returns when the command
// was killed by a signal: it dies by the same signal.
func supervise(args []string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "stem exec supervisor: "+format+"\n", a...)
		return 70
	}
	if len(args) < 3 {
		return fail("want DIR PATH ARGV0 [ARG...], got %d arguments", len(args))
	}
	dir, args := args[0], args[1:]
	if _, err := unix.FcntlInt(lifelineFD, unix.F_GETFD, 0); err != nil {
		return fail("fd %d (the lifeline from the worker) is not open", lifelineFD)
	}
	// The command must not inherit the lifeline, or the supervisor would
	// never see EOF while the command lives; nor any other descriptor the
	// worker inherited without close-on-exec from whatever started it: the
	// command gets stdin, stdout and stderr only.
	proctree.CloseOnExecFrom(lifelineFD)
	lifeline := os.NewFile(lifelineFD, "stem-lifeline")
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fail("become a child subreaper: %v", err)
	}
	// Signals sent to the process group reach the command directly. They
	// are caught (never ignored: an ignored signal would stay ignored in
	// the command) so they do not kill the supervisor.
	caught := make(chan os.Signal, 8)
	signal.Notify(caught, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	chld := make(chan os.Signal, 1)
	signal.Notify(chld, syscall.SIGCHLD)

	env := make([]string, 0, len(os.Environ()))
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, SupervisorEnv+"=") {
			env = append(env, kv)
		}
	}
	// The supervisor changes directory itself, so that a missing directory
	// is reported as such (os/exec would blame the supervisor's binary).
	if dir != "" {
		if err := os.Chdir(dir); err != nil {
			_, _ = fmt.Fprintf(lifeline, "chdir %s: %v", dir, errors.Unwrap(err))
			return 127
		}
	}
	pid, err := syscall.ForkExec(args[0], args[1:], &syscall.ProcAttr{Env: env, Files: []uintptr{0, 1, 2}})
	if err != nil {
		// The worker reads this after the supervisor exits.
		_, _ = fmt.Fprintf(lifeline, "%v", err)
		return 127
	}
	dead := make(chan struct{})
	go func() {
		var b [64]byte
		for {
			if _, err := lifeline.Read(b[:]); err != nil {
				close(dead)
				return
			}
		}
	}()

	var status syscall.WaitStatus
	exited := false
	// reap collects every exited child and reports whether any child is
	// left. With none left there is no descendant either: every
	// descendant's chain of parents starts with a child of ours.
	reap := func() (childrenLeft bool) {
		for {
			var ws syscall.WaitStatus
			p, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			if p <= 0 || err != nil {
				return !errors.Is(err, syscall.ECHILD)
			}
			if p == pid {
				status, exited = ws, true
			}
		}
	}
	cleanUp := func(childrenLeft bool) {
		if childrenLeft { // the common case, a command that leaves nothing, skips the walk of /proc
			_, _ = proctree.KillTree("/proc", os.Getpid(), 5*time.Second, func() { reap() })
		}
		for { // collect every zombie until nothing is left
			_, err := syscall.Wait4(-1, nil, 0, nil)
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			if err != nil {
				return
			}
		}
	}
	for {
		select {
		case <-chld:
			left := reap()
			if exited {
				cleanUp(left)
				return exitLike(status)
			}
		case <-dead:
			if !exited {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			cleanUp(true)
			return 128 + int(syscall.SIGKILL)
		case <-caught:
		}
	}
}

// exitLike returns the exit code of ws, or dies by ws's signal so that the
// worker sees the same "signal: killed" it would have seen from the
// command itself.
func exitLike(ws syscall.WaitStatus) int {
	if ws.Exited() {
		return ws.ExitStatus()
	}
	if !ws.Signaled() {
		return 70
	}
	sig := ws.Signal()
	// The command may have dumped core already; the supervisor must not.
	// (prctl, not setrlimit: the packaged unit's system-call filter
	// refuses @resources.)
	_ = unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
	// The kernel's default action, not the Go runtime's handler (which
	// would print a goroutine dump for SIGQUIT or SIGABRT and exit 2). An
	// all-zero struct sigaction is SIG_DFL with no flags and an empty mask
	// on every Linux architecture.
	var act [4]uint64
	var e syscall.Errno
	if sig != syscall.SIGKILL { // SIGKILL has no action to set
		_, _, e = unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0)
	}
	if e == 0 {
		set := unix.Sigset_t{}
		set.Val[0] = 1 << (uint(sig) - 1)
		_ = unix.PthreadSigmask(unix.SIG_UNBLOCK, &set, nil)
		_ = unix.Kill(os.Getpid(), sig)
		// Delivery is asynchronous to other threads: give it a moment.
		for i := 0; i < 100; i++ {
			time.Sleep(time.Millisecond)
		}
	}
	return 128 + int(sig)
}

package tasks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stemhq/stem/daemon"
	"github.com/stemhq/stem/internal/proctree"
	"github.com/stemhq/stem/worker"
)

// ExecOptions bound what an exec task may keep and how it is stopped.
type ExecOptions struct {
	// MaxStdout is the most stdout kept as the result (default 1 MiB); the
	// rest is read and dropped, and the result says it was truncated.
	MaxStdout int
	// MaxStderr is the tail of stderr kept for the error (default 4 KiB).
	MaxStderr int
	// KillGrace is how long a process group has between SIGTERM (on
	// terminate, shutdown or time limit) and SIGKILL (default 5s). A task
	// whose lease is lost (worker.ErrLeaseLost) gets no grace.
	KillGrace time.Duration
	// Environ is the base environment (default os.Environ()). NOTIFY_SOCKET
	// and WATCHDOG_* are always removed: a task must never talk to systemd
	// on the worker's behalf.
	Environ []string
	// Supervisor is the program that serves as the task's supervisor when
	// started with SupervisorEnv=1 (default /proc/self/exe: this very
	// binary, even if its file was replaced since it started). It must
	// call ServeSupervisorIfRequested first thing (cli.Main does).
	Supervisor string
}

// MaxEnvArgs is the largest argument document passed in STEM_TASK_ARGS.
// Larger arguments arrive on stdin only, and STEM_TASK_ARGS_SIZE gives
// their size instead: Linux refuses a single environment string over
// 128 KiB (E2BIG) and the whole environment shares the argument space.
const MaxEnvArgs = 64 << 10

func (o ExecOptions) withDefaults() ExecOptions {
	if o.MaxStdout <= 0 {
		o.MaxStdout = 1 << 20
	}
	if o.MaxStderr <= 0 {
		o.MaxStderr = 4 << 10
	}
	if o.KillGrace <= 0 {
		o.KillGrace = 5 * time.Second
	}
	if o.Environ == nil {
		o.Environ = os.Environ()
	}
	if o.Supervisor == "" {
		o.Supervisor = "/proc/self/exe"
	}
	return o
}

// Exec returns the handler that runs d's command under a supervisor (see
// the package documentation). The command gets the task's arguments as
// JSON on stdin and, up to MaxEnvArgs bytes, in STEM_TASK_ARGS (larger:
// STEM_TASK_ARGS_SIZE instead), plus STEM_TASK_ID, STEM_TASK_NAME,
// STEM_TASK_ATTEMPT and d.Env. Exit 0 succeeds with stdout as the result
// (as JSON when stdout is JSON, else as a string); any other exit fails
// with the tail of stderr. When the task's context ends (terminate,
// shutdown, time limit) the whole process group gets SIGTERM and, after
// KillGrace, every process of the task SIGKILL; when it ends because the
// lease was lost (worker.ErrLeaseLost), SIGKILL at once.
func Exec(d Def, o ExecOptions) worker.HandlerFunc {
	o = o.withDefaults()
	return func(tc worker.TaskContext, args json.RawMessage) (any, error) {
		if len(args) == 0 {
			args = json.RawMessage("{}")
		}
		// Resolved here, with the worker's PATH, as exec.Command always did.
		target := exec.Command(d.Command[0], d.Command[1:]...)
		if target.Err != nil {
			return nil, fmt.Errorf("start %s: %w", d.Command[0], target.Err)
		}
		env := daemon.ChildEnv(o.Environ)
		for k, v := range d.Env {
			env = append(env, k+"="+v)
		}
		env = append(env,
			"STEM_TASK_ID="+tc.ID(),
			"STEM_TASK_NAME="+tc.Name(),
			fmt.Sprintf("STEM_TASK_ATTEMPT=%d", tc.Attempt()),
		)
		if len(args) > MaxEnvArgs {
			env = append(env, fmt.Sprintf("STEM_TASK_ARGS_SIZE=%d", len(args)))
		} else {
			env = append(env, "STEM_TASK_ARGS="+string(args))
		}
		stdout := &headBuffer{max: o.MaxStdout}
		stderr := &tailBuffer{max: o.MaxStderr}
		p, err := startSupervised(o.Supervisor, target.Path, d.Command, d.Dir, env, bytes.NewReader(args), stdout, stderr)
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", d.Command[0], err)
		}
		ctx := tc.Context()
		var leaseLost <-chan struct{} // nil: never
		if lw, ok := tc.(worker.LeaseWatcher); ok {
			leaseLost = lw.LeaseLost()
		}
		select {
		case <-p.done:
		case <-leaseLost:
			p.kill()
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), worker.ErrLeaseLost) {
				// Another worker may claim the task soon: no grace.
				p.kill()
				break
			}
			p.signalGroup(syscall.SIGTERM)
			t := time.NewTimer(o.KillGrace)
			select {
			case <-p.done:
			case <-leaseLost:
				// Lost during the grace: no more of it.
				p.kill()
			case <-t.C:
				p.kill()
			}
			t.Stop()
		}
		<-p.done // nothing of the group outlives the task: see startSupervised
		err = p.err
		if cerr := ctx.Err(); cerr != nil {
			if herr := tc.Heartbeat(); herr != nil {
				return nil, herr
			}
			return nil, cerr
		}
		if p.startErr != "" {
			return nil, fmt.Errorf("start %s: %s", d.Command[0], p.startErr)
		}
		if err != nil && !errors.Is(err, exec.ErrWaitDelay) {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				tail := strings.TrimSpace(stderr.String())
				if tail == "" {
					return nil, fmt.Errorf("%s: %v", d.Command[0], ee.ProcessState)
				}
				return nil, fmt.Errorf("%s: %v: %s", d.Command[0], ee.ProcessState, tail)
			}
			return nil, fmt.Errorf("%s: %w", d.Command[0], err)
		}
		out := stdout.Bytes()
		if stdout.truncated {
			return map[string]any{"stdout": string(out), "truncated": true, "bytes": stdout.total}, nil
		}
		trimmed := bytes.TrimSpace(out)
		if len(trimmed) > 0 && json.Valid(trimmed) {
			return json.RawMessage(trimmed), nil
		}
		return string(out), nil
	}
}

// supervised is a running supervisor, seen from the worker.
type supervised struct {
	cmd      *exec.Cmd
	pgid     int
	lifeline *os.File // the worker's end; closing it kills the task
	done     chan struct{}
	err      error  // cmd.Wait's, once done is closed
	startErr string // why the supervisor could not start the command

	// mu orders group signals before the reap: once reaped is set, the
	// group id may be reused by an unrelated process and is never
	// signalled again.
	mu     sync.Mutex
	reaped bool
}

// startSupervised starts the supervisor of one command: in a process group
// of its own (the command joins it), with the lifeline socket as its fd 3.
func startSupervised(supervisor, path string, argv []string, dir string, env []string, stdin io.Reader, stdout, stderr io.Writer) (*supervised, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("lifeline socket: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "stem-lifeline")
	theirs := os.NewFile(uintptr(fds[1]), "stem-lifeline-supervisor")
	cmd := &exec.Cmd{
		Path: supervisor, Args: append([]string{supervisorArg0, dir, path}, argv...),
		Env:   append(env, SupervisorEnv+"=1"),
		Stdin: stdin, Stdout: stdout, Stderr: stderr,
		ExtraFiles:  []*os.File{theirs},
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
		// Only a process that escaped the supervisor's tree can hold the
		// output open once the supervisor exited; do not wait for it.
		WaitDelay: time.Second,
	}
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		ours.Close()
		return nil, err
	}
	p := &supervised{cmd: cmd, pgid: cmd.Process.Pid, lifeline: ours, done: make(chan struct{})}
	go func() {
		// Exited but not reaped, the supervisor still holds its pid and so
		// the group id: whatever of the group is left is killed now, and
		// the group is never signalled after the reap.
		if proctree.WaitExited(p.pgid) == nil {
			p.mu.Lock()
			_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
			p.reaped = true
			p.mu.Unlock()
		} else {
			p.mu.Lock()
			p.reaped = true // cannot tell: never signal it again
			p.mu.Unlock()
		}
		p.err = cmd.Wait()
		// The supervisor is gone, so the socket holds all it wrote.
		_ = ours.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		b, _ := io.ReadAll(io.LimitReader(ours, 4096))
		p.startErr = string(b)
		ours.Close()
		close(p.done)
	}()
	return p, nil
}

// signalGroup signals the supervisor's process group (the supervisor
// ignores what it catches; the command and its group get it).
func (p *supervised) signalGroup(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.reaped {
		_ = syscall.Kill(-p.pgid, sig)
	}
}

// kill has the supervisor SIGKILL every process of the task (closing the
// lifeline, exactly as the worker's death would) and, should the
// supervisor not exit within a second, SIGKILLs the process group.
func (p *supervised) kill() {
	_ = p.lifeline.Close()
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.signalGroup(syscall.SIGKILL)
	}
}

// headBuffer keeps the first max bytes written and counts the rest.
type headBuffer struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	max       int
	total     int64
	truncated bool
}

func (b *headBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.total += int64(len(p))
	room := b.max - b.buf.Len()
	if room > 0 {
		n := min(room, len(p))
		b.buf.Write(p[:n])
	}
	if len(p) > room {
		b.truncated = true
	}
	return len(p), nil
}

func (b *headBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Bytes()
}

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(p) >= b.max {
		b.buf = append(b.buf[:0], p[len(p)-b.max:]...)
		return len(p), nil
	}
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

package tasks

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/stemhq/stem/daemon"
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
	// terminate, shutdown or time limit) and SIGKILL (default 5s).
	KillGrace time.Duration
	// Environ is the base environment (default os.Environ()). NOTIFY_SOCKET
	// and WATCHDOG_* are always removed: a task must never talk to systemd
	// on the worker's behalf.
	Environ []string
}

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
	return o
}

// Exec returns the handler that runs d's command. The command gets the
// task's arguments as JSON on stdin and in STEM_TASK_ARGS, plus STEM_TASK_ID,
// STEM_TASK_NAME, STEM_TASK_ATTEMPT and d.Env. Exit 0 succeeds with stdout as
// the result (as JSON when stdout is JSON, else as a string); any other exit
// fails with the tail of stderr. When the task's context ends (terminate,
// shutdown, time limit) the whole process group gets SIGTERM and, after
// KillGrace, SIGKILL.
func Exec(d Def, o ExecOptions) worker.HandlerFunc {
	o = o.withDefaults()
	return func(tc worker.TaskContext, args json.RawMessage) (any, error) {
		if len(args) == 0 {
			args = json.RawMessage("{}")
		}
		cmd := exec.Command(d.Command[0], d.Command[1:]...)
		cmd.Dir = d.Dir
		env := daemon.ChildEnv(o.Environ)
		for k, v := range d.Env {
			env = append(env, k+"="+v)
		}
		env = append(env,
			"STEM_TASK_ID="+tc.ID(),
			"STEM_TASK_NAME="+tc.Name(),
			"STEM_TASK_ARGS="+string(args),
			fmt.Sprintf("STEM_TASK_ATTEMPT=%d", tc.Attempt()),
		)
		cmd.Env = env
		cmd.Stdin = bytes.NewReader(args)
		stdout := &headBuffer{max: o.MaxStdout}
		stderr := &tailBuffer{max: o.MaxStderr}
		cmd.Stdout, cmd.Stderr = stdout, stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start %s: %w", d.Command[0], err)
		}
		pgid := cmd.Process.Pid
		waitDone := make(chan error, 1)
		go func() { waitDone <- cmd.Wait() }()
		var err error
		select {
		case err = <-waitDone:
		case <-tc.Context().Done():
			_ = syscall.Kill(-pgid, syscall.SIGTERM)
			t := time.NewTimer(o.KillGrace)
			select {
			case err = <-waitDone:
			case <-t.C:
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
				err = <-waitDone
			}
			t.Stop()
		}
		// Whatever the outcome, nothing of the group outlives the task.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		if cerr := tc.Context().Err(); cerr != nil {
			if herr := tc.Heartbeat(); herr != nil {
				return nil, herr
			}
			return nil, cerr
		}
		if err != nil {
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

package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stemhq/stem/internal/proctree"
)

// ChildEnv is the variable that puts a stem binary in child mode: the
// worker re-executes its own binary with ChildEnv=1 to run isolated
// handlers, talking to it over fd 3 (worker → child) and fd 4 (child →
// worker). A program that registers isolated handlers and does not use
// cli.Main must call ServeChildIfRequested first thing in main.
const ChildEnv = "STEM_WORKER_CHILD"

// ServeChildIfRequested runs the child loop with handlers and exits the
// process when this process was started as an isolation child; otherwise
// it returns at once. cli.Main calls it for you.
//
// The child is a child subreaper (PR_SET_CHILD_SUBREAPER), so every
// process its handlers start stays its descendant even when orphaned.
// When its input pipe ends (the worker closed it, or died however it
// died: only the worker holds the write end) it SIGKILLs all of them and
// exits at once, abandoning a running handler.
func ServeChildIfRequested(handlers *Registry) {
	if os.Getenv(ChildEnv) != "1" {
		return
	}
	for _, fd := range []int{3, 4} {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			fmt.Fprintln(os.Stderr, "stem child: fd 3 and 4 are not open")
			os.Exit(70)
		}
	}
	// A handler's subprocesses must not inherit the pipes (one holding
	// fd 4 would hide the child's death from the worker), nor any other
	// descriptor the worker inherited without close-on-exec.
	proctree.CloseOnExecFrom(3)
	in := os.NewFile(3, "stem-child-in")
	out := os.NewFile(4, "stem-child-out")
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "stem child: become a child subreaper: %v\n", err)
		os.Exit(70)
	}
	code := ServeChild(handlers, in, out)
	if _, err := proctree.KillTree("/proc", os.Getpid(), 5*time.Second, nil); err != nil {
		fmt.Fprintf(os.Stderr, "stem child: %v\n", err)
	}
	os.Exit(code)
}

// ServeChild runs tasks sent on in, one at a time, and reports on out,
// until in is closed (exit 0) or broken (exit 70).
func ServeChild(handlers *Registry, in io.Reader, out io.Writer) int {
	w := &frameWriter{w: out}
	r := newFrameReader(in)
	if err := w.write(frameMsg{T: msgReady, PID: os.Getpid()}); err != nil {
		return 70
	}
	msgs := make(chan frameMsg, 16)
	readErr := make(chan error, 1)
	go r.pump(msgs, readErr)
	var cur *childTask
	results := make(chan frameMsg, 1)
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				if cur != nil {
					cur.revoke("", "")
				}
				if err := <-readErr; errors.Is(err, io.EOF) {
					return 0
				}
				return 70
			}
			switch m.T {
			case msgRun:
				if cur != nil {
					_ = w.write(frameMsg{T: msgResult, ID: m.ID, Error: "child busy: protocol error"})
					continue
				}
				cur = newChildTask(m, w)
				go func(t *childTask) { results <- t.run(handlers) }(cur)
			case msgRevoke:
				if cur != nil && cur.msg.ID == m.ID {
					cur.revoke(m.Reason, m.By)
				}
			}
		case res := <-results:
			cur = nil
			if err := w.write(res); err != nil {
				return 70
			}
		}
	}
}

// childTask is a task running in a child; it is the handler's TaskContext.
type childTask struct {
	msg     frameMsg
	w       *frameWriter
	ctx     context.Context
	cancel  context.CancelCauseFunc
	revoked atomic.Pointer[revokedError] // set before the context is cancelled
}

func newChildTask(m frameMsg, w *frameWriter) *childTask {
	ctx, cancel := context.WithCancelCause(context.Background())
	return &childTask{msg: m, w: w, ctx: ctx, cancel: cancel}
}

func (t *childTask) revoke(reason, by string) {
	t.revoked.Store(&revokedError{reason: reason, by: by})
	t.cancel(&revokedError{reason: reason, by: by})
}

func (t *childTask) run(handlers *Registry) frameMsg {
	res := frameMsg{T: msgResult, ID: t.msg.ID}
	h, ok := handlers.Lookup(t.msg.Name)
	if !ok {
		res.Error = fmt.Sprintf("no handler registered for task %q in the child process", t.msg.Name)
		res.NoRetry = true
		return res
	}
	ctx, cancel := withTimeLimit(t.ctx, t.msg.TimeLimit)
	defer cancel()
	tc := &childContext{t: t, ctx: ctx}
	value, err := safeCall(h.Run, tc, t.msg.Args)
	if t.revoked.Load() != nil {
		res.Revoked = true
		res.Error = ErrTaskRevoked.Error()
		return res
	}
	if err == nil {
		raw, merr := marshalResult(value)
		if merr == nil {
			res.OK, res.Value = true, raw
			return res
		}
		err = merr
	}
	if ctx.Err() != nil {
		err = withCause(ctx, err)
	}
	res.Error = err.Error()
	res.NoRetry = errors.Is(err, ErrNoRetry)
	return res
}

// childContext is the TaskContext of an isolated handler: checkpoints are
// messages to the worker, and fail once the worker forwarded a terminate.
type childContext struct {
	t   *childTask
	ctx context.Context
}

func (c *childContext) Context() context.Context { return c.ctx }
func (c *childContext) ID() string               { return c.t.msg.ID }
func (c *childContext) Name() string             { return c.t.msg.Name }
func (c *childContext) Queue() string            { return c.t.msg.Queue }
func (c *childContext) Attempt() int             { return c.t.msg.Attempt }

func (c *childContext) check() error {
	if re := c.t.revoked.Load(); re != nil {
		e := *re
		return &e
	}
	if c.ctx.Err() != nil {
		return context.Cause(c.ctx)
	}
	return nil
}

// Heartbeat implements TaskContext.
func (c *childContext) Heartbeat() error {
	if err := c.check(); err != nil {
		return err
	}
	return c.t.w.write(frameMsg{T: msgBeat, ID: c.t.msg.ID})
}

// ExtendLease implements TaskContext. The worker extends the lease; a
// failure there is logged by the worker, not reported back.
func (c *childContext) ExtendLease(d time.Duration) error {
	if err := c.check(); err != nil {
		return err
	}
	if d <= 0 {
		return fmt.Errorf("extend lease: duration %s must be positive", d)
	}
	return c.t.w.write(frameMsg{T: msgLease, ID: c.t.msg.ID, Lease: d})
}

// Progress implements TaskContext.
func (c *childContext) Progress(p float64, data any) error {
	if err := c.check(); err != nil {
		return err
	}
	raw, err := progressData(p, data)
	if err != nil {
		return err
	}
	return c.t.w.write(frameMsg{T: msgProgress, ID: c.t.msg.ID, Progress: p, Data: raw})
}

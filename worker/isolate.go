package worker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/stemhq/stem/daemon"
	"github.com/stemhq/stem/internal/proctree"
	"github.com/stemhq/stem/logging"
	"github.com/stemhq/stem/result"
)

// IsolationConfig configures the child-process pool of isolated handlers.
type IsolationConfig struct {
	// Command re-executes this program in child mode; default
	// /proc/self/exe with no arguments: this very binary, even if its file
	// was replaced or removed since it started (a package upgrade), so a
	// child always speaks its worker's protocol. The child must call
	// ServeChildIfRequested (cli.Main does).
	Command []string
	// MaxTasksPerChild recycles a child after that many tasks (0: never).
	MaxTasksPerChild int
	// MaxMemoryPerChildBytes recycles a child whose RSS exceeds it after a
	// task (0: never). While a task runs, a child above twice this limit
	// is killed and its task fails.
	MaxMemoryPerChildBytes int64
	// TerminateGrace is how long a child has to stop after a terminate
	// before it is killed with its process group (default 5s).
	TerminateGrace time.Duration
	// StartTimeout bounds a child's start-up handshake (default 10s).
	StartTimeout time.Duration
	// Stderr receives the children's stdout and stderr (default os.Stderr).
	Stderr io.Writer
	// ProcRoot is where /proc is (tests).
	ProcRoot string
}

// WithDefaults fills unset fields.
func (c IsolationConfig) WithDefaults() IsolationConfig {
	if len(c.Command) == 0 {
		c.Command = []string{"/proc/self/exe"}
	}
	orDefault(&c.TerminateGrace, 5*time.Second)
	orDefault(&c.StartTimeout, 10*time.Second)
	ifZero(&c.Stderr, io.Writer(os.Stderr))
	orDefault(&c.ProcRoot, "/proc")
	return c
}

// Validate reports a configuration the pool cannot use.
func (c IsolationConfig) Validate() error {
	switch {
	case c.MaxTasksPerChild < 0:
		return fmt.Errorf("max tasks per child %d must not be negative", c.MaxTasksPerChild)
	case c.MaxMemoryPerChildBytes < 0:
		return fmt.Errorf("max memory per child %d must not be negative", c.MaxMemoryPerChildBytes)
	}
	return nil
}

// Recycle reasons, as counted in stats and metrics.
const (
	RecycleMaxTasks  = "max-tasks"
	RecycleMaxMemory = "max-memory"
	RecycleCrashed   = "crashed"
	RecycleKilled    = "killed-after-terminate"
	RecycleProtocol  = "protocol-error"
	RecycleOOM       = "memory-limit-during-task"
	RecycleLeaseLost = "killed-lease-lost"
)

// child is one child process.
type child struct {
	cmd   *exec.Cmd
	pid   int
	w     *frameWriter
	in    io.Closer // our write end of the child's fd 3
	r     *frameReader
	msgs  chan frameMsg
	errc  chan error // the read loop's final error
	tasks int
	dead  atomic.Bool

	waitOnce sync.Once
	waitErr  error
	// reapMu orders killGroup before the reap: once reaped is set, the
	// child's pid (its group id) may belong to another process.
	reapMu sync.Mutex
	reaped bool
}

// wait reaps the child once, however many paths (kill, exit, pool close)
// ask for it.
func (c *child) wait() error {
	c.waitOnce.Do(func() {
		// Exited, not yet reaped: the pid is still the child's. Mark it
		// reaped (under reapMu, so no killGroup is half-way) before
		// cmd.Wait lets the kernel reuse it.
		_ = proctree.WaitExited(c.pid)
		c.reapMu.Lock()
		c.reaped = true
		c.reapMu.Unlock()
		c.waitErr = c.cmd.Wait()
	})
	return c.waitErr
}

// killGroup SIGKILLs the processes the child's handlers started (found in
// procRoot while the child, a subreaper, still holds them as descendants),
// then the child's process group, unless the child was already reaped
// (its pid may belong to someone else by then).
func (c *child) killGroup(procRoot string) {
	c.reapMu.Lock()
	defer c.reapMu.Unlock()
	if !c.reaped {
		_ = syscall.Kill(c.pid, syscall.SIGSTOP) // no new descendants meanwhile
		if has, ok := proctree.HasChildren(procRoot, c.pid); has || !ok {
			_, _ = proctree.KillTree(procRoot, c.pid, time.Second, nil)
		}
		_ = syscall.Kill(-c.pid, syscall.SIGKILL)
	}
}

// drain discards what the child still sends, so its reader goroutine never
// blocks on a full channel after the task was given up.
func (c *child) drain() {
	go func() {
		for range c.msgs {
		}
	}()
}

// pool runs isolated tasks in children, at most one task per child.
type pool struct {
	cfg IsolationConfig
	w   *Worker
	log logrus.FieldLogger

	mu       sync.Mutex
	idle     []*child
	all      map[*child]bool
	recycles map[string]int64
	closed   bool
}

func newPool(cfg IsolationConfig, w *Worker) *pool {
	return &pool{cfg: cfg, w: w, log: w.log, all: map[*child]bool{}, recycles: map[string]int64{}}
}

// Recycles returns how many children were replaced, by reason.
func (p *pool) Recycles() map[string]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.recycles)
}

// recycle kills c and counts why.
func (p *pool) recycle(c *child, reason string) {
	p.countRecycle(reason)
	p.kill(c)
}

func (p *pool) countRecycle(reason string) {
	p.mu.Lock()
	p.recycles[reason]++
	p.mu.Unlock()
	p.w.metrics.recycle(reason)
}

// start launches a child and waits for its handshake.
func (p *pool) start() (*child, error) {
	if len(p.cfg.Command) == 0 {
		return nil, errors.New("isolation: cannot find this program's executable to re-execute")
	}
	toChildR, toChildW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	fromChildR, fromChildW, err := os.Pipe()
	if err != nil {
		toChildR.Close()
		toChildW.Close()
		return nil, err
	}
	cmd := exec.Command(p.cfg.Command[0], p.cfg.Command[1:]...)
	if p.cfg.Command[0] == "/proc/self/exe" {
		cmd.Args[0] = "stem-isolation-child" // what ps shows
	}
	cmd.Env = append(daemon.ChildEnv(os.Environ()), ChildEnv+"=1")
	cmd.ExtraFiles = []*os.File{toChildR, fromChildW} // fd 3, fd 4
	cmd.Stdout, cmd.Stderr = p.cfg.Stderr, p.cfg.Stderr
	// No Pdeathsig: the child learns of the worker's death from EOF on
	// fd 3 (only the worker holds its write end, close-on-exec), kills what
	// its handlers started and exits. A SIGKILL on the worker's death
	// would kill it before it could, and Go delivers Pdeathsig when the
	// forking thread exits, not the process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	toChildR.Close() // the child's ends
	fromChildW.Close()
	if err != nil {
		toChildW.Close()
		fromChildR.Close()
		return nil, fmt.Errorf("isolation: start child %s: %w", p.cfg.Command[0], err)
	}
	c := &child{cmd: cmd, pid: cmd.Process.Pid, w: &frameWriter{w: toChildW}, in: toChildW,
		r: newFrameReader(fromChildR), msgs: make(chan frameMsg, 64), errc: make(chan error, 1)}
	go func() {
		defer fromChildR.Close()
		c.r.pump(c.msgs, c.errc)
	}()
	select {
	case m, ok := <-c.msgs:
		if ok && m.T == msgReady {
			p.mu.Lock()
			closed := p.closed
			if !closed {
				p.all[c] = true
			}
			p.mu.Unlock()
			if closed {
				p.kill(c)
				return nil, errors.New("isolation: pool closed")
			}
			p.log.WithField(logging.FieldPID, c.pid).Debug("isolation child started")
			return c, nil
		}
		err := errors.New("child closed its pipe before its handshake")
		if ok {
			err = fmt.Errorf("child sent %q before its handshake", m.T)
		} else if rerr := <-c.errc; rerr != nil && !errors.Is(rerr, io.EOF) {
			err = rerr
		}
		p.kill(c)
		return nil, fmt.Errorf("isolation: child %d: %w (does the program call worker.ServeChildIfRequested?)", c.pid, err)
	case <-time.After(p.cfg.StartTimeout):
		p.kill(c)
		return nil, fmt.Errorf("isolation: child %d did not start within %s", c.pid, p.cfg.StartTimeout)
	}
}

// get returns an idle child or starts one.
func (p *pool) get() (*child, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errors.New("isolation: pool closed")
	}
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return c, nil
	}
	p.mu.Unlock()
	return p.start()
}

// put returns a healthy child to the idle list, or recycles it if a guard
// says so or the pool is larger than the current concurrency.
func (p *pool) put(c *child) {
	if c.dead.Load() {
		return
	}
	reason := ""
	if p.cfg.MaxTasksPerChild > 0 && c.tasks >= p.cfg.MaxTasksPerChild {
		reason = RecycleMaxTasks
	} else if p.cfg.MaxMemoryPerChildBytes > 0 {
		if rss, err := p.rss(c.pid); err == nil && rss > p.cfg.MaxMemoryPerChildBytes {
			reason = RecycleMaxMemory
			p.log.WithFields(logrus.Fields{logging.FieldPID: c.pid, "rss": rss, "limit": p.cfg.MaxMemoryPerChildBytes}).Info("child over its memory limit")
		}
	}
	if reason != "" {
		p.log.WithFields(logrus.Fields{logging.FieldPID: c.pid, "reason": reason, "tasks": c.tasks}).Info("recycling isolation child")
		p.countRecycle(reason)
		p.stop(c)
		return
	}
	p.mu.Lock()
	_, limit := p.w.slots.stats()
	if p.closed || len(p.idle) >= limit {
		p.mu.Unlock()
		p.stop(c)
		return
	}
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

// stop asks a child to exit (closing its input) and kills it if it has not
// within a second.
func (p *pool) stop(c *child) {
	c.in.Close()
	done := make(chan struct{})
	go func() { _ = c.wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		c.killGroup(p.cfg.ProcRoot)
		<-done
	}
	c.drain()
	p.forget(c)
}

// kill kills a child's whole process group and reaps it.
func (p *pool) kill(c *child) {
	c.dead.Store(true)
	c.killGroup(p.cfg.ProcRoot)
	c.in.Close()
	_ = c.wait()
	c.drain()
	p.forget(c)
}

func (p *pool) forget(c *child) {
	c.dead.Store(true)
	p.mu.Lock()
	delete(p.all, c)
	p.mu.Unlock()
}

// close stops idle children and kills busy ones.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	var busy []*child
	for c := range p.all {
		busy = append(busy, c)
	}
	p.mu.Unlock()
	for _, c := range idle {
		p.stop(c)
	}
	for _, c := range busy {
		if !c.dead.Load() {
			p.kill(c)
		}
	}
}

// rss reads a process's resident set size from /proc.
func (p *pool) rss(pid int) (int64, error) {
	f, err := os.Open(p.cfg.ProcRoot + "/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok && len(strings.Fields(rest)) > 0 {
			kb, err := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// isolatedOutcome is what run returns for runHandler.
type isolatedOutcome struct {
	value   []byte
	err     error
	revoked bool
}

// run runs one task in a child. ctx is the task's context (cancelled on
// terminate, shutdown or time limit): the worker then forwards a revoke to
// the child and kills it with its process group if it has not finished
// within TerminateGrace.
func (p *pool) run(ctx context.Context, r *run, limit time.Duration) isolatedOutcome {
	env := r.d.Envelope
	c, err := p.get()
	if err != nil {
		return isolatedOutcome{err: err}
	}
	c.tasks++
	if err := c.w.write(frameMsg{T: msgRun, ID: env.ID, Name: env.Name, Queue: env.Queue, Attempt: env.Attempt, Args: env.Args, TimeLimit: limit}); err != nil {
		p.recycle(c, RecycleCrashed)
		return isolatedOutcome{err: fmt.Errorf("isolation: send task to child %d: %w", c.pid, err)}
	}
	var grace <-chan time.Time
	var memTick <-chan time.Time
	if p.cfg.MaxMemoryPerChildBytes > 0 {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		memTick = t.C
	}
	done := ctx.Done()
	log := p.log.WithFields(logrus.Fields{logging.FieldTask: env.ID, logging.FieldTaskName: env.Name, logging.FieldPID: c.pid})
	// Lease extensions the child asks for run on their own goroutine, so
	// a call that hangs (a partition) never delays a fence or a kill. At
	// most one is queued behind the running one (the longest asked for).
	leaseReq := make(chan time.Duration, 1)
	lctx, lcancel := context.WithCancel(context.Background())
	var lwg sync.WaitGroup
	defer func() { lcancel(); lwg.Wait() }()
	lwg.Add(1)
	go func() {
		defer lwg.Done()
		for {
			select {
			case <-lctx.Done():
				return
			case d := <-leaseReq:
				if err := p.w.extendLease(lctx, r, d); err != nil && lctx.Err() == nil {
					log.WithError(err).Warn("could not extend the lease of an isolated task")
				}
			}
		}
	}()
	leaseLost := func() isolatedOutcome {
		// Another worker may claim the task soon: no grace.
		log.Warn("lease of an isolated task lost; killing its child at once")
		p.recycle(c, RecycleLeaseLost)
		return isolatedOutcome{err: fmt.Errorf("%w; child process killed", ErrLeaseLost)}
	}
	for {
		select {
		case <-r.lostCh:
			// Also during the grace of a shutdown, revoke or time limit
			// that cancelled the context first.
			return leaseLost()
		case <-done:
			done = nil
			if cause := context.Cause(ctx); errors.Is(cause, ErrLeaseLost) {
				return leaseLost()
			}
			var re *revokedError
			reason, by := "", ""
			if cause := context.Cause(ctx); errors.As(cause, &re) {
				reason, by = re.reason, re.by
			}
			_ = c.w.write(frameMsg{T: msgRevoke, ID: env.ID, Reason: reason, By: by})
			grace = time.After(p.cfg.TerminateGrace)
		case <-grace:
			log.WithField(logging.FieldDuration, p.cfg.TerminateGrace.String()).Warn("isolated task did not stop; killing its child process group")
			p.recycle(c, RecycleKilled)
			return isolatedOutcome{revoked: true, err: fmt.Errorf("%w; child process killed %s later", context.Cause(ctx), p.cfg.TerminateGrace)}
		case <-memTick:
			if rss, err := p.rss(c.pid); err == nil && rss > 2*p.cfg.MaxMemoryPerChildBytes {
				log.WithField("rss", rss).Error("isolated task exceeded twice the child memory limit; killing its child")
				p.recycle(c, RecycleOOM)
				return isolatedOutcome{err: fmt.Errorf("child process used %d MiB, over twice max memory per child (%d MiB); killed", rss>>20, p.cfg.MaxMemoryPerChildBytes>>20)}
			}
		case m, ok := <-c.msgs:
			if !ok {
				err := <-c.errc
				reason := RecycleCrashed
				if err != nil && strings.HasPrefix(err.Error(), "protocol error") {
					reason = RecycleProtocol
				}
				state := p.exitState(c)
				p.countRecycle(reason)
				if done == nil && grace != nil {
					return isolatedOutcome{revoked: true, err: fmt.Errorf("%w; child process exited", context.Cause(ctx))}
				}
				if err != nil && !errors.Is(err, io.EOF) {
					return isolatedOutcome{err: fmt.Errorf("isolation child %d: %v; %s", c.pid, err, state)}
				}
				return isolatedOutcome{err: fmt.Errorf("isolation child %d died while running the task: %s", c.pid, state)}
			}
			switch m.T {
			case msgBeat:
				r.lastBeat.Store(p.w.cfg.Now().UnixNano())
			case msgLease:
				r.lastBeat.Store(p.w.cfg.Now().UnixNano())
				select {
				case leaseReq <- m.Lease:
				default: // one is queued: keep the longer
					select {
					case queued := <-leaseReq:
						leaseReq <- max(queued, m.Lease)
					default:
						leaseReq <- m.Lease
					}
				}
			case msgProgress:
				r.lastBeat.Store(p.w.cfg.Now().UnixNano())
				if err := p.w.recordProgress(context.Background(), r, m.Progress, m.Data); err != nil {
					p.w.log.WithError(err).WithField(logging.FieldTask, env.ID).Warn("could not record progress")
				}
			case msgResult:
				if m.ID != env.ID {
					p.recycle(c, RecycleProtocol)
					return isolatedOutcome{err: fmt.Errorf("isolation child %d: protocol error: result for task %q while running %q", c.pid, m.ID, env.ID)}
				}
				p.put(c)
				switch {
				case m.Revoked:
					return isolatedOutcome{revoked: true, err: ErrTaskRevoked}
				case m.OK:
					return isolatedOutcome{value: m.Value}
				case m.NoRetry:
					return isolatedOutcome{err: fmt.Errorf("%s: %w", m.Error, ErrNoRetry)}
				}
				return isolatedOutcome{err: errors.New(m.Error)}
			default:
				p.recycle(c, RecycleProtocol)
				return isolatedOutcome{err: fmt.Errorf("isolation child %d: protocol error: unexpected %q message", c.pid, m.T)}
			}
		}
	}
}

// exitState reaps a child whose pipe closed and describes how it ended.
func (p *pool) exitState(c *child) string {
	done := make(chan error, 1)
	go func() { done <- c.wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(2 * time.Second):
		c.killGroup(p.cfg.ProcRoot)
		err = <-done
	}
	p.forget(c)
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// recordProgress stores a task's progress (from an inline or isolated
// handler) in the run and the result backend.
func (w *Worker) recordProgress(ctx context.Context, r *run, p float64, data []byte) error {
	r.progress.Store(math.Float64bits(p))
	st := w.taskState(r.d.Envelope, result.Started, w.cfg.Now())
	st.StartedAt, st.Progress, st.ProgressData = r.startedAt, p, data
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return w.cfg.Results.Set(ctx, []result.TaskState{st})
}

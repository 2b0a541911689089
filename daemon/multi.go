package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/google/shlex"
	"github.com/stemhq/stem"
	"github.com/stemhq/stem/config"
	"github.com/stemhq/stem/internal/fileperm"
	"github.com/stemhq/stem/templating"
)

// Node is one worker process that a Supervisor manages.
type Node struct {
	// Name is the node name (already validated).
	Name string
	// Pidfile and Logfile are expanded paths. A detached node's stdout and
	// stderr are appended to Logfile; in the foreground, an empty Logfile
	// leaves them alone.
	Pidfile string
	Logfile string
	// Argv is the command; Argv[0] is looked up in PATH.
	Argv []string
	// Env is the node's full environment ("KEY=value").
	Env []string
	// Dir is the working directory ("" = the caller's).
	Dir string
}

// Result reports what an action did to one node.
type Result struct {
	Node string
	// State is the node's state after the action.
	State State
	// PID is the node's process, when known.
	PID int
	// Since is the process's start time, when known.
	Since time.Time
	// Msg is a short human report ("started", "stopped", "already running").
	Msg string
	// Stale, when set, explains a stale pidfile that was found (and, for
	// start, stop and kill, removed).
	Stale string
	// Err is the failure, nil on success.
	Err error
}

// Supervisor starts, stops and inspects detached nodes. Its zero value
// works on the real system.
type Supervisor struct {
	Proc Proc
	// KillWait is how long Stop and Kill wait for a process to go after
	// SIGKILL; 0 means 5s.
	KillWait time.Duration
}

func (s Supervisor) killWait() time.Duration {
	if s.KillWait <= 0 {
		return 5 * time.Second
	}
	return s.KillWait
}

// MakeDirs creates the directories of n's pidfile and logfile, mode 0750
// (minus the umask). Existing directories are left as they are.
func MakeDirs(n Node) error {
	for _, f := range []struct{ what, path string }{{"pidfile", n.Pidfile}, {"logfile", n.Logfile}} {
		if f.path == "" {
			continue
		}
		dir := filepath.Dir(f.path)
		if err := os.MkdirAll(dir, fileperm.Dir); err != nil {
			return fmt.Errorf("cannot create %s directory %s: %w", f.what, dir, unwrapPath(err))
		}
	}
	return nil
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// clean inspects n's pidfile ahead of a start; it removes a stale one and
// returns the Result to report if the node runs or cannot be inspected.
func (s Supervisor) clean(n Node) (stale string, res *Result) {
	in := s.Proc.Inspect(n.Pidfile)
	switch {
	case in.State == Running:
		return "", &Result{Node: n.Name, State: Running, PID: in.Pidfile.PID, Since: in.Process.Start,
			Msg: "already running", Err: fmt.Errorf("%s is already running (PID %d, pidfile %s)", n.Name, in.Pidfile.PID, n.Pidfile)}
	case in.State.Stale():
		if err := RemoveStale(n.Pidfile); err != nil {
			return "", &Result{Node: n.Name, State: in.State, Err: fmt.Errorf("%s: %w", n.Name, err)}
		}
		return in.Err.Error(), nil
	case in.State == Unknown || in.State == Refused:
		return "", &Result{Node: n.Name, State: in.State, Err: fmt.Errorf("%s: %w", n.Name, in.Err)}
	}
	return "", nil
}

// openLog opens (creating it 0640) the logfile path for appending, never
// through a symbolic link.
func openLog(path string) (*os.File, error) {
	f, _, err := fileperm.OpenFile(path, os.O_WRONLY|os.O_APPEND)
	var se *fileperm.SymlinkError
	if errors.As(err, &se) {
		return nil, &RefusedError{What: "logfile", Path: path, Reason: "it is a symbolic link; stem opens logfiles with O_NOFOLLOW (remove the link)"}
	}
	if err != nil {
		return nil, fmt.Errorf("cannot open logfile %s: %w", path, unwrapPath(err))
	}
	return f, nil
}

// commandExe identifies the program cmd will run, for the pidfile's
// record; the zero ExeID (Commit then reads /proc) when it cannot.
func commandExe(path, dir string) ExeID {
	if !filepath.IsAbs(path) && dir != "" {
		path = filepath.Join(dir, path)
	}
	id, _ := ResolveExe(path) // the zero ExeID on an error
	return id
}

// Start launches n detached (own session, stdin /dev/null, output appended
// to n.Logfile, no service manager variables: ChildEnv) and writes its
// pidfile, which the child keeps locked through fd 3 (PidfileFDEnv). A node
// that already runs is not started again: the Result's Err says so.
func (s Supervisor) Start(n Node) Result {
	if len(n.Argv) == 0 {
		return Result{Node: n.Name, Err: fmt.Errorf("%s: no command to run", n.Name)}
	}
	stale, res := s.clean(n)
	if res != nil {
		return *res
	}
	fail := func(err error) Result {
		return Result{Node: n.Name, State: NotRunning, Stale: stale, Err: fmt.Errorf("%s: %w", n.Name, err)}
	}
	if err := MakeDirs(n); err != nil {
		return fail(err)
	}
	logf, err := openLog(n.Logfile)
	if err != nil {
		return fail(err)
	}
	defer logf.Close()
	pf, err := PreparePidfile(n.Pidfile)
	if err != nil {
		return fail(err)
	}
	defer pf.Close()
	cmd := exec.Command(n.Argv[0], n.Argv[1:]...)
	cmd.Env = append(ChildEnv(n.Env), PidfileFDEnv+"=3")
	cmd.Dir = n.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{pf.File()}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cmd.Err == nil {
		pf.SetExe(commandExe(cmd.Path, n.Dir))
	}
	if err := cmd.Start(); err != nil {
		return fail(fmt.Errorf("starting %s: %w", n.Argv[0], unwrapPath(err)))
	}
	pid := cmd.Process.Pid
	// Reap the child if it exits while this process lives (tests,
	// restart), but only once the pidfile has its record: until then an
	// exited child stays a zombie, so Commit can still read its start
	// time from /proc.
	defer func() { go func() { _ = cmd.Wait() }() }()
	if err := pf.Commit(pid); err != nil {
		_ = cmd.Process.Kill()
		var ee *ExistsError
		if errors.As(err, &ee) {
			return Result{Node: n.Name, State: Running, PID: ee.PID, Msg: "already running",
				Err: fmt.Errorf("%s is already running (PID %d, pidfile %s)", n.Name, ee.PID, n.Pidfile)}
		}
		return fail(err)
	}
	r := Result{Node: n.Name, State: Running, PID: pid, Msg: "started", Stale: stale}
	if info, err := s.Proc.Process(pid); err == nil {
		r.Since = info.Start
	}
	return r
}

// Status inspects n without changing anything. For every state but
// Running and NotRunning, Err explains it (naming the pidfile and PID, not
// the node).
func (s Supervisor) Status(n Node) Result {
	in := s.Proc.Inspect(n.Pidfile)
	r := Result{Node: n.Name, State: in.State, PID: in.Pidfile.PID, Since: in.Process.Start, Msg: in.State.String()}
	if in.State != Running && in.State != NotRunning {
		r.Err = in.Err
	}
	return r
}

// Stop stops the nodes in parallel: SIGTERM (a warm shutdown), a wait of
// up to timeout, then SIGKILL. A node whose pidfile names another process
// (a reused PID) is not signalled; its stale pidfile is removed. Results
// come in the order of nodes.
func (s Supervisor) Stop(nodes []Node, timeout time.Duration) []Result {
	return s.each(nodes, func(n Node) Result { return s.stop(n, syscall.SIGTERM, timeout) })
}

// Kill sends SIGKILL to the nodes, with the same identity checks as Stop.
func (s Supervisor) Kill(nodes []Node) []Result {
	return s.each(nodes, func(n Node) Result { return s.stop(n, syscall.SIGKILL, 0) })
}

func (s Supervisor) each(nodes []Node, f func(Node) Result) []Result {
	out := make([]Result, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = f(n)
		}()
	}
	wg.Wait()
	return out
}

func (s Supervisor) stop(n Node, sig syscall.Signal, timeout time.Duration) Result {
	in := s.Proc.Inspect(n.Pidfile)
	r := Result{Node: n.Name, State: in.State, PID: in.Pidfile.PID}
	switch {
	case in.State == NotRunning:
		r.Msg = "not running"
		return r
	case in.State.Stale():
		r.State, r.Msg, r.Stale = NotRunning, "not running", in.Err.Error()
		if in.State == Reused {
			r.Msg = fmt.Sprintf("not running; PID %d belongs to another process and was not signalled", in.Pidfile.PID)
		}
		if err := RemoveStale(n.Pidfile); err != nil {
			r.Err = fmt.Errorf("%s: %w", n.Name, err)
		}
		return r
	case in.State == Unknown || in.State == Refused:
		r.Err = fmt.Errorf("%s: %w", n.Name, in.Err)
		return r
	}
	pid, ticks := in.Pidfile.PID, in.Process.StartTicks
	r.Since = in.Process.Start
	if err := s.Proc.Signal(pid, ticks, sig); err != nil {
		if errors.Is(err, ErrNoProcess) {
			return s.gone(n, r, "stopped (it exited meanwhile)")
		}
		r.Err = fmt.Errorf("%s: %w", n.Name, err)
		return r
	}
	killed := "killed"
	if sig != syscall.SIGKILL {
		if s.Proc.WaitExit(pid, ticks, time.Now().Add(timeout)) {
			return s.gone(n, r, "stopped")
		}
		if err := s.Proc.Signal(pid, ticks, syscall.SIGKILL); err != nil && !errors.Is(err, ErrNoProcess) {
			r.Err = fmt.Errorf("%s: did not stop within %s, and SIGKILL failed: %w", n.Name, timeout, err)
			return r
		}
		killed = fmt.Sprintf("killed (SIGKILL after %s)", timeout)
	}
	if s.Proc.WaitExit(pid, ticks, time.Now().Add(s.killWait())) {
		return s.gone(n, r, killed)
	}
	r.Err = fmt.Errorf("%s: PID %d still runs after SIGKILL", n.Name, pid)
	return r
}

// gone records that n's process exited and removes its pidfile if it still
// names that process.
func (s Supervisor) gone(n Node, r Result, msg string) Result {
	r.State, r.Msg = NotRunning, msg
	if err := removeIfNames(n.Pidfile, r.PID); err != nil {
		r.Err = fmt.Errorf("%s: %w", n.Name, err)
	}
	return r
}

// Exec replaces this process with n (execve), so the node keeps the PID a
// supervisor started, gets its signals and gives it its exit code. The
// pidfile names this PID and stays locked across the exec; output goes to
// n.Logfile when one is set; n.Env is used as is (the node becomes the
// service's main process). Exec returns only on failure.
func (s Supervisor) Exec(n Node) error {
	if len(n.Argv) == 0 {
		return fmt.Errorf("%s: no command to run", n.Name)
	}
	argv0 := n.Argv[0]
	if n.Dir != "" && strings.Contains(argv0, "/") && !filepath.IsAbs(argv0) {
		argv0 = filepath.Join(n.Dir, argv0) // as os/exec does for Start
	}
	path, err := exec.LookPath(argv0)
	if err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	if _, res := s.clean(n); res != nil {
		return res.Err
	}
	if err := MakeDirs(n); err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	exe, err := ResolveExe(path)
	if err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	pf, err := createPidfile(n.Pidfile, os.Getpid(), exe)
	if err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	fail := func(err error) error {
		pf.Remove()
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	env := append([]string(nil), n.Env...)
	if f := pf.File(); f != nil { // nil: adopted, already inherited
		fd := int(f.Fd())
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return fail(fmt.Errorf("keeping the pidfile open across exec: %w", err))
		}
		env = append(env, PidfileFDEnv+"="+strconv.Itoa(fd))
	}
	if n.Logfile != "" {
		logf, err := openLog(n.Logfile)
		if err != nil {
			return fail(err)
		}
		for _, target := range []int{1, 2} {
			if err := unix.Dup3(int(logf.Fd()), target, 0); err != nil {
				return fail(fmt.Errorf("redirecting output to %s: %w", n.Logfile, err))
			}
		}
	}
	if n.Dir != "" {
		if err := os.Chdir(n.Dir); err != nil {
			return fail(err)
		}
	}
	return fail(fmt.Errorf("exec %s: %w", path, syscall.Exec(path, n.Argv, env)))
}

// Default path templates of `worker multi`.
const (
	DefaultPidfileTemplate = "/var/run/stem/%n.pid"
	DefaultLogfileTemplate = "/var/log/stem/%n.log"
)

// UsageError is a mistake in what a plan was asked for (a node name, a
// path template, a command line): the caller's, not the system's.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

func usagef(format string, args ...any) error { return &UsageError{Msg: fmt.Sprintf(format, args...)} }

// CheckNodeName refuses node names that cannot be used in paths: anything
// but letters, digits and . _ - (no colon, as in worker run), or only dots.
func CheckNodeName(name string) error {
	if !config.ValidName(name) || strings.Contains(name, ":") || strings.Trim(name, ".") == "" {
		return usagef("invalid node name %q: use letters, digits and . _ - (no spaces, slashes or colons)", name)
	}
	return nil
}

// CheckNodeNames checks every name and that none is given twice.
func CheckNodeNames(names []string) error {
	seen := map[string]bool{}
	for _, n := range names {
		if err := CheckNodeName(n); err != nil {
			return err
		}
		if seen[n] {
			return usagef("node %q is named twice", n)
		}
		seen[n] = true
	}
	return nil
}

// TemplateVars returns the values paths are expanded with for the node at
// 1-based index i (0 when unknown); now is taken once per command.
func TemplateVars(node string, i int, now time.Time) templating.Vars {
	host, _ := os.Hostname()
	return templating.Vars{Node: node, Hostname: host, Index: i, Time: now}
}

// ExpandPath expands the path template of option name ("pidfile",
// "logfile"); one that does not expand is a *UsageError naming --name.
func ExpandPath(name, tmpl string, v templating.Vars) (string, error) {
	p, err := templating.Expand(tmpl, v)
	if err != nil {
		return "", usagef("--%s: %v", name, err)
	}
	return p, nil
}

// Paths expands the pidfile and logfile templates of every node. Two
// nodes may not share a pidfile, and a pidfile may not use %d (stop and
// status could not find it again).
func Paths(names []string, pidfile, logfile string, now time.Time) ([]Node, error) {
	if templating.Uses(pidfile, 'd') {
		return nil, usagef("--pidfile %q uses %%d: stop and status could not find the pidfile again; use %%n", pidfile)
	}
	nodes := make([]Node, len(names))
	byPidfile := map[string]string{}
	for i, name := range names {
		v := TemplateVars(name, i+1, now)
		pid, err := ExpandPath("pidfile", pidfile, v)
		if err != nil {
			return nil, err
		}
		logf, err := ExpandPath("logfile", logfile, v)
		if err != nil {
			return nil, err
		}
		if other, dup := byPidfile[pid]; dup {
			return nil, usagef("nodes %s and %s would share pidfile %s: put %%n in --pidfile", other, name, pid)
		}
		byPidfile[pid] = name
		nodes[i] = Node{Name: name, Pidfile: pid, Logfile: logf}
	}
	return nodes, nil
}

// StartPlan is what starting nodes needs besides their names.
type StartPlan struct {
	// Pidfile and Logfile are the path templates.
	Pidfile, Logfile string
	// Command is STEM_WORKER_COMMAND (shell-like quoting); "" runs this
	// program's "worker run". Args, then CommandLine (split with
	// shell-like quoting), are appended.
	Command     string
	Args        []string
	CommandLine string
	// Queues and Broadcasts, when set, are exported to every node as
	// STEM_WORKER_QUEUES and STEM_WORKER_BROADCASTS (already resolved).
	Queues, Broadcasts []string
	// Dir is the nodes' working directory ("" = the caller's).
	Dir string
	// Environ is the process environment and EnvFile the env file's
	// variables: see ChildEnviron.
	Environ []string
	EnvFile map[string]string
}

// Nodes resolves everything a start needs: paths and their directories,
// command, environment. Nothing should be started if it fails: a
// *UsageError is the caller's mistake, a *stem.ConfigError a bad
// STEM_WORKER_COMMAND or a directory that cannot be made.
func (p StartPlan) Nodes(names []string, now time.Time) ([]Node, error) {
	nodes, err := Paths(names, p.Pidfile, p.Logfile, now)
	if err != nil {
		return nil, err
	}
	argv, err := p.argv()
	if err != nil {
		return nil, err
	}
	set := map[string]string{}
	if len(p.Queues) > 0 {
		set["STEM_WORKER_QUEUES"] = strings.Join(p.Queues, ",")
	}
	if len(p.Broadcasts) > 0 {
		set["STEM_WORKER_BROADCASTS"] = strings.Join(p.Broadcasts, ",")
	}
	if p.Dir != "" {
		if st, err := os.Stat(p.Dir); err != nil || !st.IsDir() {
			return nil, usagef("--workdir %s is not a directory", p.Dir)
		}
	}
	for i := range nodes {
		n := &nodes[i]
		if err := MakeDirs(*n); err != nil {
			return nil, &stem.ConfigError{Msg: fmt.Sprintf("%s: %v (--pidfile %q, --logfile %q)", n.Name, err, p.Pidfile, p.Logfile)}
		}
		vars := map[string]string{"STEM_WORKER_NODE": n.Name, "STEM_WORKER_PIDFILE": n.Pidfile}
		if n.Logfile != "" {
			vars["STEM_WORKER_LOGFILE"] = n.Logfile
		}
		maps.Copy(vars, set)
		n.Argv, n.Dir = argv, p.Dir
		n.Env = ChildEnviron(p.Environ, p.EnvFile, vars)
	}
	return nodes, nil
}

// argv builds the worker command: Command (or this program's "worker
// run"), then Args, then CommandLine.
func (p StartPlan) argv() ([]string, error) {
	var argv []string
	if strings.TrimSpace(p.Command) != "" {
		words, err := shlex.Split(p.Command)
		if err != nil {
			return nil, &stem.ConfigError{Key: "STEM_WORKER_COMMAND", Value: p.Command, Msg: "does not parse: " + err.Error()}
		}
		if len(words) == 0 {
			return nil, &stem.ConfigError{Key: "STEM_WORKER_COMMAND", Value: p.Command, Msg: "holds no command"}
		}
		argv = words
	} else {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("finding this program to run `worker run`: %w (set STEM_WORKER_COMMAND)", err)
		}
		argv = []string{exe, "worker", "run"}
	}
	argv = append(argv, p.Args...)
	if p.CommandLine != "" {
		words, err := shlex.Split(p.CommandLine)
		if err != nil {
			return nil, usagef("--command-line %q does not parse: %v", p.CommandLine, err)
		}
		argv = append(argv, words...)
	}
	return argv, nil
}

// ChildEnviron builds a node's environment: the process environment base,
// then the env file's variables that base does not set (base wins; an
// empty variable counts as unset), then set, which overrides both.
func ChildEnviron(base []string, file map[string]string, set map[string]string) []string {
	out := make([]string, 0, len(base)+len(file)+len(set))
	have := map[string]bool{}
	for _, kv := range base {
		k, v, _ := strings.Cut(kv, "=")
		if _, override := set[k]; override {
			continue
		}
		if fv, inFile := file[k]; v == "" && inFile && fv != "" {
			continue
		}
		have[k] = true
		out = append(out, kv)
	}
	for _, k := range slices.Sorted(maps.Keys(file)) {
		if _, override := set[k]; !have[k] && !override {
			out = append(out, k+"="+file[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(set)) {
		out = append(out, k+"="+set[k])
	}
	return out
}

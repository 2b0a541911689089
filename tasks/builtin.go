// Package tasks provides the tasks that need no Go: the built-in stem.*
// tasks for smoke tests, and exec tasks defined in a tasks file (YAML), each
// a command run as a child process in its own process group.
//
// # Exec tasks die with their worker
//
// No process of an exec task outlives its worker by more than a moment,
// however the worker died (kill -9, `stem worker multi kill`, the OOM
// killer, a crash), with or without systemd. The worker does not start the
// command itself but a supervisor: its own binary re-executed with
// SupervisorEnv=1 (ServeSupervisorIfRequested, which cli.Main calls first
// thing), as the leader of a new process group. The supervisor
//
//   - holds fd 3, one end of a socket pair whose other end only the worker
//     holds (close-on-exec, so no other child of the worker inherits it).
//     The kernel closes it when the worker's process ends, for whatever
//     reason, so the supervisor reads EOF at that instant. This is why it
//     holds where PR_SET_PDEATHSIG does not: Go delivers the death signal
//     when the forking thread exits, which is neither necessary nor
//     sufficient for the worker's death;
//   - sets fd 3 close-on-exec, so the command cannot keep the worker
//     "alive" in its eyes;
//   - makes itself a child subreaper (PR_SET_CHILD_SUBREAPER), so every
//     process the command starts stays its descendant when orphaned:
//     double forks, daemons and processes that left the process group or
//     session with setsid all reparent to it, not to PID 1;
//   - starts the command in its process group with stdin, stdout and
//     stderr passed straight through (nothing is copied), and catches
//     (never ignores, so the command keeps default dispositions) the
//     signals a group may receive, so it survives the worker's SIGTERM;
//   - when the command exits, SIGKILLs what is left of its tree and exits
//     with the command's status, dying by the same signal when it was
//     killed by one, so the worker reports "signal: killed" as before;
//   - on EOF of fd 3, SIGKILLs the command and every descendant, walking
//     /proc (internal/proctree) until none is left and reaping until wait4
//     reports ECHILD, then exits.
//
// The worker's own stopping is unchanged: on terminate, shutdown or time
// limit the group gets SIGTERM, then after ExecOptions.KillGrace the worker
// closes its end of the socket, which kills the whole tree as above (and
// SIGKILLs the group itself should the supervisor not exit within a
// second). On lease loss (worker.ErrLeaseLost) the socket is closed at
// once, also during KillGrace after another stop (worker.LeaseWatcher):
// another worker may claim the task soon.
//
// The guarantee has two exceptions: a process that leaves the supervisor's
// tree by being started by someone else on the task's behalf (systemd-run,
// a D-Bus activated service, at, a daemon the task talks to), and a
// supervisor that is itself SIGKILLed alone (the OOM killer picks the
// largest process, rarely a supervisor); the worker then SIGKILLs the
// group, but escaped processes are lost. The cost is one more process per
// running exec task and its start: see BenchmarkExecTrue.
//
// Arguments over MaxEnvArgs (64 KiB) are not put in STEM_TASK_ARGS, which
// Linux would refuse with E2BIG: STEM_TASK_ARGS is then unset and
// STEM_TASK_ARGS_SIZE=<bytes> says "too big for the environment; read
// stdin", where they always arrive.
package tasks

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/stemhq/stem/worker"
)

// Built-in task names.
const (
	Echo  = "stem.echo"
	Sleep = "stem.sleep"
	Fail  = "stem.fail"
	Spin  = "stem.spin"
)

// RegisterBuiltins adds stem.echo, stem.sleep and stem.fail to r.
//
//   - stem.echo returns its arguments.
//   - stem.sleep sleeps {"duration": "2s"} (or {"seconds": 2}), calling
//     Heartbeat every 50ms, so a terminate revoke or shutdown stops it.
//   - stem.fail fails with {"message": "..."}; {"permanent": true} skips
//     retries.
//   - stem.spin is isolated (runs in a child process) and burns CPU for
//     {"duration": "10s"} without ever reaching a checkpoint: the task a
//     terminate revoke can only stop by killing its process.
func RegisterBuiltins(r *worker.Registry) error {
	return errors.Join(
		r.Register(Echo, echo, worker.TaskOptions{}),
		r.Register(Sleep, sleep, worker.TaskOptions{}),
		r.Register(Fail, fail, worker.TaskOptions{}),
		r.Register(Spin, spin, worker.TaskOptions{Isolated: true}),
	)
}

func spin(_ worker.TaskContext, args json.RawMessage) (any, error) {
	d, err := durationArg(Spin, args)
	if err != nil {
		return nil, err
	}
	end := time.Now().Add(d)
	n := 0
	for time.Now().Before(end) {
		n++
	}
	return map[string]any{"spun": d.String(), "iterations": n}, nil
}

func echo(_ worker.TaskContext, args json.RawMessage) (any, error) {
	if len(args) == 0 {
		return nil, nil
	}
	return args, nil
}

type sleepArgs struct {
	Duration string  `json:"duration"`
	Seconds  float64 `json:"seconds"`
}

// durationArg reads {"duration": "2s"} or {"seconds": 2}.
func durationArg(task string, args json.RawMessage) (time.Duration, error) {
	var a sleepArgs
	if len(args) > 0 {
		if err := json.Unmarshal(args, &a); err != nil {
			return 0, fmt.Errorf("%s: args must be {\"duration\": \"2s\"} or {\"seconds\": 2}: %v: %w", task, err, worker.ErrNoRetry)
		}
	}
	d := time.Duration(a.Seconds * float64(time.Second))
	if a.Duration != "" {
		var err error
		if d, err = time.ParseDuration(a.Duration); err != nil {
			return 0, fmt.Errorf("%s: duration %q: %v: %w", task, a.Duration, err, worker.ErrNoRetry)
		}
	}
	return d, nil
}

func sleep(tc worker.TaskContext, args json.RawMessage) (any, error) {
	d, err := durationArg(Sleep, args)
	if err != nil {
		return nil, err
	}
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-deadline.C:
			return map[string]any{"slept": d.String()}, nil
		case <-tc.Context().Done():
			if err := tc.Heartbeat(); err != nil {
				return nil, err
			}
			return nil, tc.Context().Err()
		case <-tick.C:
			if err := tc.Heartbeat(); err != nil {
				return nil, err
			}
		}
	}
}

type failArgs struct {
	Message   string `json:"message"`
	Permanent bool   `json:"permanent"`
}

func fail(_ worker.TaskContext, args json.RawMessage) (any, error) {
	a := failArgs{Message: "stem.fail was asked to fail"}
	if len(args) > 0 {
		_ = json.Unmarshal(args, &a)
	}
	if a.Permanent {
		return nil, fmt.Errorf("%s: %w", a.Message, worker.ErrNoRetry)
	}
	return nil, errors.New(a.Message)
}

// Package tasks provides the tasks that need no Go: the built-in stem.*
// tasks for smoke tests, and exec tasks defined in a tasks file (YAML), each
// a command run as a child process in its own process group.
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

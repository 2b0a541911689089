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
)

// RegisterBuiltins adds stem.echo, stem.sleep and stem.fail to r.
//
//   - stem.echo returns its arguments.
//   - stem.sleep sleeps {"duration": "2s"} (or {"seconds": 2}), calling
//     Heartbeat every 50ms, so a terminate revoke or shutdown stops it.
//   - stem.fail fails with {"message": "..."}; {"permanent": true} skips
//     retries.
func RegisterBuiltins(r *worker.Registry) error {
	return errors.Join(
		r.Register(Echo, echo, worker.TaskOptions{}),
		r.Register(Sleep, sleep, worker.TaskOptions{}),
		r.Register(Fail, fail, worker.TaskOptions{}),
	)
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

func sleep(tc worker.TaskContext, args json.RawMessage) (any, error) {
	var a sleepArgs
	if len(args) > 0 {
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, fmt.Errorf("stem.sleep: args must be {\"duration\": \"2s\"} or {\"seconds\": 2}: %v: %w", err, worker.ErrNoRetry)
		}
	}
	d := time.Duration(a.Seconds * float64(time.Second))
	if a.Duration != "" {
		var err error
		if d, err = time.ParseDuration(a.Duration); err != nil {
			return nil, fmt.Errorf("stem.sleep: duration %q: %v: %w", a.Duration, err, worker.ErrNoRetry)
		}
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

package worker

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestDecide covers every branch of decide, before the start and after
// the run.
func TestDecide(t *testing.T) {
	fail := errors.New("boom")
	cases := []struct {
		name string
		o    outcome
		want action
	}{
		// Before the start.
		{"start", outcome{}, actRun},
		{"lease lost before the start", outcome{leaseLost: true, revoked: true, unknown: true, holdBack: true}, actHandBack},
		{"revoked before the start", outcome{revoked: true, unknown: true, holdBack: true}, actRevoke},
		{"unknown within its TTL", outcome{unknown: true, unknownFor: time.Minute, unknownTTL: time.Hour, holdBack: true}, actHandBackUnknown},
		{"unknown past its TTL", outcome{unknown: true, unknownFor: time.Hour, unknownTTL: time.Hour}, actDeadLetter},
		{"shutting down or paused", outcome{holdBack: true}, actHandBack},
		// After the run.
		{"succeeded", outcome{started: true}, actSucceed},
		{"succeeded though shut down", outcome{started: true, shutdown: true, revoked: true}, actSucceed},
		{"succeeded though terminated", outcome{started: true, terminated: true}, actSucceed},
		{"failed after its lease was lost", outcome{started: true, err: fail, leaseLost: true, revoked: true}, actHandBack},
		{"failed after a shutdown cancelled it", outcome{started: true, err: fail, shutdown: true, attempt: 9}, actHandBack},
		{"failed after a terminate revoke", outcome{started: true, err: fail, terminated: true, maxRetries: 3}, actRevoke},
		{"failed, then found revoked", outcome{started: true, err: fail, revoked: true, maxRetries: 3}, actRevoke},
		{"failed with retries left", outcome{started: true, err: fail, attempt: 1, maxRetries: 2}, actRetry},
		{"failed with no retries left", outcome{started: true, err: fail, attempt: 2, maxRetries: 2}, actDeadLetter},
		{"failed for good (ErrNoRetry)", outcome{started: true, err: fmt.Errorf("bad: %w", ErrNoRetry), maxRetries: 5}, actDeadLetter},
		{"result not JSON, retries left", outcome{started: true, resultErr: fail, maxRetries: 1}, actRetry},
		{"result not JSON while shut down", outcome{started: true, resultErr: fail, shutdown: true}, actDeadLetter},
		{"result not JSON, revoked", outcome{started: true, resultErr: fail, revoked: true, maxRetries: 1}, actRevoke},
		{"result not JSON, ErrNoRetry", outcome{started: true, resultErr: ErrNoRetry, maxRetries: 1}, actDeadLetter},
	}
	for _, c := range cases {
		if got := decide(c.o); got != c.want {
			t.Errorf("%s: decide(%+v) = %d, want %d", c.name, c.o, got, c.want)
		}
	}
}

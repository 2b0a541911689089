package worker

import "errors"

// ErrLeaseLost is the cause (context.Cause) of a task's context when the
// worker can no longer prove that it holds the task's lease: no renewal
// was confirmed before the lease's deadline minus the fencing margin, or
// the broker reports that another worker holds it. The worker stops the
// task before any other worker can claim it: inline handlers see their
// context cancelled, and exec and isolated tasks have their process
// groups killed at once (no grace period).
var ErrLeaseLost = errors.New("lease lost")

// Package worker is stem's runtime: it claims deliveries from a broker in
// batches, runs them with bounded concurrency, records their states in a
// result backend, retries failures with exponential backoff and jitter,
// renews leases of long tasks, and keeps a heartbeat in the worker registry.
//
// # Components, a file each
//
//   - fetcher.go claims up to the free outstanding capacity (claimed, not
//     yet settled: at most Concurrency+Prefetch) and backs off on errors;
//   - dispatcher.go holds the outstanding set, the slots and the prefetch
//     queue, starts a handler as a slot frees, hands back what must not start;
//   - executor.go runs a task and turns its outcome into a finish event;
//   - decide.go is the pure retry/revoke/dead-letter/hand-back decision;
//   - completer.go writes the states of a batch of finish events, then acks
//     or nacks their deliveries in one batch, then frees their capacity;
//   - lease.go renews outstanding leases and fences those it cannot keep;
//   - heartbeat.go: the registry heartbeat and the liveness probe (Alive);
//   - lifecycle.go: Run, the shutdown modes and the shutdown order;
//   - control_dispatch.go (requests), revokecache.go, pauses.go and
//     storesync.go (reads of the revoke and pause stores): the control plane;
//   - worker.go: Config, the Worker struct and New. Also unknown.go,
//     autoscale.go, isolate.go (child.go, frame.go) and metrics.go.
//
// # Shutdown order
//
// Shutdown(mode) (or the Run context ending, which is a warm shutdown):
//
//  1. the fetcher stops claiming;
//  2. deliveries claimed but not started are handed back at the head of
//     their queue without counting an attempt;
//  3. running handlers: warm waits for them; soft cancels their contexts and
//     waits up to ShutdownGrace, then escalates to hard; hard cancels them,
//     gives them HardWait to return, and hands back the deliveries of those
//     still running (without counting an attempt);
//  4. the completer flushes every pending state, ack and nack (a hard
//     shutdown cuts its back-off short and gives up on a failing backend);
//  5. the lease renewer and heartbeater stop, and the registry record is
//     removed.
//
// A later, stronger Shutdown call escalates (warm → soft → hard). The
// package never calls os.Exit.
package worker

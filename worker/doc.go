// Package worker is stem's runtime: it claims deliveries from a broker in
// batches, runs them with bounded concurrency, records their states in a
// result backend, retries failures with exponential backoff and jitter,
// renews leases of long tasks, and keeps a heartbeat in the worker registry.
//
// # Components, and the file of each
//
//   - worker.go: Config, the Worker struct, New, and the glue (stats).
//   - fetcher.go: claims up to the free outstanding capacity (deliveries
//     claimed and not yet settled, never more than Concurrency+Prefetch; at
//     most MaxBatch per claim) and backs off when claims fail.
//   - dispatcher.go: the outstanding set, the slots (running handlers,
//     never more than the current concurrency) and the prefetch queue; it
//     starts a handler per delivery as slots free up, or hands back what
//     must not start.
//   - executor.go: runs one task and turns its outcome into a finish event.
//   - decide.go: the pure retry/revoke/dead-letter/hand-back decision.
//   - completer.go: gathers finish events, writes their states in one batch
//     (a task's "started" coalesced with its final state), then acks or
//     nacks the deliveries in one batch, then frees their capacity.
//   - lease.go: renews every outstanding lease at half the lease and fences
//     a task whose renewal it cannot confirm in time.
//   - heartbeat.go: the registry heartbeat and the liveness probe (Alive).
//   - lifecycle.go: Run, the shutdown modes and the shutdown order.
//   - control_dispatch.go, revokecache.go, pauses.go, storesync.go: the
//     control plane (requests, the revoke cache, paused queues, and the
//     reads of the revoke and pause stores).
//   - unknown.go: tasks whose name no handler here knows; autoscale.go,
//     isolate.go (with child.go, frame.go), metrics.go: as named.
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
//  4. the completer flushes every pending state, ack and nack (during a
//     hard shutdown it gives up on a backend that keeps failing);
//  5. the lease renewer and heartbeater stop, and the registry record is
//     removed.
//
// A later, stronger Shutdown call escalates (warm → soft → hard). The
// package never calls os.Exit.
package worker

// Package daemon is stem's process toolkit: pidfiles, process identity,
// signalling, sd_notify, and the `stem worker multi` supervisor. It never
// needs the broker.
//
// # Pidfiles
//
// A pidfile holds one line, the PID in decimal, so that other tools
// (systemd's PIDFile=, start-stop-daemon, shell scripts) can read it. It
// is created exclusively and stays locked (flock(2), exclusive) for as long
// as its node runs:
//
//   - the file is first written under a temporary name, opened with
//     O_EXCL and locked, and then linked to its real name with link(2),
//     which fails if the name exists; so no reader ever sees a half-written
//     or unlocked pidfile of a running node;
//   - the lock lives on the open file description, which the node holds
//     (inherited as fd 3 from `multi start`, across exec from
//     `multi start --no-detach`, or opened itself by CreatePidfile); the
//     kernel drops it when the node dies, however it dies.
//
// Who writes the pidfile: `stem worker multi` does, for any command
// (STEM_WORKER_COMMAND may be a shell script that knows nothing of stem).
// It passes the locked descriptor to the child and names it in
// STEM_WORKER_PIDFILE_FD. A node that also writes its own pidfile
// (`stem worker run --pidfile`, through CreatePidfile) adopts the one multi
// wrote when it already names its PID, so both may be used together.
//
// # Identity
//
// Before any signal is sent, the process is identified: Inspect requires
// the pidfile to be locked and the process to have started no later than
// the pidfile was written (start time from /proc/<pid>/stat, converted to
// wall time with /proc/stat's btime, with StartSlack for clock steps). An
// unlocked pidfile naming a live process is a reused PID: the node that
// wrote it is gone. Signal then re-checks the start time through a pidfd,
// so a PID recycled in between is never signalled. Liveness follows
// kill(pid, 0): EPERM (another user's process) is alive, ESRCH and zombies
// are dead. The proc root is a parameter (Proc.Root) so tests use
// fixtures.
//
// # sd_notify
//
// Notifier wraps go-systemd's SdNotify, always with unsetEnvironment=false,
// and ChildEnv strips NOTIFY_SOCKET and WATCHDOG_* from children's
// environments.
//
// # multi
//
// Supervisor.Start launches a node detached (own session, output appended
// to its logfile); Exec runs one node in the foreground by exec(2), so it
// keeps the PID a supervisor started and signals and exit codes need no
// forwarding; Stop sends SIGTERM, waits, then SIGKILL; Status maps a
// node's state to an LSB code (State.LSBCode).
package daemon

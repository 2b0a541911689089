// Package daemon is stem's process toolkit: pidfiles, process identity,
// signalling, sd_notify, and the `stem worker multi` supervisor. It never
// needs the broker.
//
// # Pidfiles
//
// A pidfile holds the PID in decimal on its first line, so that other
// tools (systemd's PIDFile=, start-stop-daemon, head -n1) can read it. It
// is created exclusively, mode 0640 (package fileperm), and stays locked (flock(2), exclusive) for as long
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
// Below the PID, a pidfile records the process's start time (clock ticks
// since boot), the boot id and the program started (device and inode of
// the file execve runs: the command, or a script's interpreter). A pidfile
// of the old one-line format is still read.
//
// # Identity
//
// A pidfile names a stem worker or nothing: the pid directory may be
// writable by the service user, whose task code could plant a pidfile there
// naming any process and hold it locked. Before any signal, and before
// status or healthcheck report a node running, Inspect checks (see its
// doc): the pidfile and its directory belong to this user or root and are
// not writable by group or others, and the pidfile is not a symlink
// (CheckPath); it is locked; the process it names holds that lock itself
// (HoldsLock); and the process has the recorded start time, boot id and
// program. A pidfile failing the ownership, holder or identity checks is
// Refused (RefusedError): neither signalled nor removed.
//
// Why the holder check reads /proc/<pid>/fdinfo. stem locks pidfiles with
// flock(2): the lock belongs to an open file description, which the node
// inherits from multi (fd 3) or keeps across exec, so it outlives multi
// and dies with the node. That rules out traditional POSIX (fcntl) locks,
// which belong to a process and are not inherited by a child. And the
// holder PID the kernel shows is useless here: in /proc/locks a flock's PID
// is the process that took the lock (multi, long gone), an OFD lock's is
// -1 on many kernels, and F_OFD_GETLK reports l_pid -1 (only F_GETLK on a
// POSIX lock gives a real PID). What does identify the holder is
// /proc/<pid>/fdinfo/<fd>: the kernel lists a lock there only when it
// belongs to that descriptor's open file description. So HoldsLock looks
// for a descriptor of the named process that refers to the pidfile's inode
// and whose fdinfo shows the FLOCK write lock. An attacker can lock a file
// but cannot make an unrelated process hold a descriptor to it.
//
// A PID is recycled only after its process is gone, and a gone node's lock
// is released, so an unlocked pidfile naming a live process is a reused PID
// (Reused, stale: removed, never signalled). Signal then re-checks the
// start time through a pidfd, so a PID recycled in between is never
// signalled. Liveness follows kill(pid, 0): EPERM (another user's process)
// is alive, ESRCH and zombies are dead. The proc root is a parameter
// (Proc.Root) so tests use fixtures.
package daemon

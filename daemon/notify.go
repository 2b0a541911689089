package daemon

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends sd_notify(3) messages to the service manager. Every method
// is safe for concurrent use, and does nothing (returning nil) when the
// process was not started by systemd with Type=notify (NOTIFY_SOCKET
// unset).
//
// It always calls go-systemd's SdNotify with unsetEnvironment=false:
// passing true would unset NOTIFY_SOCKET after the first message and make
// every later one (STATUS=, WATCHDOG=1, STOPPING=1) silently vanish.
// Children must still not inherit the socket: build their environment with
// ChildEnv.
type Notifier struct {
	mu   sync.Mutex
	send func(state string) (bool, error)
	wd   func() (time.Duration, error)
}

// NewNotifier returns a Notifier for the process's NOTIFY_SOCKET and
// WATCHDOG_USEC/WATCHDOG_PID.
func NewNotifier() *Notifier {
	return &Notifier{
		send: func(state string) (bool, error) { return sd.SdNotify(false, state) },
		wd:   func() (time.Duration, error) { return sd.SdWatchdogEnabled(false) },
	}
}

// Notify sends one raw message ("KEY=value" lines). It reports whether the
// message was sent: false with a nil error means "not under systemd".
func (n *Notifier) Notify(state string) (bool, error) {
	if n == nil {
		return false, nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	sent, err := n.send(state)
	if err != nil {
		line, _, _ := strings.Cut(state, "\n")
		return sent, fmt.Errorf("sd_notify %q: %w", line, err)
	}
	return sent, nil
}

func (n *Notifier) notify(state string) error {
	_, err := n.Notify(state)
	return err
}

// Ready sends READY=1: startup is finished. Call it only once the worker
// really serves (broker connected, consumers and control subscriptions
// live).
func (n *Notifier) Ready() error { return n.notify(sd.SdNotifyReady) }

// ReadyStatus sends READY=1 and STATUS=status in one message.
func (n *Notifier) ReadyStatus(status string) error {
	return n.notify(sd.SdNotifyReady + "\nSTATUS=" + oneLineStatus(status))
}

// Status sends STATUS=s, the line `systemctl status` shows. Newlines in s
// are replaced by "; ", since the protocol is line-based.
func (n *Notifier) Status(s string) error { return n.notify("STATUS=" + oneLineStatus(s)) }

func oneLineStatus(s string) string {
	return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ")
}

// Stopping sends STOPPING=1: a shutdown has begun.
func (n *Notifier) Stopping() error { return n.notify(sd.SdNotifyStopping) }

// ExtendTimeout sends EXTEND_TIMEOUT_USEC=d: the current start, stop or
// reload step needs d more time (send it again before d runs out, while a
// drain goes on). A d below one microsecond is sent as 1.
func (n *Notifier) ExtendTimeout(d time.Duration) error {
	us := max(d.Microseconds(), 1)
	return n.notify("EXTEND_TIMEOUT_USEC=" + strconv.FormatInt(us, 10))
}

// Watchdog sends WATCHDOG=1: the main loop is alive.
func (n *Notifier) Watchdog() error { return n.notify(sd.SdNotifyWatchdog) }

// WatchdogInterval returns the service's watchdog interval (WatchdogSec=),
// or 0 when the watchdog is off or meant for another PID. Send Watchdog at
// half this interval.
func (n *Notifier) WatchdogInterval() (time.Duration, error) {
	if n == nil {
		return 0, nil
	}
	d, err := n.wd()
	if err != nil {
		return 0, fmt.Errorf("reading the watchdog settings: %w", err)
	}
	return d, nil
}

// RunWatchdog sends WATCHDOG=1 every half watchdog interval until ctx is
// done, but only while alive reports true: a main loop that stopped making
// progress stops the pings, and systemd then restarts the service. It
// returns at once when the watchdog is off. Errors from individual pings
// are passed to onErr (if not nil) and do not stop the loop.
func (n *Notifier) RunWatchdog(ctx context.Context, alive func() bool, onErr func(error)) error {
	interval, err := n.WatchdogInterval()
	if err != nil || interval <= 0 {
		return err
	}
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if alive != nil && !alive() {
				continue
			}
			if err := n.Watchdog(); err != nil && onErr != nil {
				onErr(err)
			}
		}
	}
}

// serviceManagerVars are the variables through which systemd talks to the
// one process it started; a child that inherited them could send READY=1
// or watchdog pings on the parent's behalf, or claim its sockets.
var serviceManagerVars = []string{"NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"}

// ChildEnv returns env ("KEY=value" entries, as os.Environ gives them)
// without the variables systemd meant for this process only:
// NOTIFY_SOCKET, WATCHDOG_PID, WATCHDOG_USEC and the socket-activation
// LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES. env is not modified.
func ChildEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if key, _, _ := strings.Cut(kv, "="); !slices.Contains(serviceManagerVars, key) {
			out = append(out, kv)
		}
	}
	return out
}

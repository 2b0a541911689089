package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/stemhq/stem/config"
	"github.com/stemhq/stem/daemon"
	"github.com/stemhq/stem/worker"
)

// serviceNotifier tells systemd (Type=notify) how the worker is doing:
//
//   - READY=1 once the worker consumes (broker connected, first claim
//     answered, services running), with the first STATUS= line;
//   - STATUS= every statusEvery, e.g. "ready: 3/8 busy; queues default,critical";
//   - STOPPING=1 when a shutdown begins, then STATUS= "draining: ..." and
//     EXTEND_TIMEOUT_USEC= every few seconds while tasks drain, for at most
//     the shutdown grace period plus 30 s (after that systemd's own
//     TimeoutStopSec= applies);
//   - WATCHDOG=1 every half WatchdogSec=, only while worker.Alive() is nil.
//
// Outside systemd (no NOTIFY_SOCKET) every call is a cheap no-op.
type serviceNotifier struct {
	n           *daemon.Notifier
	w           *worker.Worker
	c           config.Config
	log         logrus.FieldLogger
	statusEvery time.Duration
}

func newServiceNotifier(n *daemon.Notifier, w *worker.Worker, c config.Config, log logrus.FieldLogger) *serviceNotifier {
	return &serviceNotifier{n: n, w: w, c: c, log: log, statusEvery: 2 * time.Second}
}

// status is the one-line STATUS= text.
func (s *serviceNotifier) status(prefix string) string {
	st := s.w.Stats()
	return fmt.Sprintf("%s: %d/%d busy; queues %s", prefix, st.InFlight, st.ActiveConcurrency, strings.Join(s.c.Queues, ","))
}

func (s *serviceNotifier) warn(err error) {
	if err != nil {
		s.log.WithError(err).Warn("sd_notify failed")
	}
}

func (s *serviceNotifier) run(ctx context.Context, tasks int) {
	select {
	case <-s.w.Ready():
	case <-s.w.Stopping():
	case <-ctx.Done():
		return
	}
	s.log.WithField("tasks", tasks).Info("worker ready")
	s.warn(s.n.ReadyStatus(s.status("ready")))
	go func() {
		_ = s.n.RunWatchdog(ctx, func() bool {
			if err := s.w.Alive(); err != nil {
				s.log.WithError(err).Error("main loop not alive; withholding the watchdog ping")
				return false
			}
			return true
		}, func(err error) { s.warn(err) })
	}()
	t := time.NewTicker(s.statusEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.w.Stopping():
			s.drain(ctx)
			return
		case <-t.C:
			s.warn(s.n.Status(s.status("ready")))
		}
	}
}

func (s *serviceNotifier) drain(ctx context.Context) {
	s.warn(s.n.Stopping())
	const step = 5 * time.Second
	limit := time.Now().Add(s.c.ShutdownGrace + 30*time.Second)
	t := time.NewTicker(step)
	defer t.Stop()
	for {
		s.warn(s.n.Status(s.status("draining")))
		if time.Now().Before(limit) {
			s.warn(s.n.ExtendTimeout(3 * step))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

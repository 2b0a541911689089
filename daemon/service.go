package daemon

import (
	"context"
	"time"

	"github.com/sirupsen/logrus"
)

// Service is what ServiceNotifier watches: a node's main loop.
type Service interface {
	// Ready is closed once the service does its work.
	Ready() <-chan struct{}
	// Stopping is closed when a shutdown begins.
	Stopping() <-chan struct{}
	// Alive is nil while the main loop makes progress.
	Alive() error
}

// ServiceNotifier tells systemd (Type=notify) how a service is doing:
//
//   - READY=1 once the service is ready, with the first STATUS= line;
//   - STATUS= every StatusEvery, e.g. "ready: 3/8 busy; queues default,critical";
//   - STOPPING=1 when a shutdown begins, then STATUS= "draining: ..." and
//     EXTEND_TIMEOUT_USEC= every few seconds while it drains, for at most
//     Grace plus 30 s (after that systemd's own TimeoutStopSec= applies);
//   - WATCHDOG=1 every half WatchdogSec=, only while Alive() is nil.
//
// Outside systemd (no NOTIFY_SOCKET) every call is a cheap no-op.
type ServiceNotifier struct {
	N       *Notifier
	Service Service
	// Status is the STATUS= text after prefix ("ready", "draining").
	Status func(prefix string) string
	// Grace is the shutdown grace period of the service.
	Grace       time.Duration
	StatusEvery time.Duration
	Log         logrus.FieldLogger
	// ReadyFields are logged with "worker ready".
	ReadyFields logrus.Fields
}

func (s *ServiceNotifier) warn(err error) {
	if err != nil {
		s.Log.WithError(err).Warn("sd_notify failed")
	}
}

// Run notifies until ctx ends, or the service has stopped draining.
func (s *ServiceNotifier) Run(ctx context.Context) {
	select {
	case <-s.Service.Ready():
	case <-s.Service.Stopping():
	case <-ctx.Done():
		return
	}
	s.Log.WithFields(s.ReadyFields).Info("worker ready")
	s.warn(s.N.ReadyStatus(s.Status("ready")))
	go func() {
		_ = s.N.RunWatchdog(ctx, func() bool {
			if err := s.Service.Alive(); err != nil {
				s.Log.WithError(err).Error("main loop not alive; withholding the watchdog ping")
				return false
			}
			return true
		}, func(err error) { s.warn(err) })
	}()
	every := s.StatusEvery
	if every <= 0 {
		every = 2 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.Service.Stopping():
			s.drain(ctx)
			return
		case <-t.C:
			s.warn(s.N.Status(s.Status("ready")))
		}
	}
}

func (s *ServiceNotifier) drain(ctx context.Context) {
	s.warn(s.N.Stopping())
	const step = 5 * time.Second
	limit := time.Now().Add(s.Grace + 30*time.Second)
	t := time.NewTicker(step)
	defer t.Stop()
	for {
		s.warn(s.N.Status(s.Status("draining")))
		if time.Now().Before(limit) {
			s.warn(s.N.ExtendTimeout(3 * step))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

package worker

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// AutoscaleConfig moves a worker's concurrency between Min and Max.
//
// Every Tick the autoscaler reads the backlog — tasks ready in the
// worker's (unpaused) queues, from the broker's PendingCount, plus tasks
// this worker claimed that wait for a slot — and the in-flight count:
//
//   - backlog > 0 and every slot busy: grow by ScaleUpStep (at most Max),
//     at most once per UpCooldown;
//   - no backlog and free slots for IdlePeriod: shrink by ScaleDownStep (at
//     least Min), at most once per DownCooldown. Shrinking lets running
//     tasks finish; it only holds back new starts, and idle isolation
//     children above the new size are stopped.
//
// Prefetched tasks alone never drive the decision (Celery's autoscaler,
// which counts them, never grows with prefetch 1): the queue's depth does.
type AutoscaleConfig struct {
	Enabled       bool
	Min, Max      int
	ScaleUpStep   int
	ScaleDownStep int
	IdlePeriod    time.Duration
	Tick          time.Duration
	UpCooldown    time.Duration
	DownCooldown  time.Duration
}

// WithDefaults fills unset fields; concurrency is the worker's configured
// concurrency, the default Max.
func (c AutoscaleConfig) WithDefaults(concurrency int) AutoscaleConfig {
	// Zero only: Validate refuses negative values.
	ifZero(&c.Max, max(concurrency, 1))
	ifZero(&c.Min, 1)
	ifZero(&c.ScaleUpStep, 1)
	ifZero(&c.ScaleDownStep, 1)
	ifZero(&c.IdlePeriod, 30*time.Second)
	ifZero(&c.Tick, time.Second)
	ifZero(&c.DownCooldown, c.IdlePeriod)
	return c
}

// Validate reports impossible bounds, steps and periods.
func (c AutoscaleConfig) Validate() error {
	switch {
	case c.Min < 1:
		return fmt.Errorf("autoscale: min concurrency %d must be at least 1", c.Min)
	case c.Max < c.Min:
		return fmt.Errorf("autoscale: min concurrency %d is greater than max %d", c.Min, c.Max)
	case c.ScaleUpStep < 1 || c.ScaleDownStep < 1:
		return fmt.Errorf("autoscale: steps must be at least 1 (up %d, down %d)", c.ScaleUpStep, c.ScaleDownStep)
	case c.Tick <= 0:
		return fmt.Errorf("autoscale: tick %s must be positive", c.Tick)
	case c.IdlePeriod <= 0:
		return fmt.Errorf("autoscale: idle period %s must be positive", c.IdlePeriod)
	case c.UpCooldown < 0 || c.DownCooldown < 0:
		return fmt.Errorf("autoscale: cooldowns must not be negative (up %s, down %s)", c.UpCooldown, c.DownCooldown)
	}
	return nil
}

type autoscaler struct {
	w *Worker

	mu        sync.Mutex
	cfg       AutoscaleConfig
	lastUp    time.Time
	lastDown  time.Time
	idleSince time.Time
}

func newAutoscaler(cfg AutoscaleConfig, w *Worker) *autoscaler {
	return &autoscaler{cfg: cfg, w: w}
}

func (a *autoscaler) config() AutoscaleConfig {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg
}

// setBounds changes Min and Max at run time and clamps the concurrency.
func (a *autoscaler) setBounds(minC, maxC int) error {
	// a.mu is held through the resize, so a concurrent step cannot apply a
	// decision made under the old bounds afterwards (lock order: a.mu,
	// then the outstanding set's inside resize).
	a.mu.Lock()
	defer a.mu.Unlock()
	next := a.cfg
	next.Min, next.Max = minC, maxC
	if err := next.Validate(); err != nil {
		return err
	}
	a.cfg = next
	_, limit := a.w.slots.stats()
	if limit < minC || limit > maxC {
		a.w.resize(min(max(limit, minC), maxC), "bounds changed")
	}
	return nil
}

func (a *autoscaler) run(ctx context.Context) {
	if !a.config().Enabled {
		return
	}
	every(ctx, a.config().Tick, func() { a.step(ctx, a.w.cfg.Now()) })
}

// step makes one decision at now and returns the concurrency after it.
func (a *autoscaler) step(ctx context.Context, now time.Time) int {
	held, limit := a.w.slots.stats()
	backlog := int64(0)
	for _, q := range a.w.activeQueues() {
		qctx, cancel := context.WithTimeout(ctx, a.config().Tick)
		n, err := a.w.cfg.Broker.PendingCount(qctx, q)
		cancel()
		if err != nil {
			a.w.log.WithError(err).Debug("autoscale: pending count failed; no decision this tick")
			return limit
		}
		backlog += n
	}
	if waiting := a.w.out.len() - held; waiting > 0 {
		backlog += int64(waiting)
	}
	a.mu.Lock()
	cfg := a.cfg
	next := limit
	switch {
	case backlog > 0 && held >= limit:
		a.idleSince = time.Time{}
		if limit < cfg.Max && (a.lastUp.IsZero() || now.Sub(a.lastUp) >= cfg.UpCooldown) {
			next = min(cfg.Max, limit+cfg.ScaleUpStep)
			a.lastUp = now
		}
	case backlog == 0 && held < limit:
		if a.idleSince.IsZero() {
			a.idleSince = now
		}
		if now.Sub(a.idleSince) >= cfg.IdlePeriod && limit > cfg.Min && (a.lastDown.IsZero() || now.Sub(a.lastDown) >= cfg.DownCooldown) {
			next = max(cfg.Min, limit-cfg.ScaleDownStep)
			a.lastDown = now
		}
	default:
		a.idleSince = time.Time{}
	}
	if next != limit {
		a.w.resize(min(max(next, cfg.Min), cfg.Max), fmt.Sprintf("backlog %d, in flight %d", backlog, held))
	}
	a.mu.Unlock()
	return next
}

// resize sets the concurrency, logs why, and wakes the fetcher.
func (w *Worker) resize(n int, why string) {
	_, old := w.slots.stats()
	w.slots.setLimit(n)
	w.out.wake()
	if n != old {
		w.log.WithFields(logrus.Fields{"from": old, "to": n, "why": why}).Info("concurrency changed")
	}
}

package worker

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/stemhq/stem/broker"
	"github.com/stemhq/stem/control"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/logging"
	"github.com/stemhq/stem/registry"
	"github.com/stemhq/stem/result"
)

// Config configures a Worker.
type Config struct {
	Broker   broker.Broker
	Results  result.Backend
	Registry registry.Registry // optional
	Handlers *Registry

	// Node and Hostname make the worker id "<node>@<hostname>".
	Node      string
	Hostname  string
	Namespace string
	Queues    []string
	// Concurrency is the most handlers running at once.
	Concurrency int
	// Prefetch is how many deliveries may be claimed beyond the free
	// slots. 0 claims only for free slots.
	Prefetch int
	// Lease is the visibility timeout of each claim (renewed while running).
	Lease time.Duration
	// MaxBatch caps one claim and one completer flush.
	MaxBatch int
	// ClaimWait is how long an idle claim blocks waiting for work.
	ClaimWait time.Duration
	// Heartbeat is the registry refresh interval (TTL is three of them).
	Heartbeat time.Duration
	// ShutdownGrace is how long soft shutdown waits before going hard.
	ShutdownGrace time.Duration
	// HardWait is how long hard shutdown waits for cancelled handlers.
	HardWait time.Duration
	// Logger receives the worker's log lines.
	Logger logrus.FieldLogger
	// Now is the clock (tests); time.Now by default.
	Now func() time.Time
	// Version is reported in the registry.
	Version string

	// Control plane (all optional; see control_dispatch.go). Namespace is also the
	// control namespace.
	Control    broker.ControlTransport
	Pauses     broker.PauseStore
	Revokes    revoke.Store
	RevokeSync time.Duration // re-read Revokes and Pauses this often (default 30s)
	SigningKey []byte        // refuse control requests not signed with it
	Broadcasts []string      // broadcast channels subscribed (reported in stats)

	// Isolation configures the child processes of isolated handlers.
	Isolation IsolationConfig
	// Autoscale, when Enabled, moves the concurrency between its bounds.
	Autoscale AutoscaleConfig
	// Metrics, when set, receives the worker's metrics.
	Metrics *Metrics

	// UnknownTaskTTL is how long a task whose name no handler of this
	// worker knows is handed back (with backoff, no attempt counted) for a
	// worker that knows it, before it is dead-lettered with the reason
	// "unknown task" (default 1h; see unknown.go).
	UnknownTaskTTL time.Duration

	// Control-plane bounds and start-up (see storesync.go; zero: defaults).
	MaxAge           time.Duration // signed requests further than this from now are refused (control.DefaultMaxAge)
	RevokeMaxEntries int           // revokes kept per namespace, newest first (revoke.DefaultMaxEntries)
	ControlRetry     time.Duration // first backoff of the start-up read of the stores (100ms, doubling to 10s)
	RevokeStoreURL   string        // named (password redacted) when the revoke store cannot be read
	PauseStoreURL    string        // likewise for the pause store
}

// WithDefaults fills unset fields.
func (c Config) WithDefaults() Config {
	if c.Hostname == "" {
		c.Hostname, _ = os.Hostname()
	}
	if len(c.Queues) == 0 {
		c.Queues = []string{"default"}
	}
	orDefault(&c.Node, "worker")
	orDefault(&c.Namespace, "stem")
	orDefault(&c.Concurrency, 1)
	c.Prefetch = max(c.Prefetch, 0)
	orDefault(&c.Lease, 30*time.Second)
	orDefault(&c.MaxBatch, 256)
	orDefault(&c.ClaimWait, time.Second)
	if c.Lease > 0 && c.ClaimWait > c.Lease/4 {
		// A claim that waited counts its leases from when it was sent
		// (lease.go): a long wait under a short lease would leave little
		// of the lease the worker can prove.
		c.ClaimWait = max(c.Lease/4, time.Millisecond)
	}
	orDefault(&c.Heartbeat, 5*time.Second)
	orDefault(&c.ShutdownGrace, 30*time.Second)
	orDefault(&c.HardWait, time.Second)
	orDefault(&c.RevokeSync, 30*time.Second)
	orDefault(&c.UnknownTaskTTL, time.Hour)
	orDefault(&c.MaxAge, control.DefaultMaxAge)
	orDefault(&c.RevokeMaxEntries, revoke.DefaultMaxEntries)
	orDefault(&c.ControlRetry, 100*time.Millisecond)
	if c.Logger == nil {
		c.Logger = logging.Discard()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Handlers == nil {
		c.Handlers = NewRegistry()
	}
	c.Isolation = c.Isolation.WithDefaults()
	c.Autoscale = c.Autoscale.WithDefaults(c.Concurrency)
	return c
}

// orDefault sets *p to d when it is zero or negative (unset).
func orDefault[T cmp.Ordered](p *T, d T) {
	var zero T
	if *p <= zero {
		*p = d
	}
}

// ifZero sets *p to d when it is the zero value.
func ifZero[T comparable](p *T, d T) {
	var zero T
	if *p == zero {
		*p = d
	}
}

// Validate reports a configuration the worker cannot run with.
func (c Config) Validate() error {
	switch {
	case c.Broker == nil:
		return errors.New("worker: no broker")
	case c.Results == nil:
		return errors.New("worker: no result backend")
	case c.Lease < 100*time.Millisecond:
		return fmt.Errorf("worker: lease %s is too short (minimum 100ms)", c.Lease)
	}
	if err := c.Isolation.Validate(); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	if err := c.Autoscale.Validate(); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	return nil
}

// ID returns "<node>@<hostname>".
func (c Config) ID() string { return c.Node + "@" + c.Hostname }

// Worker runs tasks. Create it with New, start it with Run. Its parts are
// listed in doc.go, a file each.
type Worker struct {
	cfg   Config
	log   logrus.FieldLogger
	id    string
	debug bool // debug lines are wanted (checked once: the hot path skips building them)

	startedAt time.Time
	counters  struct{ processed, succeeded, failed, retried, revoked, leasesLost atomic.Int64 }
	monoBase  time.Time // origin of the monotonic clock of local lease deadlines (lease.go)

	out        *outstanding   // claimed, not yet settled (dispatcher.go)
	slots      *slots         // running handlers (dispatcher.go)
	queue      chan *run      // claimed, waiting for a slot: fetcher → dispatcher
	running    sync.WaitGroup // handlers running (executor.go)
	comp       *completer     // completer.go
	pool       *pool          // isolation children (isolate.go)
	metrics    *Metrics
	scaler     *autoscaler
	claimSince atomic.Int64 // when the fetcher entered Claim (unix nanos), 0 outside; for Alive

	// Lifecycle (lifecycle.go).
	shutdownMu sync.Mutex
	mode       Mode
	modeCh     chan Mode     // wakes the shutdown sequence
	hard       chan struct{} // closed when the mode becomes Hard
	started    atomic.Bool
	ready      chan struct{}
	stoppingCh chan struct{}

	revokes revokeCache  // revokecache.go
	pauses  pauseState   // pauses.go
	replay  replayWindow // control_dispatch.go

	unknownMu     sync.Mutex
	unknownLogged map[string]time.Time // rate-limits the hand-back log of unknown names
}

// New validates cfg and returns a Worker.
func New(cfg Config) (*Worker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	capacity := cfg.Concurrency + cfg.Prefetch
	w := &Worker{
		cfg:        cfg,
		id:         cfg.ID(),
		out:        newOutstanding(capacity),
		slots:      newSlots(cfg.Concurrency),
		queue:      make(chan *run, capacity+cfg.MaxBatch),
		modeCh:     make(chan Mode, 4),
		hard:       make(chan struct{}),
		ready:      make(chan struct{}),
		stoppingCh: make(chan struct{}),

		revokes:       revokeCache{entries: map[string]revoke.Entry{}, logged: map[string]bool{}},
		replay:        replayWindow{seen: map[string]time.Time{}},
		unknownLogged: map[string]time.Time{},
	}
	w.comp = &completer{w: w, ch: make(chan finish, 4*(capacity+cfg.MaxBatch)), stop: w.hard, base: 50 * time.Millisecond, max: 5 * time.Second}
	w.pauses.queues.Store(&map[string]bool{})
	w.startedAt = cfg.Now() // set once, before anything (a metrics scrape) can read it
	w.monoBase = time.Now()
	w.metrics = cfg.Metrics
	if w.metrics == nil {
		w.metrics = NewMetrics()
	}
	w.metrics.bind(w)
	w.log = cfg.Logger.WithField(logging.FieldWorker, w.id)
	w.pool = newPool(cfg.Isolation, w)
	w.scaler = newAutoscaler(cfg.Autoscale, w)
	if cfg.Autoscale.Enabled {
		w.slots.setLimit(cfg.Autoscale.Min)
	}
	if l, ok := cfg.Logger.(interface{ IsLevelEnabled(logrus.Level) bool }); ok {
		w.debug = l.IsLevelEnabled(logrus.DebugLevel)
	}
	return w, nil
}

// ID returns the worker id.
func (w *Worker) ID() string { return w.id }

// Stats is a snapshot of the worker.
type Stats struct {
	ID                string           `json:"id"`
	InFlight          int              `json:"inFlight"`
	Outstanding       int              `json:"outstanding"`
	ActiveConcurrency int              `json:"activeConcurrency"`
	Prefetch          int              `json:"prefetch"`
	StartedAt         time.Time        `json:"startedAt"`
	Counters          control.Counters `json:"counters"`
}

// Stats returns a snapshot of the worker.
func (w *Worker) Stats() Stats {
	held, limit := w.slots.stats()
	return Stats{
		ID: w.id, InFlight: held, Outstanding: w.out.len(), ActiveConcurrency: limit,
		Prefetch: w.cfg.Prefetch, StartedAt: w.startedAt, Counters: w.Counters(),
	}
}

// Counters returns the cumulative task counts.
func (w *Worker) Counters() control.Counters {
	return control.Counters{
		Processed:  w.counters.processed.Load(),
		Succeeded:  w.counters.succeeded.Load(),
		Failed:     w.counters.failed.Load(),
		Retried:    w.counters.retried.Load(),
		Revoked:    w.counters.revoked.Load(),
		LeasesLost: w.counters.leasesLost.Load(),
	}
}

// SetConcurrency changes how many handlers may run at once, at run time.
// Shrinking lets running tasks finish; it only holds back new starts.
func (w *Worker) SetConcurrency(n int) error {
	if n < 1 {
		return fmt.Errorf("concurrency %d must be at least 1", n)
	}
	w.slots.setLimit(n)
	w.out.wake()
	return nil
}

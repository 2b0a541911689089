// Package worker is stem's runtime: it claims deliveries from a broker in
// batches, runs them with bounded concurrency, records their states in a
// result backend, retries failures with exponential backoff and jitter,
// renews leases of long tasks, and keeps a heartbeat in the worker registry.
//
// # Components
//
// A Worker is a handful of small services around two counters:
//
//   - outstanding: deliveries claimed and not yet settled (acked or handed
//     back). The fetcher never lets it exceed Concurrency+Prefetch, so
//     prefetched work is bounded too.
//   - slots: running handlers. Never more than the current concurrency.
//
// The fetcher claims up to the free outstanding capacity (at most MaxBatch)
// in one broker round trip and queues the deliveries; the dispatcher takes a
// slot for each and starts its handler; every outcome (and every "started"
// event) goes to the finisher, which gathers whatever has arrived, writes
// the task states in one batch (coalescing a task's "started" with its final
// state when both are pending), then acks or nacks the deliveries in one
// batch, and only then frees their outstanding capacity. Under light load a
// batch is one task and latency is a round trip; under heavy load batches
// grow by themselves. The lease keeper (lease.go) renews every outstanding
// lease (prefetched ones too) at half the lease and fences a task whose
// renewal it cannot confirm in time, so that it stops before another
// worker may claim it; the heartbeater refreshes the registry record.
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
//  4. the finisher flushes every pending state, ack and nack;
//  5. the lease renewer and heartbeater stop, and the registry record is
//     removed.
//
// A later, stronger Shutdown call escalates (warm → soft → hard). The
// package never calls os.Exit.
package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime/debug"
	"strings"
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
	"github.com/stemhq/stem/stemerr"
)

// Mode is a shutdown mode.
type Mode int

// Shutdown modes, in order of strength.
const (
	// Warm stops fetching and lets in-flight tasks finish.
	Warm Mode = iota + 1
	// Soft cancels in-flight tasks and escalates to Hard after the grace
	// period.
	Soft
	// Hard hands in-flight deliveries back without counting an attempt.
	Hard
)

func (m Mode) String() string {
	switch m {
	case Warm:
		return "warm"
	case Soft:
		return "soft"
	case Hard:
		return "hard"
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// ParseMode parses "warm", "soft" or "hard".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "warm":
		return Warm, nil
	case "soft":
		return Soft, nil
	case "hard":
		return Hard, nil
	}
	return 0, fmt.Errorf("unknown shutdown mode %q (want warm, soft or hard)", s)
}

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
	// MaxBatch caps one claim and one finisher flush.
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

	// Control plane (all optional; see control.go). Namespace is also the
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

	// Control-plane bounds and start-up (see control.go; zero: defaults).
	MaxAge           time.Duration // signed requests further than this from now are refused (control.DefaultMaxAge)
	RevokeMaxEntries int           // revokes kept per namespace, newest first (revoke.DefaultMaxEntries)
	ControlRetry     time.Duration // first backoff of the start-up read of the stores (100ms, doubling to 10s)
	RevokeStoreURL   string        // named (password redacted) when the revoke store cannot be read
	PauseStoreURL    string        // likewise for the pause store
}

// WithDefaults fills unset fields.
func (c Config) WithDefaults() Config {
	if c.Node == "" {
		c.Node = "worker"
	}
	if c.Hostname == "" {
		c.Hostname, _ = os.Hostname()
	}
	if c.Namespace == "" {
		c.Namespace = "stem"
	}
	if len(c.Queues) == 0 {
		c.Queues = []string{"default"}
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 1
	}
	if c.Prefetch < 0 {
		c.Prefetch = 0
	}
	if c.Lease <= 0 {
		c.Lease = 30 * time.Second
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 256
	}
	if c.ClaimWait <= 0 {
		c.ClaimWait = time.Second
	}
	if c.Lease > 0 && c.ClaimWait > c.Lease/4 {
		// A claim that waited counts its leases from when it was sent
		// (lease.go): a long wait under a short lease would leave little
		// of the lease the worker can prove.
		c.ClaimWait = max(c.Lease/4, time.Millisecond)
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 5 * time.Second
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = 30 * time.Second
	}
	if c.HardWait <= 0 {
		c.HardWait = time.Second
	}
	if c.Logger == nil {
		c.Logger = logging.Discard()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Handlers == nil {
		c.Handlers = NewRegistry()
	}
	if c.RevokeSync <= 0 {
		c.RevokeSync = 30 * time.Second
	}
	if c.UnknownTaskTTL <= 0 {
		c.UnknownTaskTTL = time.Hour
	}
	c.Isolation = c.Isolation.WithDefaults()
	c.Autoscale = c.Autoscale.WithDefaults(c.Concurrency)
	return c
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

// Worker runs tasks. Create it with New, start it with Run.
type Worker struct {
	cfg   Config
	log   logrus.FieldLogger
	id    string
	debug bool // debug lines are wanted (checked once: the hot path skips building them)

	slots   *slots
	pool    *pool
	metrics *Metrics
	scaler  *autoscaler
	queue   chan *run   // claimed, waiting for a slot
	done    chan finish // to the finisher

	mu          sync.Mutex
	capCond     *sync.Cond
	outstanding map[string]*run // by delivery token
	stopping    bool

	startedAt time.Time
	counters  struct{ processed, succeeded, failed, retried, revoked, leasesLost atomic.Int64 }
	// monoBase is the origin of the monotonic clock of local lease
	// deadlines (see lease.go).
	monoBase time.Time

	shutdownMu sync.Mutex
	mode       Mode
	modeCh     chan Mode // wakes the shutdown sequence
	running    sync.WaitGroup
	started    atomic.Bool
	ready      chan struct{}
	stoppingCh chan struct{}

	rmu     sync.Mutex
	revokes map[string]revoke.Entry // by task id
	paused  atomic.Pointer[map[string]bool]

	// doneMu guards closing w.done against late senders (a handler that
	// returns just as a hard shutdown gives up on it).
	doneMu     sync.RWMutex
	doneClosed bool

	// unknownLogged rate-limits the hand-back log of unknown task names.
	unknownMu     sync.Mutex
	unknownLogged map[string]time.Time

	// claimSince is when the fetcher entered Claim (unix nanos), 0 while
	// it is not inside Claim; Alive uses it.
	claimSince atomic.Int64

	ctl controlState // replay window, ignored records, pause reasons (control.go)
}

// run is one outstanding delivery.
type run struct {
	d      broker.Delivery
	ctx    context.Context
	cancel context.CancelCauseFunc
	// state: 0 queued, 1 running, 2 settled (finished or handed back).
	state     atomic.Int32
	startedAt time.Time
	lastBeat  atomic.Int64 // unix nanos of the last checkpoint
	// progress is the last TaskContext.Progress value (math.Float64bits).
	progress atomic.Uint64
	// deadline is the lease deadline this worker can prove, on its
	// monotonic clock (Worker.mono): the send time of the last confirmed
	// claim or renewal plus the duration granted (lease.go). d stays
	// immutable so it can be read without the lock.
	deadline atomic.Int64
	// lost is set when the lease is fenced: not renewed in time, or
	// reported taken by the broker. A lost run never starts.
	lost atomic.Bool
	// lostCh is closed when lost is set. A task whose context was already
	// cancelled for another reason (shutdown, revoke, time limit) and that
	// waits out a grace period watches it to be killed at once.
	lostCh chan struct{}
}

// newRun returns the run of delivery d, whose handler context is ctx.
func newRun(d broker.Delivery, ctx context.Context, cancel context.CancelCauseFunc) *run {
	return &run{d: d, ctx: ctx, cancel: cancel, lostCh: make(chan struct{})}
}

const (
	runQueued int32 = iota
	runRunning
	runSettled
)

// errShutdown is the cancel cause of tasks cancelled by soft/hard shutdown:
// they are handed back, not recorded as revoked.
var errShutdown = errors.New("worker shutting down")

// New validates cfg and returns a Worker.
func New(cfg Config) (*Worker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	capacity := cfg.Concurrency + cfg.Prefetch
	w := &Worker{
		cfg:         cfg,
		id:          cfg.ID(),
		slots:       newSlots(cfg.Concurrency),
		queue:       make(chan *run, capacity+cfg.MaxBatch),
		done:        make(chan finish, 4*(capacity+cfg.MaxBatch)),
		outstanding: make(map[string]*run, capacity),
		modeCh:      make(chan Mode, 4),
		ready:       make(chan struct{}),
		stoppingCh:  make(chan struct{}),
		revokes:     map[string]revoke.Entry{},
	}
	w.paused.Store(&map[string]bool{})
	w.capCond = sync.NewCond(&w.mu)
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

// Ready is closed once the worker consumes: its first claim succeeded (the
// broker answered) and its services run.
func (w *Worker) Ready() <-chan struct{} { return w.ready }

// Stopping is closed when a shutdown begins.
func (w *Worker) Stopping() <-chan struct{} { return w.stoppingCh }

// Shutdown asks the worker to stop in mode; a later call with a stronger
// mode escalates. It returns at once; Run returns when the worker stopped.
func (w *Worker) Shutdown(m Mode) {
	w.shutdownMu.Lock()
	defer w.shutdownMu.Unlock()
	if m <= w.mode {
		return
	}
	w.mode = m
	select {
	case w.modeCh <- m:
	default:
	}
}

func (w *Worker) currentMode() Mode {
	w.shutdownMu.Lock()
	defer w.shutdownMu.Unlock()
	return w.mode
}

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
	w.mu.Lock()
	out := len(w.outstanding)
	w.mu.Unlock()
	return Stats{
		ID: w.id, InFlight: held, Outstanding: out, ActiveConcurrency: limit,
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

// Run consumes until ctx ends (a warm shutdown) or Shutdown is called, then
// stops in the order documented on the package. It returns nil after a clean
// stop. Run may be called once.
func (w *Worker) Run(ctx context.Context) error {
	if !w.started.CompareAndSwap(false, true) {
		return errors.New("worker: Run called twice")
	}
	w.log.WithFields(logrus.Fields{"queues": w.cfg.Queues, "concurrency": w.cfg.Concurrency, "prefetch": w.cfg.Prefetch}).Info("worker starting")

	fetchCtx, stopFetch := context.WithCancel(context.Background())
	bgCtx, stopBg := context.WithCancel(context.Background())
	defer stopBg()
	defer stopFetch()

	// Revokes and pauses are loaded, and control requests subscribed,
	// before the first claim: a revoke issued while no worker ran is
	// honoured from the first task on. Until the stores are read nothing
	// is claimed and Ready stays open; a shutdown meanwhile returns nil.
	if !w.loadControlState(ctx) {
		return w.stopBeforeStart()
	}
	var ctlSub broker.Subscription
	if w.cfg.Control != nil {
		var err error
		if ctlSub, err = w.cfg.Control.SubscribeWorker(ctx, w.cfg.Namespace, w.id); err != nil {
			return fmt.Errorf("subscribe to control requests: %w", err)
		}
	}

	var fetchWG, dispatchWG, finishWG, bgWG sync.WaitGroup
	fetchWG.Add(1)
	go func() { defer fetchWG.Done(); w.fetch(fetchCtx) }()
	dispatchWG.Add(1)
	go func() { defer dispatchWG.Done(); w.dispatch() }()
	finishWG.Add(1)
	go func() { defer finishWG.Done(); w.finisher() }()
	bgWG.Add(4)
	go func() { defer bgWG.Done(); w.scaler.run(bgCtx) }()
	go func() { defer bgWG.Done(); w.keepLeases(bgCtx) }()
	go func() { defer bgWG.Done(); w.heartbeat(bgCtx) }()
	go func() { defer bgWG.Done(); w.resyncControlState(bgCtx) }()
	var ctlWG sync.WaitGroup
	if ctlSub != nil {
		ctlWG.Add(1)
		go func() { defer ctlWG.Done(); w.serveControl(ctlSub) }()
	}

	// Wait for a shutdown request.
	var mode Mode
	select {
	case <-ctx.Done():
		w.Shutdown(Warm)
		mode = w.currentMode()
	case mode = <-w.modeCh:
	}
	w.log.WithField(logging.FieldMode, mode.String()).Info("shutdown requested")
	close(w.stoppingCh)

	// 1. Stop fetching.
	w.mu.Lock()
	w.stopping = true
	w.capCond.Broadcast()
	w.mu.Unlock()
	stopFetch()
	w.slots.close() // a dispatcher waiting for a slot hands back instead
	fetchWG.Wait()
	close(w.queue) // the dispatcher hands back what is still queued (2.)
	dispatchWG.Wait()

	// 3. Running handlers.
	w.drainRunning(mode)

	// 4. Flush.
	w.doneMu.Lock()
	w.doneClosed = true
	close(w.done)
	w.doneMu.Unlock()
	finishWG.Wait()

	// 5. Background services (control answers until here, so operators
	// can ping and inspect a draining worker), and isolation children.
	w.pool.close()
	stopBg()
	bgWG.Wait()
	if ctlSub != nil {
		_ = ctlSub.Close()
		ctlWG.Wait()
	}
	if w.cfg.Registry != nil {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := w.cfg.Registry.Remove(rctx, w.cfg.Namespace, w.id); err != nil {
			w.log.WithError(err).Warn("could not remove the registry record")
		}
		cancel()
	}
	c := w.Counters()
	w.log.WithFields(logrus.Fields{"processed": c.Processed, "failed": c.Failed, "retried": c.Retried}).Info("worker stopped")
	return nil
}

// drainRunning waits for running handlers according to mode, escalating as
// further Shutdown calls arrive.
func (w *Worker) drainRunning(mode Mode) {
	allDone := make(chan struct{})
	go func() { w.running.Wait(); close(allDone) }()
	var grace <-chan time.Time
	for {
		switch mode {
		case Soft:
			w.cancelRunning(errShutdown)
			if grace == nil {
				t := time.NewTimer(w.cfg.ShutdownGrace)
				defer t.Stop()
				grace = t.C
			}
		case Hard:
			w.cancelRunning(errShutdown)
			t := time.NewTimer(w.cfg.HardWait)
			select {
			case <-allDone:
			case <-t.C:
				w.handBackRunning()
				w.pool.close() // kill isolated tasks' children now
			}
			t.Stop()
			return
		}
		select {
		case <-allDone:
			return
		case m := <-w.modeCh:
			w.log.WithField(logging.FieldMode, m.String()).Warn("shutdown escalated")
			mode = m
		case <-grace:
			w.log.WithField(logging.FieldDuration, w.cfg.ShutdownGrace.String()).Warn("soft shutdown grace period over; going hard")
			w.Shutdown(Hard)
			mode = Hard
		}
	}
}

func (w *Worker) cancelRunning(cause error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range w.outstanding {
		if r.state.Load() == runRunning {
			r.cancel(cause)
		}
	}
}

// handBackRunning requeues the deliveries of handlers that did not return
// in time. Their goroutines are abandoned: whatever they report later is
// ignored (state is already settled).
func (w *Worker) handBackRunning() {
	w.mu.Lock()
	var rs []*run
	for _, r := range w.outstanding {
		if r.state.CompareAndSwap(runRunning, runSettled) {
			rs = append(rs, r)
		}
	}
	w.mu.Unlock()
	for _, r := range rs {
		w.log.WithFields(logrus.Fields{logging.FieldTask: r.d.Envelope.ID, logging.FieldTaskName: r.d.Envelope.Name}).Warn("handler did not stop in time; handing the task back")
		w.done <- finish{run: r, action: broker.Requeue, slotHeld: true}
	}
}

// capacity is Concurrency+Prefetch, read under w.mu.
func (w *Worker) capacityLocked() int {
	_, limit := w.slots.stats()
	return limit + w.cfg.Prefetch
}

// fetch claims deliveries while there is outstanding capacity.
func (w *Worker) fetch(ctx context.Context) {
	backoff := newBackoff(100*time.Millisecond, 10*time.Second)
	readyOnce := sync.Once{}
	for {
		w.mu.Lock()
		for !w.stopping && len(w.outstanding) >= w.capacityLocked() {
			w.capCond.Wait()
		}
		if w.stopping {
			w.mu.Unlock()
			return
		}
		free := w.capacityLocked() - len(w.outstanding)
		w.mu.Unlock()
		if free > w.cfg.MaxBatch {
			free = w.cfg.MaxBatch
		}
		queues := w.activeQueues()
		if len(queues) == 0 {
			// Every queue is paused: claim nothing, look again soon.
			readyOnce.Do(func() { close(w.ready) })
			if !sleepCtx(ctx, min(w.cfg.ClaimWait, 250*time.Millisecond)) {
				return
			}
			continue
		}
		w.claimSince.Store(time.Now().UnixNano())
		sent := w.mono()
		ds, err := w.cfg.Broker.Claim(ctx, broker.ClaimParams{Queues: queues, Max: free, Lease: w.cfg.Lease, Wait: w.cfg.ClaimWait})
		w.claimSince.Store(0)
		if ctx.Err() != nil {
			// Deliveries claimed as we were cancelled are handed back.
			if len(ds) > 0 {
				w.requeueNow(ds)
			}
			return
		}
		if err != nil {
			d := backoff.next()
			w.log.WithError(err).WithField(logging.FieldDelay, d.String()).Warn("claim failed; retrying")
			if !sleepCtx(ctx, d) {
				return
			}
			continue
		}
		if backoff.failures > 0 {
			w.log.Info("broker reachable again")
		}
		backoff.reset()
		readyOnce.Do(func() { close(w.ready) })
		if len(ds) == 0 {
			continue
		}
		rs := make([]*run, len(ds))
		w.mu.Lock()
		for i, d := range ds {
			rctx, cancel := context.WithCancelCause(context.Background())
			r := newRun(d, rctx, cancel)
			// A claim that waited (ClaimWait) may have leased its tasks
			// at any moment after sent: sent is the safe lower bound.
			r.deadline.Store(int64(sent + w.cfg.Lease))
			w.outstanding[d.Token] = r
			rs[i] = r
		}
		w.mu.Unlock()
		for _, r := range rs {
			w.queue <- r
		}
	}
}

// requeueNow hands deliveries back that never became outstanding.
func (w *Worker) requeueNow(ds []broker.Delivery) {
	ns := make([]broker.Nack, len(ds))
	for i, d := range ds {
		ns[i] = broker.Nack{Delivery: d, Action: broker.Requeue}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.cfg.Broker.Nack(ctx, ns); err != nil {
		w.log.WithError(err).Warn("could not hand back claimed deliveries; they return when their lease expires")
	}
}

// dispatch starts a handler for each queued delivery as slots free up. When
// the queue is closed (shutdown), it hands back what was never started.
func (w *Worker) dispatch() {
	margin := fenceMargin(w.cfg.Lease)
	for r := range w.queue {
		if !r.lost.Load() && w.mono() >= time.Duration(r.deadline.Load())-margin {
			w.fence(r, "its lease ran out while it waited for a slot")
		}
		if r.lost.Load() {
			// Its lease ran out while it waited (redelivered elsewhere):
			// running it would run it twice.
			w.settleLost(r)
			continue
		}
		if e, ok := w.revokedEntry(r.d.Envelope.ID); ok {
			w.settleRevoked(r, e)
			continue
		}
		if _, known := w.cfg.Handlers.Lookup(r.d.Envelope.Name); !known {
			w.settleUnknown(r)
			continue
		}
		// A pause applies to what is claimed but not started too (a claim
		// in flight when the pause arrived): handed back, not run.
		if w.queuePaused(r.d.Envelope.Queue) {
			w.handBack(r)
			continue
		}
		if w.currentMode() != 0 || !w.slots.acquire() {
			w.handBack(r)
			continue
		}
		// A shutdown (or a pause of its queue) may have begun while this
		// waited for the slot: a task that has not started is handed back,
		// not started.
		if w.currentMode() != 0 || w.queuePaused(r.d.Envelope.Queue) {
			w.slots.release()
			w.handBack(r)
			continue
		}
		// Set before the task is seen running (inspect reads them then).
		now := w.cfg.Now()
		r.startedAt = now
		r.lastBeat.Store(now.UnixNano())
		if !r.state.CompareAndSwap(runQueued, runRunning) {
			w.slots.release()
			continue
		}
		// A revoke may have arrived while this waited for a slot: the
		// revoke cache is written before running tasks are scanned, so
		// either this check sees it or ApplyRevokes sees the task running.
		if e, ok := w.revokedEntry(r.d.Envelope.ID); ok {
			r.state.Store(runQueued)
			w.slots.release()
			w.settleRevoked(r, e)
			continue
		}
		w.running.Add(1)
		// The "started" event is sent here, not in the goroutine, so it
		// can never race the finisher's channel being closed.
		env := r.d.Envelope
		w.done <- finish{run: r, hasState: true, startedOnly: true, state: result.TaskState{
			ID: env.ID, Name: env.Name, Queue: env.Queue, State: result.Started,
			Attempt: env.Attempt, Worker: w.id, EnqueuedAt: env.CreatedAt, StartedAt: now, UpdatedAt: now,
		}}
		go w.execute(r)
	}
}

// settleLost drops a queued run whose lease was fenced: no state, and a
// hand-back, never an ack: when the lease was only unconfirmed (a broker
// that did not answer in time) the task is still the worker's to give
// back, and when another claim holds it the broker skips the hand-back.
func (w *Worker) settleLost(r *run) {
	if r.state.CompareAndSwap(runQueued, runSettled) {
		w.log.WithField(logging.FieldTask, r.d.Envelope.ID).Warn("lease lost before the task started; not running it here")
		w.done <- finish{run: r, action: broker.Requeue}
	}
}

func (w *Worker) handBack(r *run) {
	if r.state.CompareAndSwap(runQueued, runSettled) {
		w.done <- finish{run: r, action: broker.Requeue}
	}
}

// finish is one event for the finisher: a state to write and, unless
// startedOnly, a delivery to settle.
type finish struct {
	run         *run
	state       result.TaskState
	hasState    bool
	startedOnly bool
	action      broker.NackAction // 0 = ack
	retryEnv    broker.Envelope
	delay       time.Duration
	reason      string
	slotHeld    bool // the handler's slot is released after settling
}

func (w *Worker) execute(r *run) {
	defer w.running.Done()
	env := r.d.Envelope
	st := result.TaskState{
		ID: env.ID, Name: env.Name, Queue: env.Queue, State: result.Started,
		Attempt: env.Attempt, Worker: w.id, EnqueuedAt: env.CreatedAt, StartedAt: r.startedAt, UpdatedAt: r.startedAt,
	}
	if w.debug {
		w.log.WithFields(logrus.Fields{logging.FieldTask: env.ID, logging.FieldTaskName: env.Name, logging.FieldAttempt: env.Attempt}).Debug("task started")
	}
	f := w.runHandler(r, st)
	// The slot is released before the delivery is settled, so the next
	// task starts while the finisher batches this one's ack.
	w.doneMu.RLock()
	defer w.doneMu.RUnlock()
	if !w.doneClosed && r.state.CompareAndSwap(runRunning, runSettled) {
		w.slots.release()
		w.done <- f
		return
	}
	// Handed back by a hard shutdown already; the slot is released by the
	// finisher when it settles that hand-back.
}

// runHandler runs the handler and turns its outcome into a finish.
func (w *Worker) runHandler(r *run, st result.TaskState) finish {
	env := r.d.Envelope
	f := finish{run: r, hasState: true}
	h, ok := w.cfg.Handlers.Lookup(env.Name)
	if !ok {
		st.State = result.Failed
		st.Error = fmt.Sprintf("no handler registered for task %q on worker %s", env.Name, w.id)
		st.FinishedAt = w.cfg.Now()
		st.UpdatedAt = st.FinishedAt
		f.state = st
		f.action = broker.DeadLetter
		f.reason = st.Error
		w.counters.processed.Add(1)
		w.counters.failed.Add(1)
		w.log.WithFields(logrus.Fields{logging.FieldTask: env.ID, logging.FieldTaskName: env.Name}).Error(st.Error)
		return f
	}
	limit := h.Options.TimeLimit
	if env.TimeLimit > 0 {
		limit = env.TimeLimit
	}
	ctx := r.ctx
	if limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, limit, fmt.Errorf("time limit %s exceeded", limit))
		defer cancel()
	}
	var value any
	var err error
	if h.Options.Isolated {
		out := w.pool.run(ctx, r, limit)
		if out.value != nil {
			value = json.RawMessage(out.value)
		}
		err = out.err
		if p := math.Float64frombits(r.progress.Load()); p != 0 {
			st.Progress = p
		}
	} else {
		tc := &taskContext{ctx: ctx, run: r, w: w}
		value, err = safeCall(h.Run, tc, env.Args)
		if p, data := tc.lastProgress(); p != 0 || data != nil {
			st.Progress, st.ProgressData = p, data
		}
	}
	finished := w.cfg.Now()
	st.FinishedAt, st.UpdatedAt = finished, finished
	w.metrics.observe(env.Name, finished.Sub(r.startedAt))
	w.counters.processed.Add(1)
	// Built only when a line is written: the success path logs at debug.
	logf := func() logrus.FieldLogger {
		return w.log.WithFields(logrus.Fields{logging.FieldTask: env.ID, logging.FieldTaskName: env.Name, logging.FieldAttempt: env.Attempt})
	}

	if cause := context.Cause(r.ctx); cause != nil && r.ctx.Err() != nil {
		// Cancelled by the worker (shutdown) or a terminate revoke. A
		// handler that still succeeded keeps its result.
		if errors.Is(cause, ErrLeaseLost) && err != nil {
			// Fenced (lease.go): handed back in case the lease is still
			// ours after all (the broker skips it when another claim
			// holds it); no state is written, the next run's "started"
			// replaces this one.
			f.hasState = false
			f.action = broker.Requeue
			w.counters.processed.Add(-1)
			logf().WithError(err).Warn("task stopped: its lease was lost; it runs again on whichever worker claims it")
			return f
		}
		if errors.Is(cause, errShutdown) && err != nil {
			// No state is written: the task is queued again and the next
			// worker's "started" replaces this one.
			f.hasState = false
			f.action = broker.Requeue
			w.counters.processed.Add(-1)
			logf().Warn("task interrupted by shutdown; handed back without counting an attempt")
			return f
		}
		var re *revokedError
		if errors.As(cause, &re) && err != nil {
			st.State = result.Revoked
			st.Reason, st.RevokedBy = re.reason, re.by
			f.state = st
			w.counters.revoked.Add(1)
			logf().Info("task terminated by revoke")
			return f
		}
	}
	if err == nil {
		raw, merr := marshalResult(value)
		if merr == nil {
			st.State = result.Succeeded
			st.Result = raw
			f.state = st
			w.counters.succeeded.Add(1)
			if w.debug {
				logf().WithField(logging.FieldDuration, finished.Sub(r.startedAt).String()).Debug("task succeeded")
			}
			return f
		}
		err = merr
	}
	if errors.Is(err, context.DeadlineExceeded) || (ctx.Err() != nil && r.ctx.Err() == nil) {
		if c := context.Cause(ctx); c != nil && !errors.Is(err, c) {
			err = fmt.Errorf("%w: %v", c, err)
		}
	}
	st.Error = err.Error()
	maxRetries := h.Options.MaxRetries
	if env.MaxRetries >= 0 {
		maxRetries = env.MaxRetries
	}
	if e, revoked := w.revokedEntry(env.ID); revoked {
		st.State = result.Revoked
		st.Reason, st.RevokedBy = e.Reason, e.RequestedBy
		f.state = st
		w.counters.revoked.Add(1)
		logf().WithError(err).Info("task failed after it was revoked; not retried")
		return f
	}
	if env.Attempt < maxRetries && !errors.Is(err, ErrNoRetry) {
		delay := Backoff(env.Attempt, h.Options.RetryBackoff, h.Options.RetryBackoffMax)
		next := env
		next.Attempt++
		// This worker knows the name: an unknown-task TTL started by an
		// older worker no longer applies (unknown.go).
		next.Headers = withoutUnknownHeaders(env.Headers)
		st.State = result.Retried
		st.NextRetryAt = finished.Add(delay)
		f.state = st
		f.action = broker.Retry
		f.retryEnv = next
		f.delay = delay
		w.counters.retried.Add(1)
		logf().WithError(err).WithField(logging.FieldDelay, delay.String()).Warn("task failed; will retry")
		return f
	}
	st.State = result.Failed
	f.state = st
	f.action = broker.DeadLetter
	f.reason = st.Error
	w.counters.failed.Add(1)
	logf().WithError(err).Error("task failed")
	return f
}

// ErrNoRetry marks a handler error as permanent: the task fails at once,
// whatever its retry budget. Wrap it: fmt.Errorf("bad input: %w", worker.ErrNoRetry).
var ErrNoRetry = errors.New("permanent failure")

func safeCall(fn HandlerFunc, tc TaskContext, args json.RawMessage) (v any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("handler panicked: %v\n%s", p, debug.Stack())
		}
	}()
	return fn(tc, args)
}

func marshalResult(v any) (json.RawMessage, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		if len(x) == 0 {
			return nil, nil
		}
		if !json.Valid(x) {
			return nil, errors.New("handler returned a json.RawMessage that is not valid JSON")
		}
		return x, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("result is not JSON-marshalable: %w", err)
	}
	return b, nil
}

// Backoff returns the delay before retry number attempt+1: base*2^attempt
// capped at max, with "equal jitter" (half fixed, half random) so retries
// of a burst spread out.
func Backoff(attempt int, base, max time.Duration) time.Duration {
	if attempt > 30 {
		attempt = 30
	}
	d := base << uint(attempt)
	if d <= 0 || d > max {
		d = max
	}
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(half)+1))
}

// finisher gathers finish events and settles them in batches.
func (w *Worker) finisher() {
	batch := make([]finish, 0, w.cfg.MaxBatch)
	for f := range w.done {
		batch = append(batch[:0], f)
	gather:
		for len(batch) < 4*w.cfg.MaxBatch {
			select {
			case g, ok := <-w.done:
				if !ok {
					break gather
				}
				batch = append(batch, g)
			default:
				break gather
			}
		}
		w.flush(batch)
	}
}

// flush writes the batch's states (coalesced), then settles its
// deliveries, then frees their capacity. Errors are retried with backoff:
// a failure here must not lose a state or an ack. Only when the worker is
// hard-stopping does it give up (the leases then expire and the broker
// redelivers: at-least-once).
func (w *Worker) flush(batch []finish) {
	states := make([]result.TaskState, 0, len(batch))
	index := make(map[string]int, len(batch))
	var acks []broker.Delivery
	var nacks []broker.Nack
	var settled []finish
	for _, f := range batch {
		if f.hasState {
			if i, ok := index[f.state.ID]; ok {
				if result.Newer(f.state, states[i]) {
					states[i] = f.state
				}
			} else {
				index[f.state.ID] = len(states)
				states = append(states, f.state)
			}
		}
		if f.startedOnly {
			continue
		}
		settled = append(settled, f)
		switch f.action {
		case 0:
			acks = append(acks, f.run.d)
		default:
			nacks = append(nacks, broker.Nack{Delivery: f.run.d, Action: f.action, Envelope: f.retryEnv, Delay: f.delay, Reason: f.reason})
		}
	}
	if err := w.retrying("write task states", func(ctx context.Context) error {
		if len(states) == 0 {
			return nil
		}
		return w.cfg.Results.Set(ctx, states)
	}); err != nil {
		if w.currentMode() == Hard {
			// The states were not written (hard shutdown gave up): leave
			// the deliveries leased, so they are redelivered and run again
			// rather than acked with their outcome lost.
			acks, nacks = nil, nil
		} else {
			// The backend refuses this batch for good (a result it cannot
			// store, say): store what it takes, one by one, instead of
			// stalling every ack behind it.
			w.writeStatesOneByOne(states)
		}
	}
	_ = w.retrying("ack deliveries", func(ctx context.Context) error {
		if len(acks) == 0 {
			return nil
		}
		return w.cfg.Broker.Ack(ctx, acks)
	})
	_ = w.retrying("hand back deliveries", func(ctx context.Context) error {
		if len(nacks) == 0 {
			return nil
		}
		return w.cfg.Broker.Nack(ctx, nacks)
	})
	if len(settled) == 0 {
		return
	}
	w.mu.Lock()
	for _, f := range settled {
		delete(w.outstanding, f.run.d.Token)
		f.run.cancel(nil)
	}
	w.capCond.Broadcast()
	w.mu.Unlock()
	for _, f := range settled {
		if f.slotHeld {
			w.slots.release()
		}
	}
}

// retrying runs op until it succeeds, backing off between attempts. It
// gives up, returning the last error, after three failures during a hard
// shutdown, or after three failures that are not the backend being
// unavailable (an error that retrying will not clear).
func (w *Worker) retrying(what string, op func(context.Context) error) error {
	b := newBackoff(50*time.Millisecond, 5*time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := op(ctx)
		cancel()
		if err == nil {
			if b.failures > 0 {
				w.log.Infof("%s: succeeded after %d failed attempt(s)", what, b.failures)
			}
			return nil
		}
		if w.currentMode() == Hard && b.failures >= 3 {
			w.log.WithError(err).Errorf("%s: giving up during hard shutdown; leases will expire and the broker will redeliver", what)
			return err
		}
		if b.failures >= 3 && !errors.Is(err, stemerr.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
			w.log.WithError(err).Errorf("%s: the backend keeps refusing it; giving up on this batch", what)
			return err
		}
		d := b.next()
		w.log.WithError(err).WithField(logging.FieldDelay, d.String()).Warnf("%s failed; retrying", what)
		time.Sleep(d) // back-off in production code, not test synchronisation
	}
}

// writeStatesOneByOne writes states singly after a batch was refused for
// good. A state the backend still refuses is written again without its
// result and progress data, with an error saying why; if even that fails,
// it is logged and skipped (the delivery is still settled).
func (w *Worker) writeStatesOneByOne(states []result.TaskState) {
	for _, st := range states {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := w.cfg.Results.Set(ctx, []result.TaskState{st})
		if err != nil {
			bare := st
			bare.Result, bare.ProgressData = nil, nil
			bare.Error = strings.TrimPrefix(st.Error+"; ", "; ") + "result not stored: " + err.Error()
			if err2 := w.cfg.Results.Set(ctx, []result.TaskState{bare}); err2 != nil {
				w.log.WithError(err2).WithField(logging.FieldTask, st.ID).Error("could not record the task's state")
			} else {
				w.log.WithError(err).WithField(logging.FieldTask, st.ID).Warn("the result backend refused the task's result; recorded the state without it")
			}
		}
		cancel()
	}
}

// Info returns the worker's registry record.
func (w *Worker) Info() registry.WorkerInfo {
	held, limit := w.slots.stats()
	state := "running"
	if w.currentMode() != 0 {
		state = "draining"
	}
	return registry.WorkerInfo{
		ID: w.id, Node: w.cfg.Node, Host: w.cfg.Hostname, PID: os.Getpid(), Namespace: w.cfg.Namespace,
		Queues: w.cfg.Queues, Concurrency: limit, InFlight: held, StartedAt: w.startedAt,
		LastSeen: w.cfg.Now(), State: state, Version: w.cfg.Version,
	}
}

func (w *Worker) heartbeat(ctx context.Context) {
	if w.cfg.Registry == nil {
		return
	}
	t := time.NewTicker(w.cfg.Heartbeat)
	defer t.Stop()
	for {
		hctx, cancel := context.WithTimeout(ctx, w.cfg.Heartbeat)
		if err := w.cfg.Registry.Heartbeat(hctx, w.Info(), 3*w.cfg.Heartbeat); err != nil && ctx.Err() == nil {
			w.log.WithError(err).Warn("heartbeat failed")
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

type backoff struct {
	base, max time.Duration
	failures  int
}

func newBackoff(base, max time.Duration) *backoff { return &backoff{base: base, max: max} }

func (b *backoff) next() time.Duration {
	d := Backoff(b.failures, b.base, b.max)
	b.failures++
	return d
}

func (b *backoff) reset() { b.failures = 0 }

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Alive reports whether the worker's main loop is making progress: its
// central lock can be taken, and the fetcher is not stuck inside one claim
// for longer than ClaimWait plus 30 seconds (a claim that hangs past every
// timeout). A worker waiting for free slots is alive. It is what the
// systemd watchdog pings depend on.
func (w *Worker) Alive() error {
	locked := make(chan struct{})
	go func() {
		w.mu.Lock()
		n := len(w.outstanding) // taking the lock is the probe
		w.mu.Unlock()
		_ = n
		close(locked)
	}()
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-locked:
	case <-t.C:
		return errors.New("the worker's central lock is held for over 5s")
	}
	if since := w.claimSince.Load(); since != 0 {
		if d := time.Since(time.Unix(0, since)); d > w.cfg.ClaimWait+30*time.Second {
			return fmt.Errorf("a claim has been running for %s", d.Round(time.Second))
		}
	}
	return nil
}

// SetConcurrency changes how many handlers may run at once, at run time.
// Shrinking lets running tasks finish; it only holds back new starts.
func (w *Worker) SetConcurrency(n int) error {
	if n < 1 {
		return fmt.Errorf("concurrency %d must be at least 1", n)
	}
	w.slots.setLimit(n)
	w.mu.Lock()
	w.capCond.Broadcast()
	w.mu.Unlock()
	return nil
}
